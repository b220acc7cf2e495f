/* worker.h - the threads that run jobs. Each worker claims the oldest queued
 * job, runs core's training loop on it in the job's run directory
 * (data_dir/runs/<id>), and turns the loop's callbacks into database rows:
 * metrics and "metric"/"eval"/"log" events in batches, checkpoints recorded
 * after the metrics before them are stored, progress, and the final state. A
 * "pause" or "cancel" request reaches the job within one step. */
#ifndef DISTILLD_WORKER_H
#define DISTILLD_WORKER_H

#include "db.h"

typedef struct Workers Workers;

typedef struct {
    Db *db;
    const char *data_dir;
    int count;           /* worker threads */
    int threads_per_job; /* compute threads of each */
} WorkerConfig;

int workers_start(Workers **out, const WorkerConfig *cfg, char *err);
/* Running jobs checkpoint and go back to the queue; then the threads exit. */
void workers_stop(Workers *w);

#endif
