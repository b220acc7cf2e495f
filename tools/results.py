#!/usr/bin/python3
"""results.py RUNS_DIR DOCS_DIR - the table and learning curves of docs/RESULTS.md.

Reads each run's metrics.jsonl (written by `distilld run`), weights file (for
the parameter count) and wall time, and writes the top of DOCS_DIR/RESULTS.md
(everything before its first "## " heading) and PNG plots in DOCS_DIR/results/;
the sections from that heading on are written by hand and kept as they are. The teacher's top-1 on augmented test images is
the one the function-matching run recorded (`teacher_aug_top1`).
"""
import glob
import json
import os
import platform
import struct
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RUNS = [("fmnist-teacher", "Teacher (supervised, 60k images)"),
        ("fmnist-fm-1k", "Student, function matching (1,020 images)"),
        ("fmnist-labels-1k", "Student, labels only (1,020 images)")]


def read_metrics(path):
    steps, evals = [], []
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            (steps if o["type"] == "step" else evals).append(o)
    return steps, evals


def param_count(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    total = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        size = 1
        for d in t["shape"]:
            size *= d
        total += size
    return total, header.get("__metadata__", {})


def wall_seconds(steps):
    """Training wall time: elapsed_seconds restarts when a run is resumed, so sum the segments."""
    total, prev = 0.0, 0.0
    for s in steps:
        if s["elapsed_seconds"] < prev:
            total += prev
        prev = s["elapsed_seconds"]
    return total + prev


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ema(values, alpha=0.02):
    out, m = [], None
    for v in values:
        m = v if m is None else (1 - alpha) * m + alpha * v
        out.append(m)
    return out


def main(runs_dir, docs_dir):
    os.makedirs(os.path.join(docs_dir, "results"), exist_ok=True)
    rows, data, missing = [], {}, []
    for name, label in RUNS:
        d = os.path.join(runs_dir, name)
        if not os.path.exists(os.path.join(d, "weights.safetensors")):  # not run to the end (yet)
            missing.append((name, label))
            continue
        steps, evals = read_metrics(os.path.join(d, "metrics.jsonl"))
        params, meta = param_count(os.path.join(d, "weights.safetensors"))
        # the spec the run resolved (threads included) is in its checkpoints
        ckpts = sorted(glob.glob(os.path.join(d, "checkpoint-*.safetensors")))
        spec = json.loads(param_count(ckpts[-1])[1].get("spec", "{}")) if ckpts else {}
        wall = wall_seconds(steps)
        last = evals[-1]
        data[name] = (label, steps, evals)
        rows.append({"label": label, "test": last["test_top1"], "agree": last.get("test_agreement"),
                     "params": params, "steps": steps[-1]["step"], "wall": wall,
                     "threads": spec.get("threads") or os.cpu_count(), "depth": meta.get("depth"),
                     "width": meta.get("base_width")})

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, (label, steps, evals) in data.items():
        ax[0].plot([s["step"] for s in steps], ema([s["loss"] for s in steps]), label=label)
        ax[1].plot([e["step"] for e in evals], [100 * e["test_top1"] for e in evals], marker="o", ms=3, label=label)
    ax[0].set_xlabel("step"), ax[0].set_ylabel("training loss (EMA)"), ax[0].set_yscale("log")
    ax[1].set_xlabel("step"), ax[1].set_ylabel("test top-1 (%)")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(docs_dir, "results", "curves.png"), dpi=110)

    def fmt_wall(s):
        return "%d min" % round(s / 60)

    lines = ["# Results: function matching on Fashion-MNIST", "",
             "The central claim of Beyer et al. (\"a good teacher is patient and consistent\") at small scale,",
             "put to the test: a student that sees only a fixed 1,020-image subset (102 per class, the size of",
             "Flowers102's training set) and matches a teacher's outputs on the same mixed-up, cropped images for",
             "a long schedule should end far above the same student trained on the labels of those images, and",
             "close to its teacher.", "",
             "| model | test top-1 (10k) | agreement with teacher | parameters | steps | wall time | threads |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| %s | %.2f %% | %s | %s | %d | %s | %s |" % (
            r["label"], 100 * r["test"], "—" if r["agree"] is None else "%.2f %%" % (100 * r["agree"]),
            "{:,}".format(r["params"]), r["steps"], fmt_wall(r["wall"]), r["threads"]))
    for name, label in missing:
        lines.append("| %s | not run to the end: `make results` resumes it | | | | | |" % label)
    # the claim, as numbers: the targets this reproduction set itself
    top = {name: 100 * evals[-1]["test_top1"] for name, (_, _, evals) in data.items()}
    lines += ["", "| check | target | measured | met |", "|---|---|---:|:-:|"]

    def check(what, target, value, ok):
        lines.append("| %s | %s | %s | %s |" % (what, target, value, "—" if ok is None else ("yes" if ok else "**no**")))

    t, fm, lab = (top.get(n) for n in ("fmnist-teacher", "fmnist-fm-1k", "fmnist-labels-1k"))
    check("teacher test top-1", ">= 91 %", "%.2f %%" % t if t else "—", None if t is None else t >= 91)
    check("function matching above labels", ">= 4 points", "%+.2f" % (fm - lab) if fm and lab else "—",
          None if not (fm and lab) else fm - lab >= 4)
    check("function matching below its teacher", "<= 2 points", "%.2f" % (t - fm) if t and fm else "—",
          None if not (t and fm) else t - fm <= 2)
    # measured by the distill job itself, once (docs/jobspec.md)
    aug = [e["teacher_aug_top1"] for e in data.get("fmnist-fm-1k", ("", [], []))[2] if "teacher_aug_top1" in e]
    if aug and t:
        lines += ["", "The teacher on the test images augmented as the students' training images are (inception",
                  "crop of 25–100 % of the area resized back to 28 px, flip; no mixup), as the function-matching",
                  "job measured it: **%.2f %%** top-1 (%.2f %% on the whole images). The students only ever learn"
                  % (100 * aug[0], t),
                  "from such images."]
    lines += ["", "![training loss and test accuracy](results/curves.png)", "",
              "Machine: %s, %d cores. Every number comes from `make results` (tools/results.sh) on the committed"
              % (cpu_model(), os.cpu_count()),
              "recipes in `recipes/`; the full 10,000-image test set; evaluation resize/crop as docs/jobspec.md.", ""]
    path = os.path.join(docs_dir, "RESULTS.md")
    kept = []
    if os.path.exists(path):
        old = open(path).read().split("\n")
        first = next((i for i, line in enumerate(old) if line.startswith("## ")), len(old))
        kept = old[first:]
    with open(path, "w") as f:
        f.write("\n".join(lines + kept))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
