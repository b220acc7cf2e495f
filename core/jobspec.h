/* jobspec.h - the job specification (v1): what to train, on what, how long.
 *
 * A spec is a JSON object; docs/jobspec.md documents every key. Parsing
 * refuses unknown keys, wrong types and nonsense (a warmup as long as the
 * whole schedule, ...) with a message naming the key. Defaults follow
 * big_vision's distillation configs. */
#ifndef DISTILLD_JOBSPEC_H
#define DISTILLD_JOBSPEC_H

#include <jansson.h>
#include <stdint.h>

#include "model.h"

#define SPEC_PATH_MAX 1024

enum { JOB_TRAIN = 0, JOB_DISTILL = 1 };
enum { CROP_INCEPTION = 0, CROP_RANDOM = 1, CROP_NONE = 2 };
enum { PRECISION_FLOAT32 = 0, PRECISION_BFLOAT16 = 1 };

typedef struct {
    char name[64];             /* built-in dataset ("fashion-mnist", "mnist"), or "" */
    char format[16];           /* "idx", "folder" (JPEGs, a sub-folder per class) or "flowers102", with path */
    char path[SPEC_PATH_MAX];  /* folder holding the files of `format` */
    int resize_small;          /* photos: short side of the decoded, cached images (images.h) */
    int val_size;              /* images held out of the training split for validation */
    int test_size;             /* evaluate on the first test_size test images; 0 = all */
    int subset_size;           /* 0 = the whole training split; else a class-balanced subset */
    uint64_t subset_seed;
} DatasetSpec;

typedef struct {
    int kind;                  /* JOB_TRAIN or JOB_DISTILL */
    DatasetSpec dataset;
    ModelConfig model;
    char teacher[SPEC_PATH_MAX]; /* teacher weights file (distill) */
    char teacher_job[64];        /* or a finished job's id (daemon only) */
    int teacher_precision;       /* PRECISION_*: the teacher's forward in float or bfloat16 (model_set_bf16) */
    int precision;               /* PRECISION_*: the trained model's convolutions (mixed precision, model_set_bf16) */
    int batch_size;
    long steps;                /* total optimizer steps (from steps or epochs) */
    double epochs;             /* as given, 0 if steps was given */
    float lr, weight_decay, clip_norm, temperature;
    long warmup_steps;
    int mixup, flip, crop;
    float crop_area_min, crop_area_max;
    int eval_resize, eval_crop;
    long eval_every, checkpoint_every;
    uint64_t seed;
    int threads;               /* BLAS threads; 0 = every core */
    /* filled from the training set size when the job starts */
    int have_epochs;
} JobSpec;

/* Parses and checks a spec; the dataset-dependent checks (subset larger than
 * the dataset, epochs -> steps, class counts) happen in jobspec_resolve. */
int jobspec_parse(const char *json_text, JobSpec *spec, char *err);
int jobspec_parse_json(json_t *root, JobSpec *spec, char *err);

/* Parses a "model" object into c (keys of DESIGN.md section 3). */
int jobspec_parse_model(json_t *obj, ModelConfig *c, char *err);

/* Once the training set size is known: epochs -> steps, default warmup,
 * and the checks that need it. */
int jobspec_resolve(JobSpec *spec, int train_size, int dataset_classes, int image_channels, int image_size,
                    char *err);

/* The spec as canonical JSON (malloc'd): what a checkpoint records, and what
 * the daemon shows. Parsing it gives the same spec back. */
char *jobspec_to_json(const JobSpec *spec);

#endif
