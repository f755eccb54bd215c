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

__all__ = [
    "REPO_ROOT",
    "USER_ERRORS",
    "HelpFormatter",
    "fraction",
    "non_negative_int",
    "one_line_warnings",
    "positive_float",
    "positive_int",
    "run_cli",
]

# The project root: the commands' default dataset, datalist and snapshot folders are under it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Mistakes a user can fix: the project's UserError and its kinds (a bad value or type, a
# missing or unreadable file, a loss that became NaN, ...). Any other exception is a bug and
# keeps its traceback.
USER_ERRORS = (UserError,)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, unless it is None or empty (those say theirs in brackets)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, "") or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action)


def _number(text: str, kind: type, accepted: str, check: Callable[[float], bool]):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
    if not check(value):
        raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=`` for a count of at least 1 (batch size, epochs, images, ...)."""
    return _number(text, int, "an integer >= 1", lambda value: value >= 1)


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for an integer of at least 0 (workers, steps, an epoch index, ...)."""
    return _number(text, int, "an integer >= 0", lambda value: value >= 0)


def positive_float(text: str) -> float:
    """argparse ``type=`` for a finite number above 0 (a learning rate, a scale, ...)."""
    return _number(text, float, "a number > 0", lambda value: 0 < value < float("inf"))


def fraction(text: str) -> float:
    """argparse ``type=`` for a number in [0, 1) (a share of pixels dropped, ...)."""
    return _number(text, float, "a number in [0, 1)", lambda value: 0 <= value < 1)


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
