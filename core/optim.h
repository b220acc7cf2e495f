/* optim.h - the optimizer and learning-rate schedule of the recipe:
 * clip the global gradient norm -> Adam -> x lr -> + weight_decay x w (kernels
 * only) -> x schedule(step). The schedule is linear warmup then cosine to zero,
 * a pure function of the step. */
#ifndef DISTILLD_OPTIM_H
#define DISTILLD_OPTIM_H

#include "model.h"

#define ADAM_BETA1 0.9f
#define ADAM_BETA2 0.999f
#define ADAM_EPS 1e-8f

typedef struct {
    float lr, weight_decay, clip_norm; /* clip_norm <= 0 disables clipping */
    long warmup_steps, total_steps;
} OptimConfig;

/* Multiplier in [0, 1] of the learning rate at 0-based `step`:
 * step/warmup during warmup, then 0.5*(1+cos(pi*progress)). */
float schedule_multiplier(long step, long warmup_steps, long total_steps);

/* L2 norm of the whole gradient block. */
float grad_global_norm(const Model *m);

/* One update of m->weights from m->grads at 0-based `step`; clips m->grads in
 * place. Returns the gradient norm before clipping. */
float optimizer_step(Model *m, const OptimConfig *o, long step);

#endif
