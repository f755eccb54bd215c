"""Running a script's ``main``: a user's mistake ends it with one ``error:`` line, and
warnings print as one ``warning:`` line each, above any progress bar."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from utils.core.errors import UserError
from utils.core.runtime import AMP_CHOICES

__all__ = [
    "REPO_ROOT",
    "USER_ERRORS",
    "DEFAULT_WORKERS",
    "HelpFormatter",
    "add_datalist_arguments",
    "add_decode_argument",
    "add_device_arguments",
    "add_image_size_arguments",
    "add_precision_arguments",
    "add_subset_arguments",
    "command_line",
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


# DataLoader workers by default: one per core, at most 8.
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def add_image_size_arguments(
    group: argparse._ActionsContainer, crop: str = "CenterCrop", from_model: str | None = None
) -> None:
    """``--input_size`` (Resize of the smaller edge, 256) and ``--crop_size`` (``crop``, 224).

    ``from_model``: whose sizes the flags not given take, for the help (e.g. ``"the
    checkpoint's"``); their default is then None, resolved by the command (see
    :func:`models.generic.resolve_image_sizes`)."""

    def flag(name: str, size: int, text: str) -> None:
        if from_model is None:
            group.add_argument(name, type=positive_int, default=size, help=text)
        else:
            group.add_argument(name, type=positive_int, default=None, help=f"{text} [{from_model}; else {size}]")

    flag("--input_size", 256, "Resize of the smaller image edge")
    flag("--crop_size", 224, crop)


def add_datalist_arguments(group: argparse._ActionsContainer) -> None:
    """``--test_list`` (required: a datalist or a folder of class folders) and ``--img_dir``."""
    group.add_argument(
        "--test_list", required=True, help="datalist ('<path> <label>' lines) or a folder of class folders"
    )
    group.add_argument("--img_dir", default="", help="directory the datalist's paths are relative to")


def add_subset_arguments(group: argparse._ActionsContainer) -> None:
    """``--limit N`` (the first N images of the list) and ``--skip_missing``."""
    group.add_argument("--limit", type=positive_int, default=None, help="use only the first N images of the list")
    group.add_argument(
        "--skip_missing",
        action="store_true",
        help="go on without the listed images that do not exist (one warning naming file:line); by default they "
        "stop the run before any work",
    )


def add_box_arguments(group: argparse._ActionsContainer) -> None:
    """``--boxes`` (localisation against ground-truth boxes) and ``--pointing_tolerance``."""
    group.add_argument(
        "--boxes",
        default=None,
        help="also localisation (pointing game, energy in boxes, MaxBoxAccV2) against these boxes: ImageNet's "
        "LOC_val_solution.csv, a folder of its XML annotations, or a CSV image,x0,y0,x1,y1 [none]",
    )
    group.add_argument(
        "--pointing_tolerance",
        type=non_negative_int,
        default=0,
        help="pixels around each box where the pointing game's point still hits: 0 is the tight box; the usual "
        "tolerance is 15 at 224 px (Zhang et al., 2016)",
    )


def add_device_arguments(
    group: argparse._ActionsContainer,
    batch_size: int,
    batch_help: str = "images per batch",
    num_workers: int | None = DEFAULT_WORKERS,
    workers_help: str = "DataLoader worker processes",
) -> None:
    """``--batch_size``, ``--num_workers`` and ``--device`` (auto: CUDA when available)."""
    group.add_argument("--batch_size", type=positive_int, default=batch_size, help=batch_help)
    group.add_argument("--num_workers", type=non_negative_int, default=num_workers, help=workers_help)
    group.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")


def add_decode_argument(group: argparse._ActionsContainer) -> None:
    """``--decode pil|device``: where the images are decoded, resized and cropped."""
    group.add_argument(
        "--decode",
        choices=("pil", "device"),
        default="pil",
        help="'pil': decode, resize and crop with PIL in the DataLoader workers (the reference's numbers); "
        "'device': the workers only read the files, JPEGs are decoded (nvJPEG on CUDA), resized and cropped on "
        "--device (faster, not bit-identical)",
    )


def add_precision_arguments(group: argparse._ActionsContainer, amp_help: str = "autocast the forward passes") -> None:
    """``--amp none|bf16|fp16`` and ``--channels_last``."""
    group.add_argument("--amp", default="none", choices=AMP_CHOICES, help=amp_help)
    group.add_argument("--channels_last", action="store_true", help="channels_last memory format (faster on GPUs)")


def command_line(program: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """``program`` and the flags of ``args`` whose value differs from ``parser``'s default (a
    flag set to True written alone): the command that repeats a run, however ``main`` was
    called (from a shell, a test or another script)."""
    flags = [
        f"--{key}" if value is True else f"--{key} {shlex.quote(str(value))}"
        for key, value in vars(args).items()
        if value != parser.get_default(key)
    ]
    return " ".join([program, *flags])


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
