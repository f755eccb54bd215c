"""Running a script's ``main``: a user's mistake ends it with one ``error:`` line, and
warnings print as one ``warning:`` line each, above any progress bar."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from utils.core.errors import UserError

__all__ = ["REPO_ROOT", "USER_ERRORS", "HelpFormatter", "one_line_warnings", "run_cli"]

# The project root: the commands' default dataset, datalist and snapshot folders are under it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Mistakes a user can fix: the project's UserError, and the bad values, types and missing
# files that argument checking and the standard library report, a loss that became NaN
# (FloatingPointError), an output that cannot be written (PermissionError).
USER_ERRORS = (UserError, ValueError, TypeError, FileNotFoundError, PermissionError, FloatingPointError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, unless it is None or empty (those say theirs in brackets)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, "") or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action)


def _write_above_progress(text: str) -> None:
    """Print ``text`` to stderr without breaking a tqdm progress bar that is on screen."""
    try:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(text, file=sys.stderr)


@contextlib.contextmanager
def one_line_warnings(prog: str) -> Iterator[None]:
    """Within the block, each warning prints as ``<prog>: warning: <message>`` on one
    line (no source line, no file path), through tqdm so a progress bar stays intact."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        _write_above_progress(f"{prog}: warning: {text}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def run_cli(
    main: Callable[[argparse.Namespace], Any],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    interrupted_hint: str = "",
) -> Any:
    """Parse ``argv`` (default: ``sys.argv``) and return ``main(args)``.

    An error of :data:`USER_ERRORS` prints ``<prog>: error: <message>`` on one line and exits
    with status 2 (as argparse does for bad flags); Ctrl-C prints ``<prog>: interrupted`` plus
    ``interrupted_hint`` and exits with 130. Other exceptions propagate with their traceback.
    Warnings print as one line each (:func:`one_line_warnings`).
    """
    args = parser.parse_args(argv)
    try:
        with one_line_warnings(parser.prog):
            return main(args)
    except USER_ERRORS as error:
        message = " ".join(str(error).split())
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted{interrupted_hint}", file=sys.stderr)
        raise SystemExit(130) from None
