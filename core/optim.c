/* optim.c - global-norm clipping, Adam with decoupled weight decay, and the
 * warmup + cosine schedule. See optim.h for the exact update. */
#include "optim.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

float schedule_multiplier(long step, long warmup_steps, long total_steps) {
    if (step < warmup_steps) return (float)step / (float)warmup_steps;
    if (total_steps <= warmup_steps) return 0.0f;
    double progress = (double)(step - warmup_steps) / (double)(total_steps - warmup_steps);
    if (progress > 1.0) progress = 1.0;
    return (float)(0.5 * (1.0 + cos(M_PI * progress)));
}

/* The squares summed in blocks of NORM_BLOCK floats, the threads taking
 * blocks, and the blocks' sums added in order: the same sum on any number
 * of threads (and, without memory for the blocks' sums, on one). */
#define NORM_BLOCK 4096

static double block_squares(const Model *m, size_t b) {
    const size_t hi = (b + 1) * NORM_BLOCK < m->num_floats ? (b + 1) * NORM_BLOCK : m->num_floats;
    double s = 0.0;
    for (size_t i = b * NORM_BLOCK; i < hi; i++) s += (double)m->grads[i] * m->grads[i];
    return s;
}

float grad_global_norm(const Model *m) {
    const size_t blocks = (m->num_floats + NORM_BLOCK - 1) / NORM_BLOCK;
    double *part = malloc(blocks * sizeof(double)), sum = 0.0;
    if (part) {
#pragma omp parallel for schedule(static)
        for (size_t b = 0; b < blocks; b++) part[b] = block_squares(m, b);
    }
    for (size_t b = 0; b < blocks; b++) sum += part ? part[b] : block_squares(m, b);
    free(part);
    return (float)sqrt(sum);
}

float optimizer_step(Model *m, const OptimConfig *o, long step) {
    if (m->inference) {
        fprintf(stderr, "distilld: optimizer_step on a model built for inference\n");
        abort();
    }
    float norm = grad_global_norm(m);
    float clip = (o->clip_norm > 0.0f && norm > o->clip_norm) ? o->clip_norm / norm : 1.0f;
    const float sched = schedule_multiplier(step, o->warmup_steps, o->total_steps);
    const float bias1 = 1.0f - powf(ADAM_BETA1, (float)(step + 1));
    const float bias2 = 1.0f - powf(ADAM_BETA2, (float)(step + 1));
    /* element by element: each thread takes a range of the flat parameters */
#pragma omp parallel
    {
        const int threads = omp_get_num_threads(), t = omp_get_thread_num();
        const size_t lo = m->num_floats * t / threads, hi = m->num_floats * (t + 1) / threads;
        for (int i = 0; i < m->num_params; i++) {
            const ParamInfo *p = &m->params[i];
            const size_t from = p->offset > lo ? p->offset : lo, to = p->offset + p->size < hi ? p->offset + p->size : hi;
            const float wd = p->kind == PARAM_KERNEL ? o->weight_decay : 0.0f;
            float *w = m->weights, *g = m->grads, *mom = m->adam_m, *vel = m->adam_v;
            for (size_t k = from; k < to; k++) {
                float gk = g[k] * clip;
                g[k] = gk;
                mom[k] = ADAM_BETA1 * mom[k] + (1.0f - ADAM_BETA1) * gk;
                vel[k] = ADAM_BETA2 * vel[k] + (1.0f - ADAM_BETA2) * gk * gk;
                float update = (mom[k] / bias1) / (sqrtf(vel[k] / bias2) + ADAM_EPS);
                w[k] -= sched * (o->lr * update + wd * w[k]);
            }
        }
    }
    m->w_hat_valid = 0;
    return norm;
}
