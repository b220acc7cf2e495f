#!/usr/bin/python3
"""test_crash.py - distilld loses nothing when it is killed.

A small job is submitted to a real daemon; the daemon is killed with SIGKILL
at several points (mid-step, right after a checkpoint, while idle) and
restarted each time. The kill points are read from the job's recorded step, which the
daemon stores at least every 64 steps (256 metric points) and at every checkpoint, so each
window below spans more than one store whatever the machine's speed. The job must end `succeeded`, every (metric, step) must
appear exactly once, and its final weights must be bit-for-bit those of the
same spec run uninterrupted with `distilld run --threads 1` (the daemon's
thread count). A SIGTERM must checkpoint the running job, put it back in the
queue and exit 0, whichever of its threads takes the signal. A daemon restarted
with another --threads resumes a job it left queued.

Run from the repository root: /usr/bin/python3 tests/test_crash.py [BUILD_DIR]
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from daemon import Daemon, HangError

BUILD = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BUILD", "build")
DISTILLD = os.path.join(BUILD, "distilld")
SPEC = {
    "kind": "train",
    "dataset": {"name": "fashion-mnist", "subset_size": 256, "test_size": 100},
    "model": {"depth": [1], "base_width": 8, "gn_groups": 4, "stem": "small"},
    "batch_size": 32, "steps": 400, "warmup_steps": 20, "lr": 0.003,
    "eval_every": 200, "checkpoint_every": 100, "crop": "inception", "mixup": True, "seed": 5,
}
passed = failed = 0


def check(name, cond, why=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok   " + name, flush=True)
    else:
        failed += 1
        print("FAIL %s: %s" % (name, why), flush=True)


def call(d, method, path, body=None):
    """The parsed JSON (else the bytes) of a request to daemon `d`, with its token; HTTPError on an error status."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(d.url + "/api/v1" + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + d.token)
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
        return json.loads(raw) if raw and r.headers.get("Content-Type", "").startswith("application/json") else raw


def wait_for(pred, timeout=300, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return None


def main():
    tmp = tempfile.mkdtemp(prefix="distilld-crash-")
    d = None
    try:
        # the reference: the same spec, uninterrupted, in the foreground
        spec_path = os.path.join(tmp, "spec.json")
        json.dump(SPEC, open(spec_path, "w"))
        ref_dir = os.path.join(tmp, "reference")
        subprocess.run([DISTILLD, "run", spec_path, "--run-dir", ref_dir, "--threads", "1"], check=True,
                       stdout=subprocess.DEVNULL)
        reference = open(os.path.join(ref_dir, "weights.safetensors"), "rb").read()

        d = Daemon(BUILD, os.path.join(tmp, "var"), "--workers", "1", "--threads", "1")
        d.start()
        job = call(d, "POST", "/jobs", SPEC)
        jid = job["id"]
        get = lambda: call(d, "GET", "/jobs/" + jid)

        def while_running(cond):
            """The job once it is running and cond(job) holds; None as soon as it has ended."""
            def probe():
                j = get()
                if j["state"] in ("succeeded", "failed", "canceled"):
                    return {"ended": j}
                return j if j["state"] == "running" and cond(j) else None
            j = wait_for(probe)
            return None if j is None or "ended" in j else j

        # 1. mid-step: while the job is between its checkpoints at 100 and 200
        check("job reached steps 110..199 while running", while_running(lambda j: 110 <= j["step"] < 200), get())
        d.kill()
        d.start()
        check("kill -9 mid-step: job re-queued or running again after restart",
              get()["state"] in ("queued", "running"), get()["state"])

        # 2. right after a checkpoint is recorded (the next one's write may have begun)
        check("checkpoint 200 recorded while running",
              while_running(lambda j: 200 <= (j["checkpoint_step"] or 0) < 300), get())
        d.kill()
        d.start()

        # 3. SIGTERM while running, at least 10 steps past a checkpoint: checkpoint, back to the queue, exit 0
        check("job 10..99 steps past a checkpoint after 200 while running",
              while_running(lambda j: 210 <= j["step"] < 400 and j["step"] % 100 >= 10), get())
        code = d.kill(signal.SIGTERM)
        check("SIGTERM exits 0", code == 0, "exit code %s" % code)
        d.start()

        done = wait_for(lambda: get()["state"] in ("succeeded", "failed"), timeout=600, every=0.2)
        check("job ends succeeded after the kills", done and get()["state"] == "succeeded", get())

        # 4. while idle
        d.kill()
        d.start()
        check("idle kill: job still succeeded", get()["state"] == "succeeded", get()["state"])

        points, after = [], -1
        while True:
            page = call(d, "GET", "/jobs/%s/metrics?after_step=%d&limit=1000" % (jid, after))
            points += page["points"]
            if page.get("next_after_step") is None:
                break
            after = page["next_after_step"]
        seen = {}
        for p in points:
            seen[(p["name"], p["step"])] = seen.get((p["name"], p["step"]), 0) + 1
        dupes = [k for k, n in seen.items() if n > 1]
        loss_steps = sorted(s for (n, s) in seen if n == "loss")
        check("every metric step stored exactly once", not dupes, dupes[:5])
        check("loss recorded for steps 1..400 with no gap", loss_steps == list(range(1, 401)),
              "got %d steps" % len(loss_steps))
        weights = call(d, "GET", "/jobs/%s/weights" % jid)
        check("final weights bit-for-bit equal to an uninterrupted run", weights == reference,
              "%d vs %d bytes" % (len(weights), len(reference)))

        # 5. restarted with another thread count: the job resumes from its checkpoint, and its log
        # says its weights are no longer bit for bit an uninterrupted run's
        second = call(d, "POST", "/jobs", dict(SPEC, seed=6))["id"]
        get2 = lambda: call(d, "GET", "/jobs/" + second)
        check("second job checkpointed while running",
              wait_for(lambda: (get2()["checkpoint_step"] or 0) >= 100 and get2()["state"] == "running"), get2())
        code = d.kill(signal.SIGTERM)
        d = Daemon(BUILD, d.data_dir, "--workers", "1", "--threads", "2")
        d.start()
        done = wait_for(lambda: get2()["state"] in ("succeeded", "failed"), timeout=600, every=0.2)
        log = call(d, "GET", "/jobs/%s/events?after_step=1000000" % second).decode()
        check("restarted on 2 threads: the job resumes and succeeds, saying so in its log",
              code == 0 and done and get2()["state"] == "succeeded" and "1 thread(s), this one runs on 2" in log,
              "%s; log: %s" % (get2(), log[-600:]))
        d.kill()

        # 6. the kernel hands a signal sent to the process to any thread that does not block it:
        # whichever thread takes SIGTERM, the daemon stops and exits 0
        d = Daemon(BUILD, d.data_dir, "--workers", "1", "--threads", "1")
        threads = len(d.start().threads())
        d.kill()
        for i in range(threads):
            d.start()
            tids = d.threads()
            tid = tids[min(i, len(tids) - 1)]
            try:
                code = d.kill(signal.SIGTERM, timeout=30, thread=tid)
            except HangError as e:
                code = str(e)
            check("SIGTERM taken by thread %d of %d: exits 0" % (i + 1, threads), code == 0, code)
    finally:
        if d:
            d.stop()  # a check that raised must not leave the daemon running on a deleted data dir
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
