#!/usr/bin/python3
"""test_api.py - the HTTP API of DESIGN.md section 6 against a real daemon.

Starts `distilld serve` on an ephemeral port with a fresh data directory and
exercises every endpoint and every error status: submissions good and bad
(JSON, spec keys, path confinement), the token, 404/405/409/413/503, jobs
pagination, a small real job run to the end with its metrics, weights and
Server-Sent Events (live, replayed, and resumed with Last-Event-ID).

Prints "ok   name" or "FAIL name: why" per case and "N passed, N failed";
exits 1 on any failure. Standard library only. Usage: test_api.py [BUILD_DIR]
(default $BUILD, else build); TEST_API_LOG=FILE keeps the daemon's log.
"""
import http.client
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time

from daemon import Daemon, StartError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BUILD", "build"))
BINARY = os.path.join(BUILD, "distilld")
API = "/api/v1"
STATES = ("queued", "running", "paused", "succeeded", "failed", "canceled")
TERMINAL = ("succeeded", "failed", "canceled")

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

D = None  # the Daemon


def request(method, path, body=None, token=None, headers=None, timeout=30):
    """(status, headers, parsed JSON or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", D.port, timeout=timeout)
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        h["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        kind = resp.getheader("Content-Type", "")
        if kind.startswith("application/json"):
            data = json.loads(data)
        return resp.status, resp, data
    finally:
        conn.close()


def api(method, path, body=None, auth=True, **kw):
    return request(method, API + path, body=body, token=D.token if auth else None, **kw)


def expect_error(result, status, code, mentions=None):
    got, _, data = result
    check(got == status, "status %d, expected %d: %r" % (got, status, data))
    check(isinstance(data, dict) and set(data) == {"error"} and set(data["error"]) == {"code", "message"},
          "not the error shape: %r" % (data,))
    check(data["error"]["code"] == code, "code %r, expected %r" % (data["error"]["code"], code))
    check(isinstance(data["error"]["message"], str) and data["error"]["message"], "empty message")
    if mentions:
        check(mentions in data["error"]["message"], "message %r does not name %r" % (data["error"]["message"], mentions))


def submit(body, status=201):
    got, resp, data = api("POST", "/jobs", body)
    check(got == status, "submit: status %d, expected %d: %r" % (got, status, data))
    return data


def job(job_id):
    got, _, data = api("GET", "/jobs/" + job_id)
    check(got == 200, "GET job %s: %d %r" % (job_id, got, data))
    return data


def wait_state(job_id, states, seconds=90):
    deadline = time.time() + seconds
    while True:
        j = job(job_id)
        if j["state"] in states:
            return j
        check(time.time() < deadline, "job %s is still %s after %d s (wanted %s)" % (job_id, j["state"], seconds, states))
        time.sleep(0.1)


def cancel_and_wait(job_id):
    got, _, data = api("POST", "/jobs/%s/cancel" % job_id)
    check(got in (200, 202, 409), "cancel %s: %d %r" % (job_id, got, data))
    return wait_state(job_id, TERMINAL)


# ---- Server-Sent Events ----

def open_stream(job_id, last_event_id=None, query=""):
    conn = http.client.HTTPConnection("127.0.0.1", D.port, timeout=30)
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    conn.request("GET", "%s/jobs/%s/events%s" % (API, job_id, query), headers=headers)
    return conn, conn.getresponse()


def read_events(resp, stop=None):
    """Events until the stream ends: dicts with id (int or None), event, data (parsed)."""
    events, fields, data = [], {}, []
    while True:
        line = resp.readline()
        if not line:
            return events
        line = line.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                events.append({"id": int(fields["id"]) if "id" in fields else None,
                               "event": fields.get("event", "message"), "data": json.loads("\n".join(data))})
                if stop and stop(events[-1]):
                    return events
            fields, data = {}, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


def stored_events(events):
    return [e for e in events if e["id"] is not None]


# ---- the cases ----

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


SHARED = {}


@case
def health_and_version():
    got, resp, data = api("GET", "/health", auth=False)
    check(got == 200 and data["status"] == "ok", "health: %d %r" % (got, data))
    check(set(data["jobs"]) >= set(STATES) and all(isinstance(data["jobs"][s], int) for s in STATES),
          "health counts: %r" % data)
    got, _, data = api("GET", "/version", auth=False)
    check(got == 200 and data == {"version": "0.1.0"}, "version: %d %r" % (got, data))


@case
def unknown_path_is_404():
    expect_error(api("GET", "/nope"), 404, "not_found")
    expect_error(api("GET", "/jobs/j0000000000000000/nope"), 404, "not_found")
    expect_error(request("GET", "/..%2f..%2fetc/passwd"), 404, "not_found")


@case
def wrong_method_is_405():
    result = api("PUT", "/jobs", {})
    expect_error(result, 405, "method_not_allowed")
    allow = result[1].getheader("Allow", "")
    check("GET" in allow and "POST" in allow, "Allow: %r" % allow)
    result = api("DELETE", "/health")
    expect_error(result, 405, "method_not_allowed")
    check("GET" in result[1].getheader("Allow", ""), "Allow on /health")
    expect_error(api("GET", "/jobs/j0000000000000000/cancel"), 405, "method_not_allowed")


@case
def unknown_job_is_404():
    for method, path in [("GET", ""), ("GET", "/metrics"), ("GET", "/checkpoints"), ("GET", "/weights"),
                         ("GET", "/events"), ("POST", "/cancel"), ("POST", "/pause"), ("POST", "/resume"),
                         ("DELETE", "")]:
        expect_error(api(method, "/jobs/j0123456789abcdef" + path), 404, "not_found")


@case
def missing_or_wrong_token_is_401():
    expect_error(api("POST", "/jobs", TINY, auth=False), 401, "unauthorized")
    expect_error(request("POST", API + "/jobs", TINY, token=D.token + "x"), 401, "unauthorized")
    expect_error(request("POST", API + "/jobs", TINY, token="short"), 401, "unauthorized")
    expect_error(request("POST", API + "/jobs", TINY, headers={"Authorization": D.token}), 401, "unauthorized")
    expect_error(api("DELETE", "/jobs/j0123456789abcdef", auth=False), 401, "unauthorized")
    expect_error(api("POST", "/jobs/j0123456789abcdef/cancel", auth=False), 401, "unauthorized")
    got, _, data = api("GET", "/jobs", auth=False)  # reads need no token on loopback
    check(got == 200 and "jobs" in data, "read without token on loopback: %d" % got)


@case
def bad_json_is_400():
    expect_error(api("POST", "/jobs", '{"kind": "train", "steps":'), 400, "bad_json")
    expect_error(api("POST", "/jobs", ""), 400, "bad_json")
    expect_error(api("POST", "/jobs", '{"kind": "train", "kind": "train", "steps": 5}'), 400, "bad_json")


@case
def bad_spec_is_400_naming_the_key():
    expect_error(api("POST", "/jobs", spec(colour="red")), 400, "invalid_spec", "colour")
    expect_error(api("POST", "/jobs", spec(model={"depht": [1]})), 400, "invalid_spec", "model.depht")
    expect_error(api("POST", "/jobs", spec(steps="twenty")), 400, "invalid_spec", "steps")
    expect_error(api("POST", "/jobs", spec(batch_size=1.5)), 400, "invalid_spec", "batch_size")
    expect_error(api("POST", "/jobs", spec(steps=10, warmup_steps=10)), 400, "invalid_spec", "warmup_steps")
    expect_error(api("POST", "/jobs", [1, 2]), 400, "invalid_spec")


@case
def paths_are_confined():
    traversal = spec(dataset={"format": "idx", "path": "../../etc/passwd"})
    expect_error(api("POST", "/jobs", traversal), 400, "path_not_allowed", "dataset.path")
    outside = spec(dataset={"format": "idx", "path": "/etc"})
    expect_error(api("POST", "/jobs", outside), 400, "path_not_allowed", "dataset.path")
    link = os.path.join(D.data_dir, "escape")
    os.symlink("/etc", link)
    expect_error(api("POST", "/jobs", spec(dataset={"format": "idx", "path": link})), 400, "path_not_allowed",
                 "dataset.path")
    expect_error(api("POST", "/jobs", spec(dataset={"format": "idx", "path": "escape"})), 400, "path_not_allowed",
                 "dataset.path")
    teacher = spec(kind="distill", teacher="/etc/passwd")
    expect_error(api("POST", "/jobs", teacher), 400, "path_not_allowed", "teacher")
    teacher = spec(kind="distill", teacher=os.path.join(link, "passwd"))
    expect_error(api("POST", "/jobs", teacher), 400, "path_not_allowed", "teacher")


@case
def a_job_holds_the_worker():
    blocker = submit(LONG)
    SHARED["blocker"] = blocker["id"]
    check(blocker["state"] == "queued" and blocker["kind"] == "train", "new job: %r" % blocker)
    for key in ("id", "kind", "state", "spec", "step", "total_steps", "checkpoint_step", "error", "request",
                "created_at", "updated_at"):
        check(key in blocker, "job JSON lacks %s" % key)
    check(isinstance(blocker["spec"], dict) and blocker["spec"]["steps"] == 1000000, "spec as an object")
    check(blocker["total_steps"] == 1000000, "total_steps %r" % blocker["total_steps"])
    wait_state(blocker["id"], ("running",), 60)


@case
def illegal_transitions_are_409():
    queued = submit(TINY)["id"]  # behind the running job, so it stays queued
    check(job(queued)["state"] == "queued", "not queued")
    expect_error(api("POST", "/jobs/%s/resume" % queued), 409, "conflict", "queued")
    expect_error(api("POST", "/jobs/%s/pause" % queued), 409, "conflict", "queued")
    expect_error(api("DELETE", "/jobs/" + queued), 409, "conflict", "queued")
    got, _, data = api("POST", "/jobs/%s/cancel" % queued)
    check(got == 200 and data["state"] == "canceled", "cancel queued: %d %r" % (got, data))
    expect_error(api("POST", "/jobs/%s/cancel" % queued), 409, "conflict", "canceled")
    expect_error(api("POST", "/jobs/%s/resume" % queued), 409, "conflict", "canceled")
    got, _, data = api("DELETE", "/jobs/" + queued)
    check(got == 204 and data == b"", "delete canceled: %d %r" % (got, data))
    expect_error(api("GET", "/jobs/" + queued), 404, "not_found")


@case
def stream_cap_is_503():
    blocker = SHARED["blocker"]
    open_ones = []
    try:
        for _ in range(2):
            conn, resp = open_stream(blocker)
            check(resp.status == 200, "stream: %d" % resp.status)
            check(resp.getheader("Content-Type", "").startswith("text/event-stream"), "content type")
            open_ones.append(conn)
        got, _, data = api("GET", "/jobs/%s/events" % blocker)
        expect_error((got, None, data), 503, "too_many_streams")
    finally:
        for conn in open_ones:
            conn.close()
    deadline = time.time() + 5  # closed streams give their places back
    while True:
        conn, resp = open_stream(blocker)
        status = resp.status
        conn.close()
        if status == 200:
            break
        check(time.time() < deadline, "closed streams still count after 5 s (status %d)" % status)
        time.sleep(0.2)


@case
def bad_event_cursor_is_400():
    expect_error(request("GET", "%s/jobs/%s/events" % (API, SHARED["blocker"]), headers={"Last-Event-ID": "abc"}), 400,
                 "bad_request")
    expect_error(api("GET", "/jobs/%s/events?last_event_id=-4" % SHARED["blocker"]), 400, "bad_request")


@case
def pagination_has_no_repeats_and_no_gaps():
    created = [submit(TINY)["id"] for _ in range(25)]
    for job_id in created:  # the worker is busy: they are still queued
        got, _, data = api("POST", "/jobs/%s/cancel" % job_id)
        check(got in (200, 202), "cancel: %d %r" % (got, data))
    seen, cursor, pages = [], None, 0
    while True:
        path = "/jobs?limit=10" + ("&cursor=" + cursor if cursor else "")
        got, _, data = api("GET", path)
        check(got == 200, "list: %d %r" % (got, data))
        check(len(data["jobs"]) <= 10, "page of %d" % len(data["jobs"]))
        seen += [j["id"] for j in data["jobs"]]
        pages += 1
        cursor = data["next_cursor"]
        if cursor is None:
            break
        check(pages < 100, "pagination does not end")
    check(len(seen) == len(set(seen)), "a job appears twice")
    check(pages >= 3, "only %d pages" % pages)
    got, _, data = api("GET", "/jobs?limit=500")
    check(seen == [j["id"] for j in data["jobs"]], "pages differ from one big page")
    check([i for i in seen if i in created] == created[::-1], "not newest first, or jobs missing")
    got, _, data = api("GET", "/jobs?state=running&limit=500")
    check(got == 200 and all(j["state"] == "running" for j in data["jobs"]), "state filter")
    check(SHARED["blocker"] in [j["id"] for j in data["jobs"]], "running job not listed")
    for bad in ("state=sleeping", "limit=0", "limit=501", "limit=ten", "cursor=..%2fx", "cursor=jffffffffffffffff"):
        got, _, data = api("GET", "/jobs?" + bad)
        expect_error((got, None, data), 400, "bad_request")
    got, _, data = api("GET", "/health")
    check(data["jobs"]["canceled"] >= 25, "health counts canceled jobs: %r" % data)


@case
def pause_resume_cancel_delete_a_running_job():
    blocker = SHARED["blocker"]
    got, _, data = api("POST", "/jobs/%s/pause" % blocker)
    check(got == 202 and data["request"] == "pause", "pause running: %d %r" % (got, data))
    paused = wait_state(blocker, ("paused",), 60)
    check(paused["checkpoint_step"] is not None, "paused without a checkpoint")
    got, _, data = api("GET", "/jobs/%s/checkpoints" % blocker)
    check(got == 200 and data["checkpoints"] and data["checkpoints"][-1]["step"] == paused["checkpoint_step"],
          "checkpoints: %r" % data)
    expect_error(api("POST", "/jobs/%s/pause" % blocker), 409, "conflict", "paused")
    expect_error(api("POST", "/jobs/%s/cancel" % blocker), 409, "conflict", "paused")
    got, _, data = api("POST", "/jobs/%s/resume" % blocker)
    check(got == 200 and data["state"] == "queued", "resume: %d %r" % (got, data))
    got, _, data = api("POST", "/jobs/%s/cancel" % blocker)  # queued again, or claimed meanwhile
    check((got == 200 and data["state"] == "canceled") or (got == 202 and data["request"] == "cancel"),
          "cancel: %d %r" % (got, data))
    check(wait_state(blocker, TERMINAL, 60)["state"] == "canceled", "not canceled")
    expect_error(api("GET", "/jobs/%s/weights" % blocker), 404, "not_found")
    run_dir = os.path.join(D.data_dir, "runs", blocker)
    keep = os.path.join(D.data_dir, "keep")
    os.makedirs(keep)
    with open(os.path.join(keep, "precious"), "w") as f:
        f.write("x")
    os.makedirs(run_dir, exist_ok=True)
    os.symlink(keep, os.path.join(run_dir, "link-out"))
    got, _, _ = api("DELETE", "/jobs/" + blocker)
    check(got == 204, "delete canceled: %d" % got)
    check(not os.path.exists(run_dir), "run directory left behind")
    check(os.path.exists(os.path.join(keep, "precious")), "delete followed a symlink out of the run directory")
    expect_error(api("GET", "/jobs/" + blocker), 404, "not_found")


@case
def a_small_job_runs_to_succeeded():
    tiny = submit(TINY)
    SHARED["tiny"] = tiny["id"]
    check(tiny["total_steps"] == 20, "total_steps %r" % tiny["total_steps"])
    live = {}

    def follow():  # the stream from the start, while the job runs
        try:
            conn, resp = open_stream(tiny["id"])
            live["status"] = resp.status
            live["events"] = read_events(resp)
            conn.close()
        except Exception as e:  # reported below
            live["error"] = repr(e)

    follower = threading.Thread(target=follow)
    follower.start()
    done = wait_state(tiny["id"], TERMINAL, 90)
    check(done["state"] == "succeeded", "job ended %s: %s" % (done["state"], done["error"]))
    check(done["step"] == 20 and done["error"] is None, "finished job: %r" % done)
    follower.join(30)
    check(not follower.is_alive(), "the event stream did not end after the job finished")
    check("error" not in live, "live stream: %s" % live.get("error"))
    SHARED["live"] = live["events"]


@case
def metrics_pages_have_each_point_once():
    tiny = SHARED["tiny"]
    for names, limit in (("loss,lr", 7), ("", 5), ("loss", 3)):
        seen, after, pages = [], None, 0
        while True:
            query = "?limit=%d" % limit + ("&names=" + names if names else "") + (
                "&after_step=%d" % after if after is not None else "")
            got, _, data = api("GET", "/jobs/%s/metrics%s" % (tiny, query))
            check(got == 200, "metrics: %d %r" % (got, data))
            for p in data["points"]:
                check(set(p) == {"name", "step", "value", "time"}, "point %r" % p)
                check(after is None or p["step"] > after, "step %r after %r" % (p["step"], after))
            seen += [(p["name"], p["step"]) for p in data["points"]]
            pages += 1
            after = data["next_after_step"]
            if after is None:
                break
            check(pages < 200, "metrics paging does not end")
        check(len(seen) == len(set(seen)), "a point twice (names=%r, limit %d)" % (names, limit))
        wanted = names.split(",") if names else ["loss", "lr"]
        for name in wanted:
            steps = sorted(s for n, s in seen if n == name)
            check(steps == list(range(1, 21)), "%s steps: %r" % (name, steps))
        if names:
            check({n for n, _ in seen} == set(wanted), "names not filtered: %r" % {n for n, _ in seen})
        check(pages >= 2, "one page only")
    for bad in ("limit=0", "limit=10001", "after_step=x", "names=a,,b"):
        got, _, data = api("GET", "/jobs/%s/metrics?%s" % (tiny, bad))
        expect_error((got, None, data), 400, "bad_request")
    got, _, data = api("GET", "/jobs/%s/checkpoints" % tiny)
    check(got == 200 and [c["step"] for c in data["checkpoints"]] == [10, 20], "checkpoints: %r" % data)
    check(all(isinstance(c["path"], str) and c["path"] for c in data["checkpoints"]), "checkpoint paths")


@case
def metrics_buckets_downsample_for_display():
    tiny = SHARED["tiny"]
    full = {}
    got, _, data = api("GET", "/jobs/%s/metrics?limit=10000" % tiny)
    for p in data["points"]:
        full[(p["name"], p["step"])] = p
    # 20 steps in 5 buckets of 4: per name and bucket the least and the greatest value
    got, _, data = api("GET", "/jobs/%s/metrics?buckets=5&names=loss,lr" % tiny)
    check(got == 200 and data["bucket_steps"] == 4 and data["next_after_step"] is None, "buckets: %d %r" % (got, data))
    for name in ("loss", "lr"):
        picked = [p for p in data["points"] if p["name"] == name]
        check(all(full[(name, p["step"])] == p for p in picked), "%s: a bucket point is not a stored point" % name)
        for b in range(5):
            inside = [full[(name, s)]["value"] for s in range(1 + 4 * b, 5 + 4 * b)]
            values = [p["value"] for p in picked if 1 + 4 * b <= p["step"] <= 4 + 4 * b]
            check(sorted(values) == sorted({min(inside), max(inside)}),
                  "%s bucket %d: %r from %r" % (name, b, values, inside))
    steps = [(p["step"], p["name"]) for p in data["points"]]
    check(steps == sorted(steps), "not ordered by (step, name)")
    # enough buckets: every point of the range, as the pages give them
    got, _, data = api("GET", "/jobs/%s/metrics?buckets=100&from_step=5&to_step=9&names=loss" % tiny)
    check(got == 200 and [p["step"] for p in data["points"]] == [5, 6, 7, 8, 9], "range: %r" % data)
    check(all(full[("loss", p["step"])] == p for p in data["points"]), "range points differ from the pages")
    got, _, data = api("GET", "/jobs/%s/metrics?buckets=10&from_step=500" % tiny)
    check(got == 200 and data["points"] == [], "an empty range: %r" % data)
    for bad in ("buckets=0", "buckets=10001", "buckets=5&after_step=3", "buckets=5&limit=10",
                "buckets=5&from_step=9&to_step=3", "buckets=5&from_step=-1"):
        got, _, data = api("GET", "/jobs/%s/metrics?%s" % (tiny, bad))
        expect_error((got, None, data), 400, "bad_request")
    got, _, data = api("GET", "/jobs/jffffffffffffffff/metrics?buckets=5")
    expect_error((got, None, data), 404, "not_found")


@case
def weights_are_a_safetensors_file():
    got, resp, data = api("GET", "/jobs/%s/weights" % SHARED["tiny"])
    check(got == 200, "weights: %d" % got)
    check(resp.getheader("Content-Type") == "application/octet-stream", "content type")
    check(len(data) > 8, "empty file")
    (header_size,) = struct.unpack("<Q", data[:8])
    check(8 + header_size <= len(data), "header length %d beyond the %d-byte file" % (header_size, len(data)))
    header = json.loads(data[8:8 + header_size])
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    check(tensors, "no tensors")
    payload = len(data) - 8 - header_size
    for name, t in tensors.items():
        start, end = t["data_offsets"]
        check(t["dtype"] == "F32" and 0 <= start <= end <= payload, "tensor %s: %r" % (name, t))
        count = 1
        for d in t["shape"]:
            count *= d
        check(end - start == 4 * count, "tensor %s size" % name)
    check(header.get("__metadata__", {}).get("format") == "distilld-bit-v1", "metadata: %r" % header.get("__metadata__"))


@case
def events_stream_and_resume_with_last_event_id():
    tiny = SHARED["tiny"]
    conn, resp = open_stream(tiny)
    check(resp.status == 200, "events: %d" % resp.status)
    everything = read_events(resp)
    conn.close()
    events = stored_events(everything)
    ids = [e["id"] for e in events]
    check(ids == sorted(set(ids)), "ids not increasing: %r" % ids)
    kinds = [e["event"] for e in events]
    check("state" in kinds and "metric" in kinds, "event types: %r" % sorted(set(kinds)))
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    check(states[-1] == "succeeded" and "running" in states, "state events: %r" % states)
    steps = [e["data"]["step"] for e in events if e["event"] == "metric"]
    check(steps == list(range(1, 21)), "metric events: %r" % steps)
    check(everything[-1]["event"] == "end" and everything[-1]["id"] is None, "no end event")
    check(stored_events(SHARED["live"]) == events, "the live stream differs from the replay")
    third = events[2]["id"]
    for last, query in ((third, ""), (None, "?last_event_id=%d" % third)):
        conn, resp = open_stream(tiny, last_event_id=last, query=query)
        rest = stored_events(read_events(resp))
        conn.close()
        check(rest == events[3:], "after event %d: %r, expected %r" % (third, [e["id"] for e in rest],
                                                                       [e["id"] for e in events[3:]]))
    conn, resp = open_stream(tiny, query="?after_step=12")
    later = stored_events(read_events(resp))
    conn.close()
    expected = [e for e in events if e["event"] not in ("metric", "eval") or e["data"]["step"] > 12]
    check(later == expected and any(e["event"] == "metric" for e in later),
          "after_step=12: %r, expected %r" % ([(e["event"], e["data"].get("step")) for e in later],
                                              [(e["event"], e["data"].get("step")) for e in expected]))
    expect_error(api("GET", "/jobs/%s/events?after_step=-2" % tiny), 400, "bad_request", "after_step")


@case
def distill_names_a_finished_job_as_teacher():
    tiny = SHARED["tiny"]
    expect_error(api("POST", "/jobs", spec(kind="distill", teacher={"job": "j0123456789abcdef"})), 400,
                 "invalid_spec", "teacher.job")
    data = submit(spec(kind="distill", teacher={"job": tiny}, steps=1000000))
    teacher = data["spec"]["teacher"]
    expected = os.path.join(os.path.realpath(D.data_dir), "runs", tiny, "weights.safetensors")
    check(teacher == expected, "teacher %r, expected %r" % (teacher, expected))
    check(data["kind"] == "distill", "kind %r" % data["kind"])
    expect_error(api("POST", "/jobs", spec(kind="distill", teacher={"job": data["id"]})), 400, "invalid_spec",
                 "teacher.job")  # a distill job that has not succeeded
    expect_error(api("DELETE", "/jobs/" + tiny), 409, "conflict", data["id"])  # its teacher stays while it may run
    cancel_and_wait(data["id"])


@case
def oversized_body_is_413_and_the_daemon_keeps_serving():
    body = b"x" * (10 << 20)
    for chunked in (False, True):
        s = socket.create_connection(("127.0.0.1", D.port), timeout=30)
        head = "POST %s/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n" % (API, D.token)
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "Content-Length: %d\r\n\r\n" % len(body)
        s.sendall(head.encode())
        try:  # the daemon may answer and close before taking it all
            for i in range(0, len(body), 1 << 16):
                piece = body[i:i + (1 << 16)]
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 40:
                piece = s.recv(65536)
                if not piece:
                    break
                reply += piece
        except OSError:
            pass
        s.close()
        check(reply.startswith(b"HTTP/1.1 413"), "chunked=%s: %r" % (chunked, reply[:80]))
        check(b'"body_too_large"' in reply, "chunked=%s: no body_too_large in %r" % (chunked, reply[:300]))
    got, _, data = api("GET", "/health")
    check(got == 200 and data["status"] == "ok", "health after 413: %d" % got)


@case
def dashboard_is_served():
    got, resp, data = request("GET", "/")
    check(got == 200 and resp.getheader("Content-Type", "").startswith("text/html"), "GET /: %d" % got)
    check(b"<html" in data.lower(), "not HTML")
    expect_error(request("GET", "/no-such-file.js"), 404, "not_found")
    expect_error(request("POST", "/", {}), 405, "method_not_allowed")


@case
def delete_removes_a_finished_job_and_its_run():
    tiny = SHARED["tiny"]
    run_dir = os.path.join(D.data_dir, "runs", tiny)
    check(os.path.isdir(run_dir), "no run directory %s" % run_dir)
    got, _, data = api("DELETE", "/jobs/" + tiny)
    check(got == 204, "delete: %d %r" % (got, data))
    check(not os.path.exists(run_dir), "run directory left behind")
    expect_error(api("GET", "/jobs/%s/weights" % tiny), 404, "not_found")
    expect_error(api("DELETE", "/jobs/" + tiny), 404, "not_found")


def main():
    global D
    if not os.access(BINARY, os.X_OK):
        print("FAIL daemon: %s is not built" % BINARY)
        print("0 passed, 1 failed")
        return 1
    tmp = tempfile.mkdtemp(prefix="distilld-api-")
    passed = failed = 0
    try:
        try:
            D = Daemon(BUILD, os.path.join(tmp, "data"), "--workers", "1", "--threads", "1",
                       "--max-streams", "2").start()
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
        else:  # SIGTERM: a clean exit (sanitizer builds: no leak, no error report)
            D.stop()
            if D.proc.returncode == 0:
                passed += 1
                print("ok   daemon exits 0 on SIGTERM")
            else:
                failed += 1
                print("FAIL daemon exits 0 on SIGTERM: exit status %s" % D.proc.returncode)
    finally:
        if D:
            D.stop()
            if failed:
                print("daemon log (last lines):\n  " + "\n  ".join(D.lines[-15:]))
            if os.environ.get("TEST_API_LOG"):  # the whole log, to look into a failure
                with open(os.environ["TEST_API_LOG"], "w") as f:
                    f.write("\n".join(D.lines) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
