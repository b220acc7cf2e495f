#!/usr/bin/python3
"""test_cli.py - the `distill` command line client against a real daemon.

Starts `distilld serve` on an ephemeral port with a fresh data directory and
runs BUILD/distill with subprocess: every sub-command (submit and --wait, ls
with its filters and paging past the API's 500-job pages, show, watch live and
of finished jobs, cancel, pause, resume, metrics as a table, CSV and JSON,
pull, health), --json output, where the token comes from, a watch that lives
through a daemon restart (resumed with Last-Event-ID, nothing seen twice), and
the error paths: daemon down, wrong or missing token, unknown job, conflict,
bad spec, usage mistakes (exit 2), and the exit codes of watch (0 succeeded,
4 canceled, 5 paused).

Prints "ok   name" or "FAIL name: why" per case and "N passed, N failed";
exits 1 on any failure. Standard library only. Usage: test_cli.py [BUILD_DIR].
"""
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from daemon import Daemon, StartError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BUILD", "build"))
DAEMON = os.path.join(BUILD, "distilld")
CLI = os.path.join(BUILD, "distill")
MISSING_JOB = "j0123456789abcdef"

TINY = {"kind": "train", "dataset": {"name": "fashion-mnist", "subset_size": 200, "test_size": 200},
        "model": {"depth": [1], "base_width": 8, "gn_groups": 4, "stem": "small"}, "batch_size": 16, "steps": 20,
        "warmup_steps": 2, "eval_every": 10, "checkpoint_every": 10, "crop": "none", "mixup": False}


def spec(**changes):
    s = json.loads(json.dumps(TINY))
    s.update(changes)
    return s


LONG = spec(steps=1000000)  # holds the single worker until paused or canceled


class Failure(Exception):
    pass


def check(condition, why):
    if not condition:
        raise Failure(why)


# ---- the daemon ----

D = None


def api(method, path, body=None):
    """(status, parsed JSON or bytes) of a request to the daemon, with the token."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(D.url + "/api/v1" + path, data=data, method=method,
                                 headers={"Authorization": "Bearer " + D.token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status, kind = resp.read(), resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, kind = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else raw


def job(job_id):
    status, data = api("GET", "/jobs/" + job_id)
    check(status == 200, "GET job %s: %d %r" % (job_id, status, data))
    return data


def wait_state(job_id, states, seconds=60):
    deadline = time.time() + seconds
    while True:
        j = job(job_id)
        if j["state"] in states:
            return j
        check(time.time() < deadline, "job %s still %s after %d s (wanted %s)" % (job_id, j["state"], seconds, states))
        time.sleep(0.05)


# ---- running the client ----

def cli_env(extra=None):
    env = dict(os.environ)
    for key in ("DISTILL_TOKEN", "DISTILL_URL", "DISTILL_DATA_DIR"):
        env.pop(key, None)
    env["DISTILL_URL"] = D.url
    env["DISTILL_DATA_DIR"] = D.data_dir
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli(*args, env=None, cwd=None, stdin="", timeout=60):
    return subprocess.run([CLI] + list(args), capture_output=True, text=True, timeout=timeout, env=cli_env(env),
                          cwd=cwd, input=stdin)


def expect(p, code, out=None, err=None):
    """Exit status `code` (or any non-zero for "nonzero"); stdout/stderr contain the given texts."""
    shown = "distill %s: exit %d\n  stdout: %s\n  stderr: %s" % (" ".join(p.args[1:]), p.returncode, p.stdout[-600:],
                                                                p.stderr[-600:])
    if code == "nonzero":
        check(p.returncode not in (0, None) and p.returncode < 128, "expected an error exit; " + shown)
    else:
        check(p.returncode == code, "expected exit %d; %s" % (code, shown))
    for text in [out] if isinstance(out, str) else (out or []):
        check(text in p.stdout, "stdout lacks %r; %s" % (text, shown))
    for text in [err] if isinstance(err, str) else (err or []):
        check(text in p.stderr, "stderr lacks %r; %s" % (text, shown))
    return p


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def write_spec(name, body):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(body if isinstance(body, str) else json.dumps(body))
    return path


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- the cases ----

CASES = []
SHARED = {}
TMP = None


def case(fn):
    CASES.append(fn)
    return fn


@case
def health():
    p = expect(cli("health"), 0, ["ok", "queued", "succeeded", D.url])
    data = json.loads(expect(cli("--json", "health"), 0).stdout)
    check(data["status"] == "ok" and isinstance(data["jobs"]["running"], int), "health --json: %r" % data)


@case
def submit_wait_runs_a_tiny_job_to_succeeded():
    p = expect(cli("submit", write_spec("tiny.json", TINY), "--wait"), 0)
    out = lines(p.stdout)
    check(re.fullmatch(r"[A-Za-z0-9_-]+", out[0]), "first line is not a job id: %r" % out[0])
    tiny = out[0]
    check("succeeded" in out[-1] and "20/20" in out[-1], "last line: %r" % out[-1])
    check(job(tiny)["state"] == "succeeded", "the API says %s" % job(tiny)["state"])
    SHARED["tiny"] = tiny


@case
def watch_of_a_finished_job_ends_at_once():
    started = time.time()
    p = expect(cli("watch", SHARED["tiny"]), 0)
    out = lines(p.stdout)
    check(time.time() - started < 5, "took %.1f s" % (time.time() - started))
    check(len(out) == 1, "more than the final line: %r" % out)
    for text in (SHARED["tiny"], "succeeded", "20/20", "loss", "test"):
        check(text in out[0], "final line lacks %r: %r" % (text, out[0]))


@case
def show_a_job():
    tiny = SHARED["tiny"]
    expect(cli("show", tiny), 0, [tiny, "succeeded", "20 of 20", "checkpoint", "fashion-mnist", '"steps": 20'])
    data = json.loads(expect(cli("show", tiny, "--json"), 0).stdout)
    check(data == job(tiny), "show --json differs from GET /jobs/%s" % tiny)


@case
def metrics_table_csv_and_json():
    tiny = SHARED["tiny"]
    table = lines(expect(cli("metrics", tiny), 0).stdout)
    check(table[0].split()[:3] == ["step", "loss", "lr"], "table header: %r" % table[0])
    check([int(row.split()[0]) for row in table[1:]] == list(range(1, 21)), "table rows: %r" % table[1:4])

    api_points, after = [], -1
    while after is not None:
        status, page = api("GET", "/jobs/%s/metrics?limit=7&after_step=%d" % (tiny, after))
        check(status == 200, "API metrics: %d" % status)
        api_points += page["points"]
        after = page["next_after_step"]

    rows = expect(cli("metrics", tiny, "--csv"), 0).stdout.splitlines()
    check(rows[0] == "name,step,value,time", "CSV header: %r" % rows[0])
    keys = []
    for row in rows[1:]:
        fields = row.split(",")
        check(len(fields) == 4, "CSV row %r" % row)
        float(fields[2]), float(fields[3])
        keys.append((fields[0], int(fields[1])))
    check(len(keys) == len(set(keys)), "a (name, step) twice in the CSV")
    check(sorted(keys) == sorted((p["name"], p["step"]) for p in api_points), "CSV points differ from the API's")
    check({"loss", "lr", "test_top1"} <= {k[0] for k in keys}, "names: %r" % {k[0] for k in keys})

    rows = expect(cli("metrics", tiny, "--csv", "--name", "loss", "--name=test_top1"), 0).stdout.splitlines()
    names = [r.split(",")[0] for r in rows[1:]]
    check(names.count("loss") == 20 and names.count("test_top1") == 2 and len(names) == 22, "--name: %r" % names)

    data = json.loads(expect(cli("--json", "metrics", tiny), 0).stdout)
    check(data["points"] == api_points and data["next_after_step"] is None, "metrics --json differs from the API")


@case
def pull_writes_the_weights_atomically():
    tiny = SHARED["tiny"]
    folder = os.path.join(TMP, "pulled")
    os.makedirs(folder)
    target = os.path.join(folder, "student.safetensors")
    expect(cli("pull", tiny, "-o", target), 0, target)
    with open(target, "rb") as f:
        data = f.read()
    (header_size,) = struct.unpack("<Q", data[:8])
    check(8 + header_size <= len(data), "header beyond the file")
    header = json.loads(data[8:8 + header_size])
    check(header["__metadata__"]["format"] == "distilld-bit-v1", "metadata: %r" % header.get("__metadata__"))
    status, served = api("GET", "/jobs/%s/weights" % tiny)
    check(status == 200 and served == data, "the file differs from GET /jobs/%s/weights" % tiny)
    check(os.listdir(folder) == ["student.safetensors"], "left behind: %r" % os.listdir(folder))
    info = json.loads(expect(cli("--json", "pull", tiny, "-o", target), 0).stdout)
    check(info["bytes"] == len(data), "pull --json: %r" % info)
    expect(cli("pull", tiny, "-o", os.path.join(TMP, "no-such-dir", "w.safetensors")), "nonzero", err="no-such-dir")
    expect(cli("pull", MISSING_JOB, "-o", os.path.join(folder, "x")), "nonzero", err="not found")
    check(os.listdir(folder) == ["student.safetensors"], "a failed pull left %r" % os.listdir(folder))


@case
def a_failed_job_exits_3_with_its_error():
    os.makedirs(os.path.join(D.data_dir, "empty-dataset"))  # passes the submit checks, fails when it runs
    broken = json.dumps(spec(dataset={"format": "idx", "path": "empty-dataset"}))
    p = expect(cli("submit", "-", "--wait", stdin=broken), 3, err=["failed", "train-images-idx3-ubyte"])
    check("failed" in lines(p.stdout)[-1], "final line: %r" % p.stdout)
    failed = lines(p.stdout)[0]
    expect(cli("watch", failed), 3, "failed", "train-images-idx3-ubyte")
    expect(cli("show", failed), 0, ["failed", "train-images-idx3-ubyte"])
    SHARED["failed"] = failed


@case
def a_long_job_holds_the_worker():
    data = json.loads(expect(cli("--json", "submit", write_spec("long.json", LONG)), 0).stdout)
    check(data["state"] == "queued" and data["total_steps"] == 1000000, "submit --json: %r" % data)
    SHARED["long"] = data["id"]
    wait_state(data["id"], ("running",))


@case
def watch_on_a_terminal_redraws_one_line():
    master, slave = pty.openpty()
    watcher = subprocess.Popen([CLI, "watch", SHARED["long"]], stdout=slave, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, env=cli_env())
    os.close(slave)
    out = b""
    try:
        deadline = time.time() + 2
        while time.time() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                out += os.read(master, 65536)
        watcher.send_signal(signal.SIGINT)  # Ctrl-C: the line is ended, exit 130
        watcher.wait(10)
        while select.select([master], [], [], 0.2)[0]:
            try:
                piece = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not piece:
                break
            out += piece
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        watcher.stderr.close()
        os.close(master)
    text = out.decode("utf-8", "replace")
    check(watcher.returncode == 130, "exit %s after Ctrl-C" % watcher.returncode)
    check(text.count("\r") >= 3 and "\x1b[K" in text, "no in-place redraws: %r" % text[-300:])
    check("running" in text and "ETA" in text and "loss" in text, "progress line: %r" % text[-300:])
    check(text.endswith("\n"), "the line was not ended: %r" % text[-80:])


@case
def cancel_a_queued_job_then_watch_says_4():
    queued = expect(cli("submit", write_spec("tiny.json", TINY)), 0).stdout.strip()
    check(job(queued)["state"] == "queued", "not queued behind the long job")
    expect(cli("cancel", queued), 0, [queued, "canceled"])
    check(job(queued)["state"] == "canceled", "the API says %s" % job(queued)["state"])
    p = expect(cli("watch", queued), 4)
    check("canceled" in lines(p.stdout)[-1], "final line: %r" % p.stdout)
    SHARED["canceled"] = queued


@case
def ls_filters_and_follows_pages():
    tiny, long_job, canceled = SHARED["tiny"], SHARED["long"], SHARED["canceled"]
    table = lines(expect(cli("ls"), 0, ["ID", "STATE", "CREATED"]).stdout)
    rows = {row.split()[0]: row.split() for row in table[1:]}
    check(rows[tiny][1:4] == ["train", "succeeded", "20/20"], "ls row: %r" % rows[tiny])
    check(rows[long_job][2] == "running" and canceled in rows, "ls rows: %r" % rows)
    only = lines(expect(cli("ls", "--state", "succeeded"), 0).stdout)[1:]
    check([r.split()[0] for r in only] == [tiny], "--state succeeded: %r" % only)
    only = lines(expect(cli("ls", "--state", "failed"), 0).stdout)[1:]
    check([r.split()[0] for r in only] == [SHARED["failed"]], "--state failed: %r" % only)
    # 510 queued jobs behind the long one: more than one API page (500)
    made = []
    for _ in range(510):
        status, data = api("POST", "/jobs", TINY)
        check(status == 201, "submit: %d %r" % (status, data))
        made.append(data["id"])
    try:
        listed = [r.split()[0] for r in lines(expect(cli("ls", "--state", "queued"), 0).stdout)[1:]]
        check(listed == made[::-1], "ls --state queued: %d rows, expected the %d jobs newest first" % (
            len(listed), len(made)))
        limited = lines(expect(cli("ls", "--limit", "502"), 0).stdout)[1:]
        check([r.split()[0] for r in limited] == made[::-1][:502], "--limit 502: %d rows" % len(limited))
        data = json.loads(expect(cli("--json", "ls"), 0).stdout)
        ids = [j["id"] for j in data["jobs"]]
        check(len(ids) == len(set(ids)) == 514 and data["next_cursor"] is None, "ls --json: %d jobs" % len(ids))
    finally:
        for job_id in made:
            api("POST", "/jobs/%s/cancel" % job_id)
    expect(cli("ls", "--state", "paused"), 0, "no paused jobs")


@case
def pause_ends_a_live_watch_with_5_then_resume_and_cancel():
    long_job = SHARED["long"]
    watcher = subprocess.Popen([CLI, "watch", long_job], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cli_env(), stdin=subprocess.DEVNULL)
    try:
        time.sleep(1)
        if watcher.poll() is not None:
            raise Failure("watch of a running job ended: exit %d %r" % (watcher.returncode, watcher.communicate()))
        expect(cli("pause", long_job), 0, "pause requested")
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    check(watcher.returncode == 5, "watch exit %d after pause: %r %r" % (watcher.returncode, out[-300:], err))
    check("paused" in lines(out)[-1] and "running" in out, "watch output: %r" % out[-400:])
    check(job(long_job)["state"] == "paused", "the API says %s" % job(long_job)["state"])
    expect(cli("show", long_job), 0, "paused")
    expect(cli("watch", long_job), 5, "paused")
    expect(cli("pause", long_job), "nonzero", err="paused")  # 409
    expect(cli("resume", long_job), 0, "queued")
    wait_state(long_job, ("running",))
    expect(cli("cancel", long_job), 0, "cancel requested")
    p = expect(cli("watch", long_job), 4)
    check("canceled" in lines(p.stdout)[-1], "final line: %r" % p.stdout[-300:])


@case
def watch_reconnects_across_a_daemon_restart():
    job_id = expect(cli("submit", write_spec("medium.json", spec(steps=400, checkpoint_every=50, eval_every=100))),
                    0).stdout.strip()
    watcher = subprocess.Popen([CLI, "--json", "watch", job_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=cli_env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while job(job_id)["step"] < 20:
            check(time.time() < deadline and job(job_id)["state"] != "succeeded", "the job went too fast or stuck")
            time.sleep(0.05)
        D.stop(30)
        time.sleep(1)
        D.start(D.port)  # the same port: the watcher reconnects to it
        out, err = watcher.communicate(timeout=90)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    check(watcher.returncode == 0, "watch exit %d: %r" % (watcher.returncode, err[-400:]))
    check("reconnecting" in err, "no word about reconnecting: %r" % err[-300:])
    events = [json.loads(line) for line in lines(out)]
    ids = [e["id"] for e in events if e["id"] is not None]
    check(ids == sorted(set(ids)), "event ids repeat or go back: a reconnect without Last-Event-ID?")
    steps = [e["data"]["step"] for e in events if e["event"] == "metric"]
    check(steps == list(range(1, 401)), "metric steps: %d, repeated or missing" % len(steps))
    check(events[-1]["event"] == "end" and events[-1]["data"]["state"] == "succeeded", "last: %r" % events[-1])


@case
def daemon_down_says_cannot_reach():
    down = "http://127.0.0.1:%d" % free_port()
    for args in (["health"], ["ls"], ["watch", SHARED["tiny"]], ["submit", write_spec("tiny.json", TINY)]):
        expect(cli("--url", down, *args), 1, err=["cannot reach distilld at " + down, "connection refused"])
    expect(cli("ls", env={"DISTILL_URL": down}), 1, err="cannot reach")


@case
def wrong_or_missing_token_is_refused():
    tiny = SHARED["tiny"]
    expect(cli("--token", "wrong", "cancel", tiny), 1, err=["token was refused", "DATA_DIR/token"])
    expect(cli("submit", write_spec("tiny.json", TINY), env={"DISTILL_TOKEN": "wrong"}), 1, err="token")
    nowhere = os.path.join(TMP, "nowhere")
    expect(cli("pause", tiny, env={"DISTILL_DATA_DIR": nowhere}), 1, err=["token", nowhere + "/token"])


@case
def the_token_comes_from_flags_environment_or_var_token():
    tiny = SHARED["tiny"]  # succeeded: canceling it is a 409 once the token is accepted
    conflict = "cannot cancel job %s" % tiny
    expect(cli("--data-dir", D.data_dir, "cancel", tiny, env={"DISTILL_DATA_DIR": None}), 1, err=conflict)
    expect(cli("cancel", tiny, env={"DISTILL_DATA_DIR": None, "DISTILL_TOKEN": D.token}), 1, err=conflict)
    expect(cli("cancel", tiny, "--token", D.token, env={"DISTILL_DATA_DIR": None}), 1, err=conflict)
    workdir = os.path.join(TMP, "workdir")
    os.makedirs(os.path.join(workdir, "var"))
    shutil.copy(os.path.join(D.data_dir, "token"), os.path.join(workdir, "var", "token"))
    expect(cli("cancel", tiny, env={"DISTILL_DATA_DIR": None}, cwd=workdir), 1, err=conflict)
    expect(cli("cancel", tiny, env={"DISTILL_DATA_DIR": None}, cwd=TMP), 1, err="./var/token")


@case
def unknown_job_gives_the_api_message():
    status, data = api("GET", "/jobs/" + MISSING_JOB)
    check(status == 404, "GET unknown job: %d" % status)
    message = data["error"]["message"]
    for command in ("show", "watch", "cancel", "pause", "resume", "metrics"):
        expect(cli(command, MISSING_JOB), 1, err=message)
    expect(cli("show", "../etc"), 1, err="not a job id")


@case
def bad_spec_is_refused_naming_the_key():
    expect(cli("submit", write_spec("colour.json", spec(colour="red"))), 1, err="colour")
    expect(cli("submit", write_spec("depht.json", spec(model={"depht": [1]}))), 1, err="model.depht")
    expect(cli("submit", write_spec("broken.json", '{"kind": "train", "steps":')), 1, err="not valid JSON")
    expect(cli("submit", os.path.join(TMP, "missing.json")), 1, err="missing.json")


@case
def usage_mistakes_exit_2():
    expect(cli(), 2, err="usage")
    expect(cli("frobnicate"), 2, err=["unknown command", "frobnicate"])
    expect(cli("ls", "--bogus"), 2, err="--bogus")
    expect(cli("ls", "--limit", "zero"), 2, err="--limit")
    expect(cli("show"), 2, err="usage: distill show")
    expect(cli("submit"), 2, err="usage: distill submit")
    expect(cli("metrics", SHARED["tiny"], "--name"), 2, err="--name")
    expect(cli("--help"), 0, ["submit", "watch", "metrics", "pull", "exit status"])


def main():
    global D, TMP
    for binary in (DAEMON, CLI):
        if not os.access(binary, os.X_OK):
            print("FAIL build: %s is not built" % binary)
            print("0 passed, 1 failed")
            return 1
    TMP = tempfile.mkdtemp(prefix="distill-cli-")
    passed = failed = 0
    try:
        try:
            D = Daemon(BUILD, os.path.join(TMP, "data"), "--workers", "1", "--threads", "1").start()
        except StartError as e:
            print("FAIL daemon starts: %s" % e)
            print("0 passed, 1 failed")
            return 1
        for fn in CASES:
            name = fn.__name__.replace("_", " ")
            started = time.time()
            try:
                fn()
                passed += 1
                print("ok   %s (%.1f s)" % (name, time.time() - started), flush=True)
            except Exception as e:  # a failed check, or anything unexpected: report and go on
                failed += 1
                why = str(e) if isinstance(e, Failure) else "%s: %s" % (type(e).__name__, e)
                print("FAIL %s: %s" % (name, why), flush=True)
        if D.proc.poll() is not None:
            failed += 1
            print("FAIL daemon stays up: it exited with %s" % D.proc.returncode)
    finally:
        if D:
            D.stop(30)
            if failed:
                print("daemon log (last lines):\n  " + "\n  ".join(D.lines[-15:]))
        shutil.rmtree(TMP, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
