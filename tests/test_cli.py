"""run_cli: one error line and exit status 2 for a user's mistake (a UserError), a traceback
for any other exception (a bug), 130 for Ctrl-C; warnings as one line; the flag types; the
command line that repeats a run."""

from __future__ import annotations

import argparse
import warnings

import pytest

from utils.core.cli import command_line, run_cli
from utils.core.errors import UserFileNotFoundError, UserValueError
from utils.training.loop import NonFiniteLossError


def _parser():
    parser = argparse.ArgumentParser(prog="tool.py")
    parser.add_argument("--fail", default="")
    return parser


def _main(args):
    errors = {
        "value": UserValueError("bad --x"),
        "file": UserFileNotFoundError("no such list"),
        "nan": NonFiniteLossError("loss is nan"),
        "plain-value": ValueError("a bug deep inside"),
        "warn": None,
    }
    if args.fail == "interrupt":
        raise KeyboardInterrupt
    if args.fail == "bug":
        raise KeyError("a real bug")
    if args.fail == "warn":
        warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
        return "warned"
    if args.fail:
        raise errors[args.fail]
    return "done"


@pytest.mark.parametrize("kind, message", [("value", "bad --x"), ("file", "no such list"), ("nan", "loss is nan")])
def test_user_errors_end_with_one_line_and_status_2(kind, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(_main, _parser(), ["--fail", kind])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"tool.py: error: {message}\n"


def test_interrupt_and_bugs_and_success(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(_main, _parser(), ["--fail", "interrupt"], interrupted_hint="; run it again")
    assert exit_info.value.code == 130 and capsys.readouterr().err == "tool.py: interrupted; run it again\n"
    with pytest.raises(KeyError):
        run_cli(_main, _parser(), ["--fail", "bug"])
    with pytest.raises(ValueError, match="a bug deep inside"):  # not a UserError: the traceback stays
        run_cli(_main, _parser(), ["--fail", "plain-value"])
    assert run_cli(_main, _parser(), []) == "done"


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("positive_int", "3", 3),
        ("non_negative_int", "0", 0),
        ("positive_float", "1e-4", 1e-4),
        ("fraction", "0.85", 0.85),
    ],
)
def test_flag_types_accept_their_values(kind, text, expected):
    from utils.core import cli

    assert getattr(cli, kind)(text) == expected


@pytest.mark.parametrize(
    ("kind", "text", "accepted"),
    [
        ("positive_int", "0", "an integer >= 1"),
        ("positive_int", "2.5", "an integer >= 1"),
        ("non_negative_int", "-1", "an integer >= 0"),
        ("positive_float", "0", "a number > 0"),
        ("positive_float", "inf", "a number > 0"),
        ("fraction", "1", "a number in [0, 1)"),
        ("fraction", "x", "a number in [0, 1)"),
    ],
)
def test_flag_types_refuse_in_one_parser_line(kind, text, accepted, capsys):
    from utils.core import cli

    parser = argparse.ArgumentParser(prog="tool.py")
    parser.add_argument("--value", type=getattr(cli, kind))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--value", text])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"tool.py: error: argument --value: expected {accepted}, got {text!r}"


def test_a_warning_is_one_line_without_source(capsys):
    assert run_cli(_main, _parser(), ["--fail", "warn"]) == "warned"
    assert capsys.readouterr().err == "tool.py: warning: first line second line\n"


def test_command_line_names_the_flags_that_differ_from_their_defaults():
    parser = argparse.ArgumentParser()
    parser.add_argument("--list", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--flags", default="")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(["--list", "a b.txt", "--epochs", "3", "--flags", "--lr 3e-3", "--quick"])
    assert command_line("python tool.py", args, parser) == "python tool.py --list 'a b.txt' --flags '--lr 3e-3' --quick"
    assert command_line("python tool.py", parser.parse_args(["--list", "x"]), parser) == "python tool.py --list x"
