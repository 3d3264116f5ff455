"""Programmer Pool's warm aider workers: one zygote per programmer (see services/programmer/warm.rs).

The zygote starts with a neutral environment (no API key, an empty HOME), imports
aider_launcher.py (aider, its patches, the parent-death signal: it dies with the programmer) and
litellm with its local cost map, does once the task-independent work each task would otherwise
repeat before its first LLM request (_prepare_before_fork: the modules aider and litellm import
lazily on that way, tiktoken's encoding among them; aider's bundled model metadata, parsed; the
platform string aider puts in its prompt), then forks WORKERS idle workers and prints "ready".
Each worker is a copy of the warm interpreter (pages shared until written) waiting for one task:

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
import importlib
import json
import os
import platform
import selectors
import signal
import socket
import sys

NEUTRAL_ENV = dict(os.environ)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Dies with the programmer, takes aider's niceness (PAS_AIDER_NICE, the programmer's aider.nice:
# the imports take seconds of a core per programmer when a pool starts, and must not compete with
# the services; the workers inherit it), then imports and patches aider.
import aider_launcher  # noqa: E402
import aider.main  # noqa: E402
import aider.models  # noqa: E402
from aider.llm import litellm  # noqa: E402

litellm._load_litellm()
aider.main.load_slow_imports(swallow=True)

# Modules aider and litellm import lazily on every task's way to its first LLM request (profiled:
# litellm's token counter, which loads tiktoken's cl100k_base encoding; the HTTP transport; the
# provider code litellm runs for ollama, openai and anthropic models, the OpenAI SDK's resources
# among it). A name a future litellm no longer has is skipped: it only costs the worker the import.
PRELOADED_MODULES = (
    "litellm.litellm_core_utils.token_counter",
    "litellm.litellm_core_utils.get_supported_openai_params",
    "litellm.litellm_core_utils.llm_request_utils",
    "litellm.llms.ollama.completion.transformation",
    "litellm.llms.litellm_proxy.chat.transformation",
    "litellm.llms.openai_like.dynamic_config",
    "litellm.llms.openai.chat.gpt_audio_transformation",
    "litellm.llms.vertex_ai.vertex_ai_partner_models.anthropic.transformation",
    "litellm.llms.anthropic.completion",
    "openai.resources",
    "openai.lib.streaming.chat",
    "httpcore",
)
# Response types whose pydantic schemas are built on first use (profiled: ~12 ms per task before
# its first request, litellm's Message the largest), built here instead.
PREBUILT_MODELS = (
    ("litellm.types.utils", "Message"),
    ("litellm.types.utils", "Choices"),
    ("litellm.types.utils", "Usage"),
    ("litellm.types.utils", "ModelResponse"),
    ("litellm.types.utils", "Delta"),
    ("litellm.types.utils", "StreamingChoices"),
    ("litellm.types.utils", "ModelResponseStream"),
    ("openai.types.chat.parsed_chat_completion", "ParsedChatCompletion"),
    ("openai.types.chat.parsed_chat_completion", "ParsedChoice"),
    ("openai.types.chat.parsed_chat_completion", "ParsedChatCompletionMessage"),
)


def _memoize_bundled_model_metadata():
    """aider parses its bundled resources/model-metadata.json on every run with json5's
    pure-Python parser (~0.25 s). Parsed here once: a worker's json5.loads of that exact text
    returns a fresh copy of the same objects (a JSON round trip, checked equal here); any other
    text is parsed by json5 as before."""
    import importlib_resources
    import json5

    text = importlib_resources.files("aider.resources").joinpath("model-metadata.json").read_text()
    parsed = json5.loads(text)
    frozen = json.dumps(parsed)
    if json.loads(frozen) != parsed:
        return

    class _Json5:
        def __getattr__(self, name):
            return getattr(json5, name)

        @staticmethod
        def loads(s, *args, **kwargs):
            if not args and not kwargs and s == text:
                return json.loads(frozen)
            return json5.loads(s, *args, **kwargs)

    aider.models.json5 = _Json5()


def _prepare_before_fork():
    """Task-independent work every worker would otherwise repeat before its first LLM request."""
    for name in PRELOADED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    for module, name in PREBUILT_MODELS:
        try:
            getattr(importlib.import_module(module), name).model_rebuild()
        except Exception:  # noqa: BLE001  (not built here: built on first use, as before)
            pass
    _memoize_bundled_model_metadata()
    # aider writes platform.platform() into every system prompt; the first call on Linux runs
    # `uname -p` in a subprocess. The answer is the machine's, cached by the platform module.
    platform.platform()


_prepare_before_fork()

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
