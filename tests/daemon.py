"""daemon.py - `distilld serve` for the tests that talk to a real daemon.

Daemon(build, data_dir, *extra_args).start() runs BUILD/distilld serve on 127.0.0.1 with the
given data directory and returns once the daemon's log says where it listens; then port, url,
token and the log lines so far are set. start() takes a port (0, the default, is an ephemeral
one), so a restart on the same data directory can keep the port or take a new one.
stop() is SIGTERM, then SIGKILL if the daemon outlives the timeout; kill() sends any signal
(SIGKILL by default) and waits. Both return the exit status. A daemon that outlives kill()'s
timeout raises HangError with every thread's stack (gdb, when installed) and its last log lines;
kill(thread=T) signals one of its threads().

A thread reads the daemon's stderr to its end into `lines` (every start's, in order), so the
daemon never blocks on a full pipe and the log can be shown when a test fails.
Standard library only.
"""
import ctypes
import os
import re
import signal
import subprocess
import threading

SYS_TGKILL = 234  # x86-64
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class StartError(Exception):
    """The daemon exited or did not say where it listens; the message ends with its last log lines."""


class HangError(Exception):
    """The daemon did not exit after a signal; the message holds its threads' stacks and last log lines."""


class Daemon:
    def __init__(self, build, data_dir, *extra_args):
        self.binary = os.path.join(build, "distilld")
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None
        self.token = None
        self.lines = []
        self.reader = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, port=0, timeout=30):
        """Start and wait up to `timeout` seconds until it listens; StartError if it does not."""
        self.port = None
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", "127.0.0.1:%d" % port, "--data-dir", self.data_dir] + self.extra_args,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def read_log(proc):
            for line in proc.stderr:
                self.lines.append(line.rstrip("\n"))
                found = LISTENING.search(line)
                if found and not ready.is_set():
                    self.port = int(found.group(1))
                    ready.set()
            ready.set()  # it exited without listening

        self.reader = threading.Thread(target=read_log, args=(self.proc,), daemon=True)
        self.reader.start()
        ready.wait(timeout)
        if self.proc.poll() is not None or self.port is None:
            self.stop()
            raise StartError("the daemon did not start:\n  " + "\n  ".join(self.lines[-15:]))
        with open(os.path.join(self.data_dir, "token")) as f:
            self.token = f.read().strip()
        return self

    def stop(self, timeout=20):
        """SIGTERM; SIGKILL after `timeout` seconds. Returns the exit status (None if never started)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._finish_log()
        return self.proc.returncode if self.proc else None

    def threads(self):
        """The thread ids of the running daemon, its main thread's (the pid) first."""
        tids = sorted(int(t) for t in os.listdir("/proc/%d/task" % self.proc.pid))
        return [self.proc.pid] + [t for t in tids if t != self.proc.pid]

    def kill(self, sig=signal.SIGKILL, timeout=120, thread=None):
        """Send `sig` and wait up to `timeout` seconds for the exit (HangError beyond). Returns its status.
        With `thread` (one of threads()), the signal goes to that thread alone (tgkill), as the kernel
        may hand a signal sent to the process to any of its threads."""
        if thread is None:
            self.proc.send_signal(sig)
        elif ctypes.CDLL(None, use_errno=True).syscall(SYS_TGKILL, self.proc.pid, thread, int(sig)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "tgkill %d %d: %s" % (self.proc.pid, thread, os.strerror(e)))
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = "(gdb is not installed)"
            try:
                stacks = subprocess.run(["gdb", "-batch", "-p", str(self.proc.pid), "-ex", "thread apply all bt"],
                                        capture_output=True, text=True, timeout=60).stdout
            except (OSError, subprocess.TimeoutExpired) as e:
                stacks = "(gdb: %s)" % e
            self.proc.kill()
            self.proc.wait()
            self._finish_log()
            raise HangError("the daemon did not exit within %d s of signal %d\nthreads:\n%s\nlast log lines:\n  %s"
                            % (timeout, sig, stacks[-6000:], "\n  ".join(self.lines[-20:])))
        self._finish_log()
        return code

    def _finish_log(self):
        """The last lines of the log (a sanitizer's report comes at exit)."""
        if self.reader:
            self.reader.join(10)
