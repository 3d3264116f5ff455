"""Programmer Pool's aider launcher: runs aider's own main() with three changes.

1. aider's retry loop is switched off (RETRY_TIMEOUT = 0 in aider.models and
   aider.coders.base_coder), so the first LLM error is final after ~4 s instead of ~88 s:
   the programmer's own failover and circuit breaker own retrying.
2. Repository-controlled configuration is not read: no .aider.conf.yml from the cwd, the git
   root or HOME, and no .env files. A repository under edit must not be able to set a test
   command, a /load script, an API base that receives our key, or anything else. Everything
   aider needs comes from the command line that the runner builds.
3. Nothing else: the arguments are aider's, passed through unchanged.

Usage: python aider_launcher.py <aider arguments...>
"""

import sys

import aider.coders.base_coder
import aider.main
import aider.models

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
