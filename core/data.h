/* data.h - the data side of a job: load the dataset a spec names, split off
 * validation images, pick the class-balanced training subset, and build the
 * batches of every step.
 *
 * Batch order and augmentation of step k are a pure function of (seed, k):
 * the training stream is an endless sequence of epochs, each a permutation
 * drawn from (seed, epoch); image j of step k draws its crop and flip from
 * (seed, k, j) and the step's mixup coefficient from (seed, k). Nothing
 * depends on earlier steps, which is what makes resume exact. */
#ifndef DISTILLD_DATA_H
#define DISTILLD_DATA_H

#include <stdint.h>

#include "formats.h"
#include "jobspec.h"

enum { SPLIT_VAL = 0, SPLIT_TEST = 1 };

typedef struct {
    Dataset train, test;
    Dataset val;          /* the source's own validation split (n = 0: none) */
    int32_t *train_index; /* images of `train` the job trains on */
    int train_count;
    int32_t *val_index;   /* images of `val`, or else of `train` held out, for validation */
    int val_count;
    int test_count;       /* the first test_count images of `test` are evaluated */
    /* memo of the current epoch's permutation */
    int32_t *perm;
    long perm_epoch;
} JobData;

/* Loads the spec's dataset and makes the splits (spec->dataset). Photo
 * datasets are decoded once into cache_dir (images.h; NULL: no cache). */
int data_open(const DatasetSpec *spec, const char *cache_dir, JobData *d, char *err);
void data_close(JobData *d);

/* Floats of scratch the batch functions below need: a share for each of the
 * calling thread's OpenMP threads, which make the batch's images in parallel. */
size_t data_scratch_size(const JobData *d, const JobSpec *spec);

/* The training batch of `step`: images (B, C, S, S) normalized and augmented
 * (crop, flip, mixup), targets (B, K) (one-hot labels, mixed by mixup) and the
 * original labels (B). */
void data_train_batch(JobData *d, const JobSpec *spec, long step, float *images, float *targets, int32_t *labels,
                      float *scratch);

/* Evaluation images [start, start+count) of a split, resized and centrally
 * cropped, normalized. Returns how many were written. */
int data_eval_batch(const JobData *d, const JobSpec *spec, int split, int start, int count, float *images,
                    int32_t *labels, float *scratch);
/* The same images augmented as training images are (crop and flip, no mixup),
 * image i's draws a function of (seed, split, i): what a teacher sees when the
 * student trains, on images neither trained on. */
int data_augmented_eval_batch(const JobData *d, const JobSpec *spec, int split, int start, int count, float *images,
                              int32_t *labels, float *scratch);
int data_split_size(const JobData *d, int split);

#endif
