"""Programmer Pool's warm aider workers: one zygote per programmer (see services/programmer/warm.rs).

The zygote starts with a neutral environment (no API key, an empty HOME), imports
aider_launcher.py (aider, its patches, the parent-death signal: it dies with the programmer) and
litellm with its local cost map, then forks WORKERS idle workers and prints "ready". Each worker
is a copy of the warm interpreter (pages shared until written) waiting for one task:

1. fd 0 is a SOCK_SEQPACKET socket shared with the programmer. An idle worker blocks in recvmsg
   on it; each message (one byte) carries three fds: the task's stdout and stderr pipes and a
   control socket. The kernel hands each message to exactly one worker.
2. The worker takes its own process group (the programmer kills the group on cancel, deadline and
   usage cap), passes the control socket to the zygote (which reports the worker's exit status
   on it once it has reaped it), writes {"pid": N} on the control socket and waits for the task:
   one JSON line {"cwd", "argv", "env"} built by the programmer exactly as for a cold start. A
   control socket closed instead (the programmer gave up waiting) ends the worker unused.
3. The worker enters the worktree, replaces its environment with the task's (plus what aider's
   imports set, as they would have in a cold process), sets stdin to /dev/null and stdout/stderr
   to the pipes, dies with the zygote (PR_SET_PDEATHSIG), takes the task's niceness and memory
   ceiling (aider_launcher.begin_task), resets the state aider derived from HOME at import, and
   runs aider_launcher.run(argv). One task per worker: it exits afterwards, without interpreter
   finalization (aider_launcher.finish).
4. The zygote forks a replacement as soon as a worker takes a task or an idle worker dies. Idle
   workers that keep dying (2 x WORKERS deaths without a task taken) end the zygote (exit 3): the
   programmer restarts it with a backoff and starts tasks cold meanwhile.

Usage: python aider_zygote.py WORKERS   (fd 0: the job socket; stdout: "ready")
"""

import gc
import json
import os
import selectors
import signal
import socket
import sys

NEUTRAL_ENV = dict(os.environ)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aider_launcher  # noqa: E402  (dies with the programmer; imports and patches aider)
import aider.main  # noqa: E402
import aider.models  # noqa: E402
from aider.llm import litellm  # noqa: E402

litellm._load_litellm()
aider.main.load_slow_imports(swallow=True)

# What the imports put in the environment (aider.llm sets OR_SITE_URL, LITELLM_MODE, ...): a cold
# process has these on top of its task's environment, so a warm worker gets them too.
IMPORTED_ENV = {k: v for k, v in os.environ.items() if NEUTRAL_ENV.get(k) != v}

JOBS = socket.socket(fileno=0)
WORKERS = max(1, int(sys.argv[1]))
LINE_MAX = 1 << 24


def _reset_home_state():
    """State aider computed from the zygote's HOME at import, recomputed from the task's HOME."""
    aider.models.model_info_manager.__init__()
    versioncheck = sys.modules.get("aider.versioncheck")
    if versioncheck is not None:
        from pathlib import Path

        versioncheck.VERSION_CHECK_FNAME = Path.home() / ".aider" / "caches" / "versioncheck"


def _worker(zygote):
    """One idle worker: waits for one task and runs it; never returns."""
    aider_launcher._die_with_parent()
    _msg, fds, _flags, _addr = socket.recv_fds(JOBS, 16, 3)
    if len(fds) != 3:
        os._exit(71)
    out, err, ctl_fd = fds
    for fd in fds:
        os.set_inheritable(fd, False)
    os.setpgid(0, 0)
    ctl = socket.socket(fileno=ctl_fd)
    socket.send_fds(zygote, [b"t"], [ctl_fd])
    zygote.close()
    try:
        ctl.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        line = ctl.makefile("rb").readline(LINE_MAX)
    except OSError:
        os._exit(0)
    if not line.endswith(b"\n"):
        os._exit(0)  # the programmer gave up on this worker: nothing ran
    ctl.close()
    task = json.loads(line)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        os.close(fd)
    os.chdir(task["cwd"])
    os.environ.clear()
    os.environ.update(task["env"])
    os.environ.update(IMPORTED_ENV)
    aider_launcher.begin_task()
    _reset_home_state()
    sys.argv = [aider_launcher.__file__] + task["argv"]
    aider_launcher.finish(aider_launcher.run(task["argv"]))


class Zygote:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.idle = {}  # pid -> socket to that idle worker
        self.running = {}  # pid -> control fd of its task
        self.idle_deaths = 0
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)

    def fork_worker(self):
        mine, theirs = socket.socketpair()
        # Everything imported so far leaves the collector's generations: a worker's collections
        # then never touch (and so never copy) the pages it shares with the zygote.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.sel.close()
            for sock in self.idle.values():
                sock.close()
            for fd in self.running.values():
                os.close(fd)
            mine.close()
            _worker(theirs)
        theirs.close()
        self.idle[pid] = mine
        self.sel.register(mine, selectors.EVENT_READ, pid)

    def took_task(self, pid):
        """Worker `pid` said it took a task (or died idle): keep its control fd, refill."""
        sock = self.idle.pop(pid)
        self.sel.unregister(sock)
        sock.setblocking(False)
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
        except OSError:
            fds = []
        sock.close()
        if fds:
            self.running[pid] = fds[0]
            self.idle_deaths = 0
        else:
            self.idle_deaths += 1
            if self.idle_deaths > 2 * WORKERS:
                sys.stderr.write("pas zygote: idle workers keep dying\n")
                sys.exit(3)
        self.fork_worker()

    def report(self, pid, status):
        ctl = self.running.pop(pid, None)
        if ctl is None:
            return
        if os.WIFSIGNALED(status):
            line = {"signal": os.WTERMSIG(status)}
        else:
            line = {"code": os.waitstatus_to_exitcode(status)}
        try:
            os.write(ctl, json.dumps(line).encode() + b"\n")
        except OSError:
            pass
        os.close(ctl)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.idle:
                self.took_task(pid)  # a task it took before dying still gets its status
            self.report(pid, status)

    def serve(self):
        for _ in range(WORKERS):
            self.fork_worker()
        print("ready", flush=True)
        while True:
            for key, _events in self.sel.select():
                if key.data is None:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif key.data in self.idle:
                    self.took_task(key.data)


if __name__ == "__main__":
    Zygote().serve()
