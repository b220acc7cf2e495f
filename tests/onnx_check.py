#!/usr/bin/python3
"""onnx_check.py - checks `distilld export` files with onnx and OpenCV, and the HTTP export.

Usage:  /usr/bin/python3 tests/onnx_check.py BUILD CASEDIR [CASEDIR...]

Each CASEDIR holds what tests/test_onnx.sh made: config.json and weights.safetensors (from
model_check: random kernels, GroupNorm gamma/beta and head) and model.onnx (`distilld export`).
Per case ("ok   NAME" / "FAIL NAME: ..." lines):
  checker     onnx.checker.check_model with full shape inference (Debian's onnx 1.12)
  interface   ir_version 8, opset <= 17, "images" float [batch, C, S, S] with a symbolic batch,
              "logits" [batch, K]; the bit stem's max-pool is fed by an explicit zero Pad
  nontrivial  the reference logits are far from zero and differ between images
  opencv      cv2.dnn on random images (a batch of 5, then 1) against `distilld predict`:
              max |difference| / max |logit| <= 1e-4, measured value printed
Then, against a daemon on an ephemeral port with the first case's weights as a finished job's:
  GET /api/v1/jobs/{id}/weights?format=onnx gives the exported bytes, format=safetensors and no
  format the weights file, an unknown format 400 in the error shape, an unknown job 404.
Ends with "N passed, N failed"; exits 1 if any check failed.
"""

import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import onnx
import onnx.numpy_helper

from daemon import Daemon, StartError

RELATIVE_TOLERANCE = 1e-4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, problem, note=""):
        """problem: None (passed) or what went wrong."""
        if problem is None:
            self.passed += 1
            print("ok   %s%s" % (name, "  (" + note + ")" if note else ""), flush=True)
        else:
            self.failed += 1
            print("FAIL %s: %s" % (name, problem), flush=True)


def dims_of(value):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


def interface_problem(model, cfg):
    if model.ir_version != 8:
        return "ir_version %d, expected 8" % model.ir_version
    opsets = {o.domain: o.version for o in model.opset_import}
    if set(opsets) != {""} or opsets[""] > 17:
        return "opset_import %r: want the default domain at version <= 17" % opsets
    graph = model.graph
    c, s, k = cfg["in_channels"], cfg["image_size"], cfg["num_classes"]
    if [i.name for i in graph.input] != ["images"] or [o.name for o in graph.output] != ["logits"]:
        return "inputs %r, outputs %r" % ([i.name for i in graph.input], [o.name for o in graph.output])
    if graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return "images are not float32"
    if dims_of(graph.input[0]) != ["batch", c, s, s] or dims_of(graph.output[0]) != ["batch", k]:
        return "shapes %r -> %r" % (dims_of(graph.input[0]), dims_of(graph.output[0]))
    ops = [n.op_type for n in graph.node]
    if "GroupNormalization" in ops:
        return "uses GroupNormalization, which onnx 1.12 and OpenCV 4.6 do not have"
    # GroupNorm's epsilon is too small against these activations' variance to show in the logits
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type != "InstanceNormalization":
            continue
        eps = [a.f for a in n.attribute if a.name == "epsilon"]
        scale, bias = inits.get(n.input[1]), inits.get(n.input[2])
        if eps != [np.float32(1e-5)] or scale is None or bias is None or np.any(scale != 1) or np.any(bias != 0):
            return "%s: epsilon %r, scale %r, bias %r; want 1e-5, ones, zeros" % (n.name, eps, scale, bias)
    if cfg["stem"] == "bit":
        pools = [n for n in graph.node if n.op_type == "MaxPool"]
        pads = {n.output[0]: n for n in graph.node if n.op_type == "Pad"}
        if len(pools) != 1 or pools[0].input[0] not in pads:
            return "the stem's MaxPool is not fed by a Pad node"
        pad = pads[pools[0].input[0]]
        value = inits.get(pad.input[2]) if len(pad.input) > 2 else np.zeros(())
        mode = [a.s for a in pad.attribute if a.name == "mode"]
        if value is None or float(value) != 0.0 or mode not in ([], [b"constant"]):
            return "the stem's Pad is not a zero constant pad"
        if any(a.name == "pads" and any(a.ints) for a in pools[0].attribute):
            return "the stem's MaxPool pads itself (with -inf)"
    elif "MaxPool" in ops:
        return "a small stem has no max-pool"
    return None


def relative_error(got, want):
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def check_case(res, build, case_dir):
    name = os.path.basename(case_dir.rstrip("/"))
    with open(os.path.join(case_dir, "config.json")) as f:
        cfg = json.load(f)
    onnx_path = os.path.join(case_dir, "model.onnx")
    weights = os.path.join(case_dir, "weights.safetensors")
    print("== %s: stem %s, depth %s, %dx%dx%d -> %d" % (name, cfg["stem"], cfg["depth"], cfg["in_channels"],
                                                       cfg["image_size"], cfg["image_size"], cfg["num_classes"]),
          flush=True)
    try:
        model = onnx.load(onnx_path)
        onnx.checker.check_model(model, full_check=True)
        problem = None
    except Exception as e:  # the checker's own message
        model, problem = None, "%s: %s" % (type(e).__name__, e)
    res.check(name + ":checker", problem)
    if model is None:
        return
    res.check(name + ":interface", interface_problem(model, cfg))

    rng = np.random.default_rng(20240 + cfg["image_size"])
    x = rng.normal(0.0, 1.0, (5, cfg["in_channels"], cfg["image_size"], cfg["image_size"])).astype(np.float32)
    x_path, y_path = os.path.join(case_dir, "random.npy"), os.path.join(case_dir, "random_logits.npy")
    np.save(x_path, x)
    run = subprocess.run([os.path.join(build, "distilld"), "predict", "--weights", weights, "--input", x_path,
                          "--output", y_path, "--threads", "1"], capture_output=True, text=True)
    if run.returncode != 0:
        res.check(name + ":predict", "distilld predict exited %d: %s" % (run.returncode, run.stderr.strip()))
        return
    want = np.load(y_path).astype(np.float64)
    scale = np.abs(want).max()
    spread = want.std(axis=0).max()
    res.check(name + ":nontrivial",
              None if scale > 0.1 and spread > 1e-3 * scale else "logits max %.3g, spread over images %.3g" % (scale, spread),
              "max |logit| %.3g, spread over images %.3g" % (scale, spread))

    try:
        net = cv2.dnn.readNetFromONNX(onnx_path)
        net.setInput(x)
        got = net.forward()
        net.setInput(x[:1])
        got_one = net.forward()
    except cv2.error as e:
        res.check(name + ":opencv", "cv2.dnn: %s" % str(e).strip().splitlines()[-1])
        return
    if got.shape != want.shape or got_one.shape != (1, want.shape[1]):
        res.check(name + ":opencv", "shapes %r and %r, expected %r" % (got.shape, got_one.shape, want.shape))
        return
    err, err_one = relative_error(got, want), relative_error(got_one, want[:1])
    worst = max(err, err_one)
    res.check(name + ":opencv", None if worst <= RELATIVE_TOLERANCE else "relative error %.3g" % worst,
              "max relative error %.2e on a batch of 5, %.2e on a batch of 1" % (err, err_one))


# ---- HTTP ----

def get(daemon, path):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def check_http(res, build, case_dir):
    print("== http: GET /api/v1/jobs/{id}/weights?format=...", flush=True)
    data_dir = tempfile.mkdtemp(prefix="onnx-http-")
    daemon = Daemon(build, data_dir, "--workers", "1", "--threads", "1")
    try:
        try:
            daemon.start()
        except StartError as e:
            res.check("http:daemon", str(e))
            return
        # A finished job without training one (the endpoint needs a job row and its weights file):
        # the row goes straight into the daemon's database, which allows a second writer (WAL).
        job = "j00000000000000e1"
        now = time.time()
        with sqlite3.connect(os.path.join(data_dir, "distilld.db"), timeout=30) as db:
            db.execute("INSERT INTO jobs (id, seq, kind, state, spec, step, total_steps, created_at, updated_at) "
                       "VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), 'train', 'succeeded', '{}', 1, 1, "
                       "?, ?)", (job, now, now))
        os.makedirs(os.path.join(data_dir, "runs", job))
        weights = os.path.join(case_dir, "weights.safetensors")
        shutil.copyfile(weights, os.path.join(data_dir, "runs", job, "weights.safetensors"))
        with open(os.path.join(case_dir, "model.onnx"), "rb") as f:
            exported = f.read()
        with open(weights, "rb") as f:
            weights_bytes = f.read()
        base = "/api/v1/jobs/%s/weights" % job

        status, resp, body = get(daemon, base + "?format=onnx")
        disposition = resp.getheader("Content-Disposition", "")
        problem = None
        if status != 200:
            problem = "status %d: %r" % (status, body[:300])
        elif resp.getheader("Content-Type") != "application/octet-stream":
            problem = "Content-Type %r" % resp.getheader("Content-Type")
        elif 'filename="%s.onnx"' % job not in disposition:
            problem = "Content-Disposition %r" % disposition
        elif body != exported:
            problem = "%d bytes, not the %d bytes `distilld export` wrote" % (len(body), len(exported))
        res.check("http:onnx", problem, "%d bytes, the same as `distilld export`" % len(body))

        for query in ("?format=safetensors", ""):
            status, resp, body = get(daemon, base + query)
            disposition = resp.getheader("Content-Disposition", "")
            ok = status == 200 and body == weights_bytes and 'filename="%s.safetensors"' % job in disposition
            res.check("http:safetensors" + (query or " (no format)"),
                      None if ok else "status %d, %d bytes, Content-Disposition %r" % (status, len(body), disposition))

        status, resp, body = get(daemon, base + "?format=tflite")
        try:
            error = json.loads(body)["error"]
            shaped = set(error) == {"code", "message"} and error["code"] == "bad_request"
            names = "format" in error["message"] and "tflite" in error["message"]
        except (ValueError, KeyError, TypeError):
            error, shaped, names = body[:200], False, False
        res.check("http:unknown format is 400",
                  None if status == 400 and shaped and names else "status %d, body %r" % (status, error),
                  error["message"] if shaped else "")

        status, _, body = get(daemon, "/api/v1/jobs/j00000000000000e2/weights?format=onnx")
        res.check("http:unknown job is 404", None if status == 404 else "status %d: %r" % (status, body[:200]))
    finally:
        daemon.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    # what a sanitized build (make SANITIZER=...) reports at exit
    reports = [line for line in daemon.lines if "Sanitizer" in line or "runtime error" in line]
    res.check("http:daemon exit", None if daemon.proc.returncode == 0 and not reports else
              "exit status %s: %s" % (daemon.proc.returncode, "\n".join(reports[:5])))


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cv2.setNumThreads(1)  # a test, not a benchmark: one core
    build = sys.argv[1] if os.path.isabs(sys.argv[1]) else os.path.join(ROOT, sys.argv[1])
    res = Results()
    for case_dir in sys.argv[2:]:
        check_case(res, build, case_dir)
    check_http(res, build, sys.argv[2])
    print("%d passed, %d failed" % (res.passed, res.failed))
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
