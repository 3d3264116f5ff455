"""Programmer Pool's aider launcher: runs aider's own main() with these changes.

1. aider's retry loop is switched off (RETRY_TIMEOUT = 0 in aider.models and
   aider.coders.base_coder), so the first LLM error is final after ~4 s instead of ~88 s:
   the programmer's own failover and circuit breaker own retrying.
2. Repository-controlled configuration is not read: no .aider.conf.yml from the cwd, the git
   root or HOME, no .env files, and no .aider.model.settings.yml / .aider.model.metadata.json
   but the ones the command line names (a repository's `aider/extra_params` would set the
   api_base that receives our key). A repository under edit must not be able to set a test
   command, a /load script, an API base that receives our key, or anything else. Everything
   aider needs comes from the command line that the runner builds.
3. aider dies with the programmer: PR_SET_PDEATHSIG makes the kernel SIGKILL this process when
   the programmer that started it dies (even by kill -9), so a crashed programmer leaves no
   orphan aider editing a worktree nobody owns any more.
4. The task text is data, never a command. aider treats a message starting with "!" or "/" as
   one of its own commands ("!cmd" and /run are a shell, /load runs a file of commands, /add
   and /read-only read any file, /web fetches a URL, /git and /test run programs). The caller
   writes the task, so Commands.is_command is always false and Commands.run refuses: whatever
   the message holds goes to the LLM as the user message.
5. Names mentioned in the text are not added to the chat (check_for_file_mentions does
   nothing), for the user message and for the LLM's reply alike: the files of a task are the
   ones the programmer vetted, and a committed symlink with a mentioned name could point
   outside the worktree.
6. Shell commands the LLM suggests never run (run_shell_commands / handle_shell_commands do
   nothing), whatever --suggest-shell-commands says: the LLM follows the caller's text.
7. URLs in the text are never fetched (check_for_urls passes the text through), whatever
   --detect-urls says: a fetch would reach any address the caller names.
8. aider refuses to edit or create a path that resolves (realpath, symlinks followed) outside
   the worktree root (allowed_to_edit), and no file outside it is ever written (write_text):
   the LLM names the paths of its edits, and the caller steers the LLM. Nor one named `.git`
   (any case, at any depth; before and after symlinks are resolved) or starting with `.aider`:
   an edit of the worktree's `.git` file would point git at a directory the LLM wrote, whose
   config runs commands (a filter) at the next `git add`; an `.aider*` file would configure the
   next aider run in a repository that kept it (see 2).
9. Nothing else: the arguments are aider's, passed through unchanged.
10. aider is a worker, not a peer of the services: it runs at niceness PAS_AIDER_NICE (the
   config's aider.nice) under a memory ceiling of PAS_AIDER_MAX_MEMORY_MIB MiB (aider.memory_limit_mb;
   RLIMIT_DATA, which needs no privileges and covers the heap and anonymous mappings). An aider
   that needs more gets MemoryError — uncaught, on any thread, or caught by aider and reported
   through its tool_error — and the launcher then prints one line naming the ceiling and exits
   75, which fails this task alone (ERROR_CLASS_RESOURCE_LIMIT). A process that already holds
   more than the ceiling when it takes its task (a warm worker carries the zygote's imports) ends
   the same way at once, before a native library can abort on a failed allocation.
11. PAS_AIDER_MAX_REFLECTIONS (defaults.max_fix_iterations) is aider's reflection limit: how many
   times one run sends a failed edit back to the model for a fix (Coder.max_reflections), read
   when the task runs.
12. The model info our --model-metadata-file gives (context limit, costs) wins over litellm's own
   lookup, cold and warm alike.

13. Warm start (aider_zygote.py): the same module is imported once by a programmer's zygote with a
   neutral environment, and each forked worker calls begin_task() once it stands in its task's
   worktree with its task's environment, then run() with the task's arguments: the patches above
   are the ones the cold path applies, made once before the fork.

Usage: python aider_launcher.py <aider arguments...>   (run with the worktree as cwd)
"""

import ctypes
import os
import resource
import signal
import sys
import threading
from pathlib import Path

PR_SET_PDEATHSIG = 1
MEMORY_EXIT = 75


def _die_with_parent():
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the programmer's process-group kill still covers normal exits
    if os.getppid() != parent:  # the programmer died before prctl took effect
        os._exit(137)


_die_with_parent()


def _data_in_use():
    """Bytes this process already holds of what RLIMIT_DATA counts (VmData); 0 if unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _take_niceness(target):
    """Runs at niceness `target`, absolute, not added to what the process has: a warm worker
    inherits its zygote's niceness, which is already the programmer's aider.nice. Only raised:
    lowering it needs a privilege the services should not count on."""
    current = os.nice(0)
    if target > current:
        os.nice(target - current)


def _limit_resources():
    """Takes the task's niceness and memory ceiling. A process that already holds more than the
    ceiling (a warm worker inherits the zygote's imported aider) ends at once with the
    out-of-memory line: under the ceiling it could not allocate anything, and a native library
    failing an allocation aborts instead of raising MemoryError."""
    _take_niceness(int(os.environ.get("PAS_AIDER_NICE", "0") or 0))
    mib = int(os.environ.get("PAS_AIDER_MAX_MEMORY_MIB", "0") or 0)
    if mib > 0:
        ceiling = mib * 1024 * 1024
        in_use = _data_in_use()
        if in_use >= ceiling:
            _out_of_memory(mib, f" (it holds {in_use // (1024 * 1024)} MiB before it starts)")
        resource.setrlimit(resource.RLIMIT_DATA, (ceiling, ceiling))
    return mib


def _out_of_memory(ceiling_mib=None, detail=""):
    # Whatever was allocated is dropped with the frame that raised; this line needs little.
    mib = MEMORY_CEILING_MIB if ceiling_mib is None else ceiling_mib
    sys.stderr.write(
        f"pas: aider ran out of memory under its ceiling of {mib} MiB "
        f"(aider.memory_limit_mb){detail}\n"
    )
    sys.stderr.flush()
    os._exit(MEMORY_EXIT)


# The task's worktree (nothing outside it is ever written) and memory ceiling: see begin_task().
WORKTREE = None
MEMORY_CEILING_MIB = 0


def begin_task():
    """Takes this process's task settings from its cwd (the worktree) and environment.

    Cold: at start, before the slow imports. Warm: in the forked worker, after it entered the
    worktree and took the task's environment, before aider's main().
    """
    global WORKTREE, MEMORY_CEILING_MIB
    WORKTREE = os.path.realpath(os.getcwd())
    MEMORY_CEILING_MIB = _limit_resources()


begin_task()


def _memory_error_hook(kind, value, traceback):
    if issubclass(kind, MemoryError):
        _out_of_memory()
    sys.__excepthook__(kind, value, traceback)


# A MemoryError nobody catches, on any thread, ends the run with the launcher's line.
sys.excepthook = _memory_error_hook

try:
    import aider.coders  # noqa: E402  (after the parent-death guard, before the slow imports)
    import aider.coders.base_coder  # noqa: E402
    import aider.commands  # noqa: E402
    import aider.io  # noqa: E402
    import aider.main  # noqa: E402
    import aider.models  # noqa: E402
except MemoryError:
    _out_of_memory()

aider.models.RETRY_TIMEOUT = 0
aider.coders.base_coder.RETRY_TIMEOUT = 0


def _apply_reflection_limit():
    """11. defaults.max_fix_iterations: how many times aider sends a failed edit back to the model
    for a fix (its reflection limit), on Coder and so every coder class. Read when the task runs,
    not at import: a warm worker imported this module before it had the task's environment."""
    limit = os.environ.get("PAS_AIDER_MAX_REFLECTIONS", "")
    if limit.isdigit():
        aider.coders.base_coder.Coder.max_reflections = int(limit)

# 12. Our --model-metadata-file (the configuration's context limit and costs per model) decides a
# model's info. Cold, aider reads it first because litellm is not loaded yet when it asks; in a warm
# worker litellm was preloaded, and aider then prefers litellm's own lookup (for ollama/* a query
# to the server), which would silently drop a programmer's context_limit.
_original_get_model_info = aider.models.ModelInfoManager.get_model_info


def _configured_model_info_first(self, model):
    configured = self.local_model_metadata.get(model)
    if configured:
        return configured
    return _original_get_model_info(self, model)


aider.models.ModelInfoManager.get_model_info = _configured_model_info_first

_original_get_parser = aider.main.get_parser


def _get_parser_without_default_config_files(default_config_files, git_root):
    return _original_get_parser([], git_root)


def _no_dotenv_files(*_args, **_kwargs):
    return []


def _only_the_command_line_file(default_file, git_root, command_line_file):
    """aider looks for its model settings and metadata files in HOME, the git root and the cwd
    (the worktree: the repository's own files) besides the one the command line names; only that
    one is read."""
    if not command_line_file:
        return []
    return [str(Path(command_line_file).resolve())]


aider.main.get_parser = _get_parser_without_default_config_files
aider.main.load_dotenv_files = _no_dotenv_files
aider.main.generate_search_path_list = _only_the_command_line_file


def inside(root, path):
    """True when `path` (symlinks resolved) is `root` itself or lies below it."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def forbidden_name(root, path):
    """The component of `path` below `root` (as named, and with symlinks resolved) that no edit
    may touch: `.git` in any case, or one starting with `.aider`; None when there is none."""
    named = os.path.normpath(os.path.join(root, path))
    pairs = ((os.path.normpath(root), named), (os.path.realpath(root), os.path.realpath(named)))
    for base, candidate in pairs:
        if not candidate.startswith(base.rstrip(os.sep) + os.sep):
            continue
        for part in os.path.relpath(candidate, base).split(os.sep):
            if part.lower() == ".git" or part.lower().startswith(".aider"):
                return part
    return None


def why_refused(root, path):
    """Why no edit may write `path` (relative to `root`, or absolute): it resolves outside the
    worktree, or it names what no edit may touch (see forbidden_name); None when it may."""
    real_root = os.path.realpath(root)
    if not inside(real_root, os.path.join(root, path)) or not inside(WORKTREE, real_root):
        return "it resolves outside the worktree"
    name = forbidden_name(root, path)
    return None if name is None else f"no edit may touch {name}"


# 4. No user text is ever a command.
def _never_a_command(self, inp):
    return False


def _refuse_command(self, inp):
    self.io.tool_error("Refused: task text is never run as an aider command.")


aider.commands.Commands.is_command = _never_a_command
aider.commands.Commands.run = _refuse_command


# 5-8. Methods replaced on Coder and on every coder class that overrides them.
def _no_file_mentions(_original):
    def check_for_file_mentions(self, content):
        return None

    return check_for_file_mentions


def _no_shell_commands(_original):
    def run_no_shell_commands(self, *args, **kwargs):
        return ""

    return run_no_shell_commands


def _no_url_fetches(_original):
    def check_for_urls(self, inp):
        return inp

    return check_for_urls


def _confined_to_worktree(original):
    def allowed_to_edit(self, path, *args, **kwargs):
        why = why_refused(self.root, path)
        if why is not None:
            self.io.tool_error(f"Refused to edit {path}: {why}.")
            return None
        return original(self, path, *args, **kwargs)

    return allowed_to_edit


def _moves_confined_to_worktree(original):
    """A patch's move target is vetted like an edited path before anything of the edit runs
    (aider vets only the source, and creates the target's directories before it writes)."""

    def apply_edits(self, edits, *args, **kwargs):
        for edit in edits or []:
            action = edit[1] if isinstance(edit, (tuple, list)) and len(edit) > 1 else None
            target = getattr(action, "move_path", None)
            why = why_refused(self.root, target) if target else None
            if why is not None:
                raise ValueError(f"Refused to move {edit[0]} to {target}: {why}.")
        return original(self, edits, *args, **kwargs)

    return apply_edits


_REPLACED = {
    "apply_edits": _moves_confined_to_worktree,
    "check_for_file_mentions": _no_file_mentions,
    "run_shell_commands": _no_shell_commands,
    "handle_shell_commands": _no_shell_commands,
    "check_for_urls": _no_url_fetches,
    "allowed_to_edit": _confined_to_worktree,
}


def _coder_classes(cls):
    yield cls
    for sub in cls.__subclasses__():
        yield from _coder_classes(sub)


for _cls in set(_coder_classes(aider.coders.base_coder.Coder)):
    for _name, _replace in _REPLACED.items():
        if _name in vars(_cls):
            setattr(_cls, _name, _replace(vars(_cls)[_name]))

_original_write_text = aider.io.InputOutput.write_text


def _write_text_inside_worktree(self, filename, content, *args, **kwargs):
    # Raised, not returned: what the edit would do next (a patch's move deletes its source once
    # the target is written) must not run, and aider reports the refusal to the model.
    why = why_refused(WORKTREE, filename)
    if why is not None:
        message = f"Refused to write {filename}: {why}."
        self.tool_error(message)
        raise ValueError(message)
    return _original_write_text(self, filename, content, *args, **kwargs)


aider.io.InputOutput.write_text = _write_text_inside_worktree

# 10. aider reports the errors it catches through tool_error, inside the except block that caught
# them (str(MemoryError()) is empty, so its message says nothing): a MemoryError being handled
# there ends the run with the launcher's line instead.
_original_tool_error = aider.io.InputOutput.tool_error


def _tool_error_noticing_memory(self, *args, **kwargs):
    if isinstance(sys.exc_info()[1], MemoryError):
        _out_of_memory()
    return _original_tool_error(self, *args, **kwargs)


aider.io.InputOutput.tool_error = _tool_error_noticing_memory


def _thread_memory_error_hook(hook_args):
    if issubclass(hook_args.exc_type, MemoryError):
        _out_of_memory()
    threading.__excepthook__(hook_args)


threading.excepthook = _thread_memory_error_hook


def run(argv):
    """aider's main() on `argv`; its exit code."""
    _apply_reflection_limit()
    try:
        return aider.main.main(argv)
    except MemoryError:
        _out_of_memory()
    except SystemExit as e:
        return e.code


def finish(code):
    """Ends this process with aider's exit status, without interpreter finalization: aider has
    written everything by now (its output, the analytics log, git), and tearing down the module
    graph of aider and litellm only costs CPU and delays the programmer (a failover waits for it).
    """
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    finish(run(sys.argv[1:]))
