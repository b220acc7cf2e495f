/* jobspec.c - parse and check job specs. See jobspec.h and docs/jobspec.md.
 *
 * Each JSON object is walked key by key: a key that is not in the object's
 * table is refused, so a typo never silently falls back to a default. */
#include "jobspec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "images.h"
#include "util.h"

/* ---- typed getters: each names the key on failure ---- */

static int get_int(json_t *v, const char *key, long lo, long hi, long *out, char *err) {
    if (!json_is_integer(v)) return set_error(err, "%s: must be an integer", key);
    long x = (long)json_integer_value(v);
    if (x < lo || x > hi) return set_error(err, "%s: must be between %ld and %ld, got %ld", key, lo, hi, x);
    *out = x;
    return 0;
}

static int get_number(json_t *v, const char *key, double lo, double hi, double *out, char *err) {
    if (!json_is_number(v)) return set_error(err, "%s: must be a number", key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) return set_error(err, "%s: must be between %g and %g, got %g", key, lo, hi, x);
    *out = x;
    return 0;
}

static int get_bool(json_t *v, const char *key, int *out, char *err) {
    if (!json_is_boolean(v)) return set_error(err, "%s: must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

static int get_string(json_t *v, const char *key, char *out, size_t size, char *err) {
    if (!json_is_string(v)) return set_error(err, "%s: must be a string", key);
    if (json_string_length(v) >= size) return set_error(err, "%s: longer than %zu characters", key, size - 1);
    if (strlen(json_string_value(v)) != json_string_length(v)) return set_error(err, "%s: contains a NUL byte", key);
    snprintf(out, size, "%s", json_string_value(v));
    return 0;
}

/* A string that must be one of names[0..count-1]; *out = its index. */
static int get_choice(json_t *v, const char *key, const char *const *names, int count, int *out, char *err) {
    char value[32];
    if (get_string(v, key, value, sizeof value, err)) return -1;
    for (int i = 0; i < count; i++)
        if (strcmp(value, names[i]) == 0) {
            *out = i;
            return 0;
        }
    char list[160] = "";
    for (int i = 0; i < count; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s\"%s\"", i == 0 ? "" : i == count - 1 ? " or " : ", ", names[i]);
    }
    return set_error(err, "%s: must be %s, got \"%s\"", key, list, value);
}

/* "float32" or "bfloat16", indexed by PRECISION_*; bfloat16 only where this build runs it fast */
static int get_precision(json_t *v, const char *key, int *out, char *err) {
    static const char *const precisions[] = {"float32", "bfloat16"};
    if (get_choice(v, key, precisions, 2, out, err)) return -1;
    if (*out == PRECISION_BFLOAT16 && !bf16_fast())
        return set_error(err, "%s: \"bfloat16\" needs a CPU with AVX512-BF16 and a build of distilld for it (make "
                              "ARCH=native on such a CPU); this build has none", key);
    return 0;
}

/* ---- model ---- */

int jobspec_parse_model(json_t *obj, ModelConfig *c, char *err) {
    if (!json_is_object(obj)) return set_error(err, "model: must be an object");
    const char *key;
    json_t *v;
    long x = 0;
    json_object_foreach(obj, key, v) {
        char name[96];
        snprintf(name, sizeof name, "model.%s", key);
        if (strcmp(key, "depth") == 0) {
            if (!json_is_array(v) || json_array_size(v) < 1 || json_array_size(v) > MODEL_MAX_STAGES)
                return set_error(err, "model.depth: must be a list of 1 to %d integers", MODEL_MAX_STAGES);
            c->num_stages = (int)json_array_size(v);
            for (int s = 0; s < c->num_stages; s++) {
                char item[32];
                snprintf(item, sizeof item, "model.depth[%d]", s);
                if (get_int(json_array_get(v, s), item, 1, 99, &x, err)) return -1;
                c->depth[s] = (int)x;
            }
        } else if (strcmp(key, "stem") == 0) { /* indexed by STEM_* */
            static const char *const stems[] = {"bit", "small"};
            if (get_choice(v, name, stems, 2, &c->stem, err)) return -1;
        } else if (strcmp(key, "block") == 0) { /* indexed by BLOCK_* */
            static const char *const blocks[] = {"bottleneck", "basic"};
            if (get_choice(v, name, blocks, 2, &c->block, err)) return -1;
        } else {
            static const struct { const char *key; size_t offset; long lo, hi; } ints[] = {
                {"base_width", offsetof(ModelConfig, base_width), 1, 4096},
                {"width", offsetof(ModelConfig, width), 1, 64},
                {"gn_groups", offsetof(ModelConfig, gn_groups), 1, 4096},
                {"in_channels", offsetof(ModelConfig, in_channels), 1, MODEL_MAX_CHANNELS},
                {"num_classes", offsetof(ModelConfig, num_classes), 2, 100000},
                {"image_size", offsetof(ModelConfig, image_size), 1, 4096},
            };
            size_t i;
            for (i = 0; i < sizeof ints / sizeof ints[0]; i++)
                if (strcmp(key, ints[i].key) == 0) break;
            if (i == sizeof ints / sizeof ints[0])
                return set_error(err, "model.%s: unknown key (known: depth, base_width, width, gn_groups, stem, "
                                      "block, in_channels, num_classes, image_size)", key);
            if (get_int(v, name, ints[i].lo, ints[i].hi, &x, err)) return -1;
            *(int *)((char *)c + ints[i].offset) = (int)x;
        }
    }
    return 0;
}

/* ---- dataset ---- */

static int parse_dataset(json_t *obj, DatasetSpec *d, char *err) {
    if (json_is_string(obj)) return get_string(obj, "dataset", d->name, sizeof d->name, err);
    if (!json_is_object(obj)) return set_error(err, "dataset: must be a built-in name or an object");
    const char *key;
    json_t *v;
    long x = 0;
    json_object_foreach(obj, key, v) {
        if (strcmp(key, "name") == 0) {
            if (get_string(v, "dataset.name", d->name, sizeof d->name, err)) return -1;
        } else if (strcmp(key, "format") == 0) {
            if (get_string(v, "dataset.format", d->format, sizeof d->format, err)) return -1;
        } else if (strcmp(key, "path") == 0) {
            if (get_string(v, "dataset.path", d->path, sizeof d->path, err)) return -1;
        } else if (strcmp(key, "val_size") == 0) {
            if (get_int(v, "dataset.val_size", 0, 10000000, &x, err)) return -1;
            d->val_size = (int)x;
        } else if (strcmp(key, "test_size") == 0) {
            if (get_int(v, "dataset.test_size", 1, 100000000, &x, err)) return -1;
            d->test_size = (int)x;
        } else if (strcmp(key, "subset_size") == 0) {
            if (get_int(v, "dataset.subset_size", 1, 100000000, &x, err)) return -1;
            d->subset_size = (int)x;
        } else if (strcmp(key, "subset_seed") == 0) {
            if (get_int(v, "dataset.subset_seed", 0, 0x7fffffffL, &x, err)) return -1;
            d->subset_seed = (uint64_t)x;
        } else if (strcmp(key, "resize_small") == 0) {
            if (get_int(v, "dataset.resize_small", 8, 4096, &x, err)) return -1;
            d->resize_small = (int)x;
        } else {
            return set_error(err, "dataset.%s: unknown key (known: name, format, path, val_size, test_size, "
                                  "subset_size, subset_seed, resize_small)", key);
        }
    }
    if (d->name[0] && (d->format[0] || d->path[0]))
        return set_error(err, "dataset: give either a built-in \"name\" or a \"format\" and \"path\", not both");
    if (!d->name[0] && !d->path[0]) return set_error(err, "dataset: needs a built-in \"name\" or a \"path\"");
    if (d->path[0] && !d->format[0]) snprintf(d->format, sizeof d->format, "idx");
    if (d->format[0] && strcmp(d->format, "idx") && strcmp(d->format, "folder") && strcmp(d->format, "flowers102"))
        return set_error(err, "dataset.format: \"%s\" is not supported (supported: idx, folder, flowers102)",
                         d->format);
    int photos = !strcmp(d->format, "folder") || !strcmp(d->format, "flowers102");
    if (d->resize_small && !photos)
        return set_error(err, "dataset.resize_small: only for photo formats (folder, flowers102)");
    if (photos && !d->resize_small) d->resize_small = IMAGES_DEFAULT_RESIZE;
    return 0;
}

/* ---- the whole spec ---- */

static void spec_defaults(JobSpec *s) {
    memset(s, 0, sizeof *s);
    s->kind = JOB_TRAIN;
    snprintf(s->dataset.name, sizeof s->dataset.name, "fashion-mnist");
    /* a small ResNetV2 for 28-px images; in/out sizes come from the dataset */
    model_config_defaults(&s->model);
    s->model.num_stages = 3;
    s->model.depth[0] = 1, s->model.depth[1] = 1, s->model.depth[2] = 1;
    s->model.base_width = 16;
    s->model.gn_groups = 8;
    s->model.stem = STEM_SMALL;
    s->model.in_channels = s->model.num_classes = s->model.image_size = 0;
    s->batch_size = 128;
    s->lr = 1e-3f;           /* big_vision flowers "medium" */
    s->weight_decay = 1e-4f;
    s->clip_norm = 1.0f;
    s->temperature = 1.0f;
    s->warmup_steps = -1;    /* 5 % of the schedule */
    s->mixup = 1;
    s->flip = 1;
    s->crop = CROP_INCEPTION;
    s->crop_area_min = 0.05f, s->crop_area_max = 1.0f;
    s->threads = 0;
}

int jobspec_parse_json(json_t *root, JobSpec *s, char *err) {
    spec_defaults(s);
    if (!json_is_object(root)) return set_error(err, "spec: must be a JSON object");
    int have_steps = 0, have_epochs = 0, have_kind = 0;
    const char *key;
    json_t *v;
    long x = 0;
    double d = 0.0;
    json_object_foreach(root, key, v) {
        int rc = 0;
        if (strcmp(key, "kind") == 0) { /* indexed by JOB_* */
            static const char *const kinds[] = {"train", "distill"};
            rc = get_choice(v, key, kinds, 2, &s->kind, err);
            have_kind = 1;
        } else if (strcmp(key, "dataset") == 0) {
            memset(&s->dataset, 0, sizeof s->dataset);
            rc = parse_dataset(v, &s->dataset, err);
        } else if (strcmp(key, "model") == 0) {
            rc = jobspec_parse_model(v, &s->model, err);
        } else if (strcmp(key, "teacher") == 0) {
            if (json_is_object(v)) {
                const char *k2;
                json_t *v2;
                json_object_foreach(v, k2, v2) {
                    if (strcmp(k2, "weights") == 0)
                        rc = get_string(v2, "teacher.weights", s->teacher, sizeof s->teacher, err);
                    else if (strcmp(k2, "job") == 0)
                        rc = get_string(v2, "teacher.job", s->teacher_job, sizeof s->teacher_job, err);
                    else
                        rc = set_error(err, "teacher.%s: unknown key (known: weights, job)", k2);
                    if (rc) break;
                }
            } else {
                rc = get_string(v, "teacher", s->teacher, sizeof s->teacher, err);
            }
        } else if (strcmp(key, "teacher_precision") == 0) {
            rc = get_precision(v, key, &s->teacher_precision, err);
        } else if (strcmp(key, "precision") == 0) {
            rc = get_precision(v, key, &s->precision, err);
        } else if (strcmp(key, "batch_size") == 0) {
            rc = get_int(v, key, 1, 65536, &x, err);
            s->batch_size = (int)x;
        } else if (strcmp(key, "steps") == 0) {
            rc = get_int(v, key, 1, 1000000000L, &s->steps, err);
            have_steps = 1;
        } else if (strcmp(key, "epochs") == 0) {
            rc = get_number(v, key, 1e-6, 1e9, &s->epochs, err);
            if (!rc) { /* keep 9 significant digits: what jobspec_to_json writes back */
                char text[32];
                snprintf(text, sizeof text, "%.9g", s->epochs);
                s->epochs = strtod(text, NULL);
            }
            have_epochs = 1;
        } else if (strcmp(key, "lr") == 0) {
            rc = get_number(v, key, 0.0, 100.0, &d, err);
            s->lr = (float)d;
        } else if (strcmp(key, "weight_decay") == 0) {
            rc = get_number(v, key, 0.0, 10.0, &d, err);
            s->weight_decay = (float)d;
        } else if (strcmp(key, "clip_norm") == 0) {
            rc = get_number(v, key, 0.0, 1e9, &d, err);
            s->clip_norm = (float)d;
        } else if (strcmp(key, "temperature") == 0) {
            rc = json_is_number(v) && json_number_value(v) <= 0
                     ? set_error(err, "temperature: must be > 0, got %g", json_number_value(v))
                     : get_number(v, key, 1e-6, 1e6, &d, err);
            s->temperature = (float)d;
        } else if (strcmp(key, "warmup_steps") == 0) {
            rc = get_int(v, key, 0, 1000000000L, &s->warmup_steps, err);
        } else if (strcmp(key, "mixup") == 0) {
            rc = get_bool(v, key, &s->mixup, err);
        } else if (strcmp(key, "flip") == 0) {
            rc = get_bool(v, key, &s->flip, err);
        } else if (strcmp(key, "crop") == 0) { /* indexed by CROP_* */
            static const char *const crops[] = {"inception", "random", "none"};
            rc = get_choice(v, key, crops, 3, &s->crop, err);
        } else if (strcmp(key, "crop_area") == 0) {
            double lo = 0, hi = 0;
            if (!json_is_array(v) || json_array_size(v) != 2)
                rc = set_error(err, "crop_area: must be a list [min, max] of area fractions");
            if (!rc) rc = get_number(json_array_get(v, 0), "crop_area[0]", 1e-4, 1.0, &lo, err);
            if (!rc) rc = get_number(json_array_get(v, 1), "crop_area[1]", 1e-4, 1.0, &hi, err);
            if (!rc && lo > hi) rc = set_error(err, "crop_area: min %g is larger than max %g", lo, hi);
            s->crop_area_min = (float)lo, s->crop_area_max = (float)hi;
        } else if (strcmp(key, "eval_resize") == 0) {
            rc = get_int(v, key, 1, 4096, &x, err);
            s->eval_resize = (int)x;
        } else if (strcmp(key, "eval_crop") == 0) {
            rc = get_int(v, key, 1, 4096, &x, err);
            s->eval_crop = (int)x;
        } else if (strcmp(key, "eval_every") == 0) {
            rc = get_int(v, key, 0, 1000000000L, &s->eval_every, err);
        } else if (strcmp(key, "checkpoint_every") == 0) {
            rc = get_int(v, key, 0, 1000000000L, &s->checkpoint_every, err);
        } else if (strcmp(key, "seed") == 0) {
            rc = get_int(v, key, 0, 0x7fffffffL, &x, err);
            s->seed = (uint64_t)x;
        } else if (strcmp(key, "threads") == 0) {
            rc = get_int(v, key, 0, 256, &x, err);
            s->threads = (int)x;
        } else {
            rc = set_error(err, "%s: unknown key (known: kind, dataset, model, teacher, teacher_precision, "
                                "precision, batch_size, steps, epochs, lr, weight_decay, clip_norm, warmup_steps, "
                                "temperature, mixup, flip, crop, crop_area, eval_resize, eval_crop, eval_every, "
                                "checkpoint_every, seed, threads)", key);
        }
        if (rc) return -1;
    }
    if (!have_kind) return set_error(err, "kind: missing (\"train\" or \"distill\")");
    if (s->teacher[0] && s->teacher_job[0])
        return set_error(err, "teacher: give either \"weights\" or \"job\", not both");
    if (have_steps && have_epochs) return set_error(err, "steps and epochs: give one, not both");
    if (!have_steps && !have_epochs) return set_error(err, "steps: missing (give \"steps\" or \"epochs\")");
    s->have_epochs = have_epochs;
    if (s->kind == JOB_DISTILL && !s->teacher[0] && !s->teacher_job[0])
        return set_error(err, "teacher: a distill job needs a teacher (a weights file, or a finished job's id)");
    if (s->kind == JOB_TRAIN && (s->teacher[0] || s->teacher_job[0]))
        return set_error(err, "teacher: only a distill job takes a teacher");
    if (s->kind == JOB_TRAIN && s->teacher_precision != PRECISION_FLOAT32)
        return set_error(err, "teacher_precision: only a distill job has a teacher");
    if (have_steps && s->warmup_steps >= s->steps)
        return set_error(err, "warmup_steps: %ld is not shorter than the whole schedule (%ld steps)", s->warmup_steps,
                         s->steps);
    return 0;
}

int jobspec_parse(const char *json_text, JobSpec *spec, char *err) {
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return set_error(err, "spec is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    int rc = jobspec_parse_json(root, spec, err);
    json_decref(root);
    return rc;
}

int jobspec_resolve(JobSpec *s, int train_size, int dataset_classes, int image_channels, int image_size, char *err) {
    ModelConfig *m = &s->model;
    if (!m->in_channels) m->in_channels = image_channels;
    if (!m->num_classes) m->num_classes = dataset_classes;
    if (!m->image_size) m->image_size = image_size;
    if (m->in_channels != image_channels)
        return set_error(err, "model.in_channels: %d, but the dataset's images have %d channel%s", m->in_channels,
                         image_channels, image_channels == 1 ? "" : "s");
    if (m->num_classes != dataset_classes)
        return set_error(err, "model.num_classes: %d, but the dataset has %d classes", m->num_classes, dataset_classes);
    if (model_config_validate(m, err)) return -1;
    if (!s->eval_crop) s->eval_crop = m->image_size;
    if (!s->eval_resize && s->dataset.resize_small) s->eval_resize = s->dataset.resize_small; /* photos: 160 -> 128 */
    if (!s->eval_resize) s->eval_resize = s->eval_crop == image_size ? image_size : s->eval_crop * 8 / 7;
    if (s->eval_crop != m->image_size)
        return set_error(err, "eval_crop: %d, but the model takes %d-px images", s->eval_crop, m->image_size);
    if (s->eval_resize < s->eval_crop)
        return set_error(err, "eval_resize: %d is smaller than eval_crop %d", s->eval_resize, s->eval_crop);
    if (s->dataset.subset_size > train_size)
        return set_error(err, "dataset.subset_size: %d is larger than the %d training images", s->dataset.subset_size,
                         train_size);
    int used = s->dataset.subset_size ? s->dataset.subset_size : train_size;
    if (s->have_epochs) {
        double steps = ceil(s->epochs * used / s->batch_size);
        if (steps < 1 || steps > 1e9) return set_error(err, "epochs: %g epochs of %d images is %g steps", s->epochs, used, steps);
        s->steps = (long)steps;
    }
    if (s->warmup_steps < 0) s->warmup_steps = s->steps / 20;
    if (s->warmup_steps >= s->steps)
        return set_error(err, "warmup_steps: %ld is not shorter than the whole schedule (%ld steps)", s->warmup_steps,
                         s->steps);
    if (s->eval_every == 0) s->eval_every = s->steps;
    if (s->checkpoint_every == 0) s->checkpoint_every = s->steps < 1000 ? s->steps : 1000;
    return 0;
}

/* The shortest decimal that reads back as f, as a double: 1e-3f is written
 * "0.001", not "0.00100000005", by any JSON printer. */
static double clean(float f) {
    char text[32];
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, (double)f);
        if ((float)strtod(text, NULL) == f) break;
    }
    return strtod(text, NULL);
}

char *jobspec_to_json(const JobSpec *s) {
    json_t *o = json_object();
    json_object_set_new(o, "kind", json_string(s->kind == JOB_DISTILL ? "distill" : "train"));
    json_t *d = json_object();
    if (s->dataset.name[0]) json_object_set_new(d, "name", json_string(s->dataset.name));
    if (s->dataset.format[0]) json_object_set_new(d, "format", json_string(s->dataset.format));
    if (s->dataset.path[0]) json_object_set_new(d, "path", json_string(s->dataset.path));
    json_object_set_new(d, "val_size", json_integer(s->dataset.val_size));
    if (s->dataset.test_size) json_object_set_new(d, "test_size", json_integer(s->dataset.test_size));
    if (s->dataset.resize_small) json_object_set_new(d, "resize_small", json_integer(s->dataset.resize_small));
    if (s->dataset.subset_size) {
        json_object_set_new(d, "subset_size", json_integer(s->dataset.subset_size));
        json_object_set_new(d, "subset_seed", json_integer((json_int_t)s->dataset.subset_seed));
    }
    json_object_set_new(o, "dataset", d);
    json_t *m = json_object(), *depth = json_array();
    for (int i = 0; i < s->model.num_stages; i++) json_array_append_new(depth, json_integer(s->model.depth[i]));
    json_object_set_new(m, "depth", depth);
    json_object_set_new(m, "base_width", json_integer(s->model.base_width));
    json_object_set_new(m, "width", json_integer(s->model.width));
    json_object_set_new(m, "gn_groups", json_integer(s->model.gn_groups));
    json_object_set_new(m, "stem", json_string(s->model.stem == STEM_BIT ? "bit" : "small"));
    if (s->model.block == BLOCK_BASIC) json_object_set_new(m, "block", json_string("basic")); /* else BiT's */
    if (s->model.in_channels) json_object_set_new(m, "in_channels", json_integer(s->model.in_channels));
    if (s->model.num_classes) json_object_set_new(m, "num_classes", json_integer(s->model.num_classes));
    if (s->model.image_size) json_object_set_new(m, "image_size", json_integer(s->model.image_size));
    json_object_set_new(o, "model", m);
    if (s->teacher[0]) json_object_set_new(o, "teacher", json_string(s->teacher));
    if (s->teacher_job[0]) json_object_set_new(o, "teacher", json_pack("{s:s}", "job", s->teacher_job));
    if (s->teacher_precision == PRECISION_BFLOAT16)
        json_object_set_new(o, "teacher_precision", json_string("bfloat16"));
    if (s->precision == PRECISION_BFLOAT16) json_object_set_new(o, "precision", json_string("bfloat16"));
    json_object_set_new(o, "batch_size", json_integer(s->batch_size));
    if (s->have_epochs && !s->steps) json_object_set_new(o, "epochs", json_real(s->epochs));
    else json_object_set_new(o, "steps", json_integer(s->steps));
    json_object_set_new(o, "lr", json_real(clean(s->lr)));
    json_object_set_new(o, "weight_decay", json_real(clean(s->weight_decay)));
    json_object_set_new(o, "clip_norm", json_real(clean(s->clip_norm)));
    if (s->warmup_steps >= 0) json_object_set_new(o, "warmup_steps", json_integer(s->warmup_steps));
    json_object_set_new(o, "temperature", json_real(clean(s->temperature)));
    json_object_set_new(o, "mixup", json_boolean(s->mixup));
    json_object_set_new(o, "flip", json_boolean(s->flip));
    static const char *crops[] = {"inception", "random", "none"};
    json_object_set_new(o, "crop", json_string(crops[s->crop]));
    json_object_set_new(o, "crop_area", json_pack("[f,f]", clean(s->crop_area_min), clean(s->crop_area_max)));
    if (s->eval_resize) json_object_set_new(o, "eval_resize", json_integer(s->eval_resize));
    if (s->eval_crop) json_object_set_new(o, "eval_crop", json_integer(s->eval_crop));
    if (s->eval_every) json_object_set_new(o, "eval_every", json_integer(s->eval_every));
    if (s->checkpoint_every) json_object_set_new(o, "checkpoint_every", json_integer(s->checkpoint_every));
    json_object_set_new(o, "seed", json_integer((json_int_t)s->seed));
    json_object_set_new(o, "threads", json_integer(s->threads));
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
}
