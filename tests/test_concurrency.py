#!/usr/bin/python3
"""test_concurrency.py - two workers run two jobs to completion while 80
concurrent readers from one address poll the API, each request on a new
connection (as a reverse proxy or a busy script makes them); every read
succeeds, both jobs succeed, and each job's metrics hold every step exactly once.

Run from the repository root: /usr/bin/python3 tests/test_concurrency.py [BUILD_DIR]
"""
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

from daemon import Daemon

BUILD = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BUILD", "build")
READERS = 80
passed = failed = 0


def check(name, cond, why=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok   " + name, flush=True)
    else:
        failed += 1
        print("FAIL %s: %s" % (name, why), flush=True)


def spec(seed):
    return {"kind": "train", "dataset": {"name": "fashion-mnist", "subset_size": 256, "test_size": 100},
            "model": {"depth": [1], "base_width": 8, "gn_groups": 4, "stem": "small"},
            "batch_size": 32, "steps": 150, "warmup_steps": 10, "eval_every": 75, "checkpoint_every": 50,
            "crop": "none", "mixup": False, "seed": seed}


def main():
    tmp = tempfile.mkdtemp(prefix="distilld-concurrency-")
    daemon = Daemon(BUILD, os.path.join(tmp, "var"), "--workers", "2", "--threads", "1")
    try:
        daemon.start()
        base, token = daemon.url + "/api/v1", daemon.token

        def call(method, path, body=None):
            req = urllib.request.Request(base + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
            req.add_header("Authorization", "Bearer " + token)
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())

        ids = [call("POST", "/jobs", spec(s))["id"] for s in (1, 2)]
        stop = threading.Event()
        errors, reads = [], [0]
        lock = threading.Lock()

        def reader(i):
            paths = ["/jobs", "/jobs/" + ids[i % 2], "/jobs/%s/metrics?limit=100" % ids[i % 2], "/health"]
            k = 0
            while not stop.is_set():
                try:
                    call("GET", paths[k % len(paths)])
                    with lock:
                        reads[0] += 1
                except Exception as e:  # noqa: BLE001 - every failure counts
                    with lock:
                        errors.append(repr(e))
                k += 1

        readers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
        for t in readers:
            t.start()
        both_running = False
        deadline = time.time() + 600
        try:
            while time.time() < deadline:
                states = [call("GET", "/jobs/" + j)["state"] for j in ids]
                both_running = both_running or states == ["running", "running"]
                if all(s in ("succeeded", "failed", "canceled") for s in states):
                    break
                time.sleep(0.2)
        finally:  # the readers stop even when a poll above raises
            stop.set()
            for t in readers:
                t.join(60)
        check("the two workers ran both jobs at once", both_running)
        check("both jobs succeeded", states == ["succeeded", "succeeded"], states)
        check("%d concurrent readers: every read answered (%d reads)" % (READERS, reads[0]), not errors and reads[0] > 100,
              "%d errors, first: %s" % (len(errors), errors[:1]))
        for j in ids:
            pts, after = [], -1
            while True:
                page = call("GET", "/jobs/%s/metrics?names=loss&after_step=%d&limit=1000" % (j, after))
                pts += page["points"]
                if page.get("next_after_step") is None:
                    break
                after = page["next_after_step"]
            steps = [p["step"] for p in pts]
            check("job %s: loss for steps 1..150 once each" % j, steps == list(range(1, 151)), len(steps))
    finally:
        if daemon.proc:
            daemon.kill()
        if failed or sys.exc_info()[0]:
            print("daemon log, last 40 lines:\n  " + "\n  ".join(daemon.lines[-40:]), flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
