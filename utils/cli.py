"""Running a script's ``main``: a user's mistake ends it with one ``error:`` line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["USER_ERRORS", "run_cli"]

# Bad values and types, missing files, a loss that became NaN (FloatingPointError).
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError)


def run_cli(
    main: Callable[[argparse.Namespace], Any],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    interrupted_hint: str = "",
) -> Any:
    """Parse ``argv`` (default: ``sys.argv``) and return ``main(args)``.

    An error of :data:`USER_ERRORS` prints ``<prog>: error: <message>`` and exits with
    status 2 (as argparse does for bad flags); Ctrl-C prints ``<prog>: interrupted`` plus
    ``interrupted_hint`` and exits with 130. Other exceptions propagate with their traceback.
    """
    args = parser.parse_args(argv)
    try:
        return main(args)
    except USER_ERRORS as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted{interrupted_hint}", file=sys.stderr)
        raise SystemExit(130) from None
