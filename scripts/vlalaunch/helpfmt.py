"""`--help` for draccus configs whose field comments hold a bare `%`.

draccus turns a config's comments into argparse help strings and argparse %-formats them: upstream
finetune.py's "(from 10% to 100%)" makes `--help` crash ("unsupported format character 't'")
instead of listing the flags, and the launcher reads a script's flags from its `--help`.
"""

from __future__ import annotations

import argparse

_installed = False


def tolerate_percent_in_help() -> None:
    """Print a help string that argparse cannot %-format as written (idempotent)."""
    global _installed
    if _installed:
        return
    real = argparse.HelpFormatter._expand_help

    def expand_help(self: argparse.HelpFormatter, action: argparse.Action) -> str:
        try:
            return real(self, action)
        except (ValueError, TypeError, KeyError):
            return self._get_help_string(action) or ""

    argparse.HelpFormatter._expand_help = expand_help  # type: ignore[method-assign]
    _installed = True
