"""run_cli: one error line and exit status 2 for a user's mistake, 130 for Ctrl-C."""

from __future__ import annotations

import argparse

import pytest

from utils.core.cli import run_cli


def _parser():
    parser = argparse.ArgumentParser(prog="tool.py")
    parser.add_argument("--fail", default="")
    return parser


def _main(args):
    errors = {
        "value": ValueError("bad --x"),
        "file": FileNotFoundError("no such list"),
        "nan": FloatingPointError("loss is nan"),
    }
    if args.fail == "interrupt":
        raise KeyboardInterrupt
    if args.fail == "bug":
        raise KeyError("a real bug")
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
    assert run_cli(_main, _parser(), []) == "done"
