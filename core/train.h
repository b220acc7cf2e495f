/* train.h - the training loop: supervised (`train`) or function-matching
 * distillation (`distill`), the same under `distilld run`, the daemon and the
 * tests. Everything a caller sees goes through TrainCallbacks. */
#ifndef DISTILLD_TRAIN_H
#define DISTILLD_TRAIN_H

#include "jobspec.h"

typedef struct {
    long step, total_steps;      /* step just finished (1-based count of updates) */
    float loss, lr, grad_norm;   /* loss: cross-entropy (train) or T^2 KL (distill) */
    float images_per_second;     /* over the last steps */
    double elapsed_seconds, eta_seconds;
} StepMetrics;

typedef struct {
    long step;
    int has_val, has_teacher;
    float val_top1, test_top1;             /* student */
    float teacher_val_top1, teacher_test_top1; /* distill only; computed once */
    float teacher_aug_top1;                /* distill only, once: on the test images augmented as
                                              training images (data_augmented_eval_batch) */
    float test_agreement;                  /* student vs teacher top-1 agreement on test */
    float val_distill_loss;                /* T^2 KL on validation images */
} EvalMetrics;

typedef struct {
    void *ctx;
    void (*on_log)(void *ctx, const char *message);
    void (*on_step)(void *ctx, const StepMetrics *m);
    void (*on_eval)(void *ctx, const EvalMetrics *m);
    void (*on_checkpoint)(void *ctx, long step, const char *path);
    /* polled after every step; non-zero stops the run after a checkpoint */
    int (*should_stop)(void *ctx);
} TrainCallbacks;

typedef struct {
    long steps_done;
    float final_test_top1;
    char weights_path[SPEC_PATH_MAX + 64];
} TrainResult;

enum { TRAIN_DONE = 0, TRAIN_STOPPED = 1 };

/* Runs the job in run_dir (created if missing): checkpoints go to
 * run_dir/checkpoint-<step>.safetensors (written atomically; the previous one
 * of this run is removed once on_checkpoint has returned, so a caller that
 * records checkpoints elsewhere always finds the one it recorded), the final
 * weights to run_dir/weights.safetensors. resume_from (may be NULL) is a
 * checkpoint to continue from; it must have been written for the same spec.
 * cache_dir (may be NULL) keeps decoded photo datasets (images.h).
 * Returns TRAIN_DONE, TRAIN_STOPPED (should_stop asked; checkpoint written),
 * or -1. */
int train_run(const JobSpec *spec, const char *run_dir, const char *cache_dir, const char *resume_from,
              const TrainCallbacks *cb,
              TrainResult *result, char *err);

/* The newest run_dir/checkpoint-<step>.safetensors; -1 if there is none. */
int train_latest_checkpoint(const char *run_dir, char *path, size_t size);

/* Sets the threads compute runs on (`requested`, or every core when 0) for
 * the calling thread: OpenMP threads over the batch, one-thread GEMMs.
 * Returns the number. */
int train_threads(int requested);

#endif
