/* model_check.c - writes what tests/torch_check.py compares against PyTorch.
 *
 *   model_check OUTDIR CONFIG_JSON
 *
 * Builds the model of CONFIG_JSON (model keys plus batch, lr, weight_decay,
 * clip_norm, warmup_steps, total_steps, opt_steps, seed), randomises every
 * parameter (the head too, so every gradient is non-zero), and writes:
 * config.json, weights.safetensors, x.npy, labels.npy, logits.npy, loss.npy,
 * grads.safetensors, and after.safetensors (the weights after opt_steps
 * optimizer steps on the same batch). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "jobspec.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "util.h"

static int die(const char *what, const char *err) {
    fprintf(stderr, "model_check: %s: %s\n", what, err);
    return 1;
}

static double get_num(json_t *cfg, const char *key, double fallback) {
    json_t *v = json_object_get(cfg, key);
    return json_is_number(v) ? json_number_value(v) : fallback;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: model_check OUTDIR CONFIG_JSON\n");
        return 2;
    }
    const char *dir = argv[1];
    char err[ERR_LEN], path[4096];
    json_error_t jerr;
    json_t *cfg = json_loads(argv[2], 0, &jerr);
    if (!cfg) return die("config", jerr.text);

    /* the model keys go through the job-spec parser; the rest are the check's own */
    json_t *model_keys = json_object();
    const char *names[] = {"depth", "base_width", "width", "gn_groups", "stem", "block", "in_channels", "num_classes", "image_size"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (json_object_get(cfg, names[i])) json_object_set(model_keys, names[i], json_object_get(cfg, names[i]));
    ModelConfig mc;
    model_config_defaults(&mc);
    if (jobspec_parse_model(model_keys, &mc, err) != 0) return die("config", err);
    json_decref(model_keys);
    const int batch = (int)get_num(cfg, "batch", 4), opt_steps = (int)get_num(cfg, "opt_steps", 5);
    OptimConfig opt = {.lr = (float)get_num(cfg, "lr", 0.01), .weight_decay = (float)get_num(cfg, "weight_decay", 1e-3),
                       .clip_norm = (float)get_num(cfg, "clip_norm", 1.0),
                       .warmup_steps = (long)get_num(cfg, "warmup_steps", 2),
                       .total_steps = (long)get_num(cfg, "total_steps", 10)};
    uint64_t seed = (uint64_t)get_num(cfg, "seed", 1);

    Model *m;
    if (model_create(&m, &mc, batch, err) != 0) return die("model", err);
    Rng rng = rng_derive(seed, 77, 0);
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        float *w = m->weights + p->offset;
        for (size_t k = 0; k < p->size; k++) {
            double z = rng_normal(&rng);
            w[k] = p->kind == PARAM_GAMMA ? (float)(1.0 + 0.2 * z)
                 : p->kind == PARAM_KERNEL ? (float)(z * (p->offset == m->head_kernel ? 0.3 : 1.0))
                 : (float)(0.2 * z);
        }
    }
    const int k = mc.num_classes;
    const size_t image_floats = (size_t)mc.in_channels * mc.image_size * mc.image_size;
    float *x = xcalloc(batch * image_floats, sizeof(float));
    int32_t *labels = xcalloc(batch, sizeof(int32_t));
    float *targets = xcalloc((size_t)batch * k, sizeof(float));
    for (size_t i = 0; i < batch * image_floats; i++) x[i] = (float)rng_normal(&rng);
    for (int b = 0; b < batch; b++) {
        labels[b] = (int32_t)rng_below(&rng, (uint32_t)k);
        targets[(size_t)b * k + labels[b]] = 1.0f;
    }
    float *probs = xcalloc((size_t)batch * k, sizeof(float)), *dlogits = xcalloc((size_t)batch * k, sizeof(float));

    snprintf(path, sizeof path, "%s/config.json", dir);
    if (json_dump_file(cfg, path, JSON_INDENT(1)) != 0) return die(path, "cannot write");
    snprintf(path, sizeof path, "%s/weights.safetensors", dir);
    if (model_save(m, path, err)) return die("save", err);
    int64_t xshape[4] = {batch, mc.in_channels, mc.image_size, mc.image_size}, lshape[1] = {batch};
    snprintf(path, sizeof path, "%s/x.npy", dir);
    if (npy_write_f32(path, x, 4, xshape, err)) return die("x", err);
    snprintf(path, sizeof path, "%s/labels.npy", dir);
    if (npy_write_i32(path, labels, 1, lshape, err)) return die("labels", err);

    for (int step = 0; step <= opt_steps; step++) {
        const float *logits = model_forward(m, x, batch);
        float loss = cross_entropy_forward(probs, logits, targets, batch, k);
        if (step == 0) {
            int64_t yshape[2] = {batch, k}, one[1] = {1};
            snprintf(path, sizeof path, "%s/logits.npy", dir);
            if (npy_write_f32(path, logits, 2, yshape, err)) return die("logits", err);
            snprintf(path, sizeof path, "%s/loss.npy", dir);
            if (npy_write_f32(path, &loss, 1, one, err)) return die("loss", err);
        }
        if (step == opt_steps) break;
        memset(dlogits, 0, sizeof(float) * batch * k);
        cross_entropy_backward(dlogits, probs, targets, batch, k);
        model_zero_grad(m);
        model_backward(m, dlogits, batch);
        if (step == 0) {
            snprintf(path, sizeof path, "%s/grads.safetensors", dir);
            if (model_save_block(m, m->grads, path, err)) return die("grads", err);
        }
        optimizer_step(m, &opt, step);
    }
    snprintf(path, sizeof path, "%s/after.safetensors", dir);
    if (model_save(m, path, err)) return die("after", err);
    model_free(m);
    free(x);
    free(labels);
    free(targets);
    free(probs);
    free(dlogits);
    json_decref(cfg);
    return 0;
}
