"""Programmer Pool's aider launcher: runs aider's own main() with three changes.

1. aider's retry loop is switched off (RETRY_TIMEOUT = 0 in aider.models and
   aider.coders.base_coder), so the first LLM error is final after ~4 s instead of ~88 s:
   the programmer's own failover and circuit breaker own retrying.
2. Repository-controlled configuration is not read: no .aider.conf.yml from the cwd, the git
   root or HOME, and no .env files. A repository under edit must not be able to set a test
   command, a /load script, an API base that receives our key, or anything else. Everything
   aider needs comes from the command line that the runner builds.
3. aider dies with the programmer: PR_SET_PDEATHSIG makes the kernel SIGKILL this process when
   the programmer that started it dies (even by kill -9), so a crashed programmer leaves no
   orphan aider editing a worktree nobody owns any more.
4. Nothing else: the arguments are aider's, passed through unchanged.

Usage: python aider_launcher.py <aider arguments...>
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


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

import aider.coders.base_coder  # noqa: E402  (after the parent-death guard, before the slow imports)
import aider.main  # noqa: E402
import aider.models  # noqa: E402

aider.models.RETRY_TIMEOUT = 0
aider.coders.base_coder.RETRY_TIMEOUT = 0

_original_get_parser = aider.main.get_parser


def _get_parser_without_default_config_files(default_config_files, git_root):
    return _original_get_parser([], git_root)


def _no_dotenv_files(*_args, **_kwargs):
    return []


aider.main.get_parser = _get_parser_without_default_config_files
aider.main.load_dotenv_files = _no_dotenv_files

if __name__ == "__main__":
    sys.exit(aider.main.main(sys.argv[1:]))
