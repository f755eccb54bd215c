"""utils.core.runtime: torch.compile modes, the shared --compile flag, backend settings, autocast."""

from __future__ import annotations

import argparse

import pytest
import torch

from utils.core.runtime import COMPILE_MODES, add_compile_argument, autocast, compile_function, configure_backends


def test_compile_function_passes_the_mode_and_leaves_eager_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda function, mode=None: calls.append(mode) or "compiled")

    def function(x):
        return x

    assert compile_function(function, None) is function
    assert compile_function(function, False) is function
    assert compile_function(function, True) == "compiled"
    assert compile_function(function, "reduce-overhead") == "compiled"
    assert calls == ["default", "reduce-overhead"]
    with pytest.raises(ValueError, match="compile mode must be one of .*'fastest'"):
        compile_function(function, "fastest")


def test_compile_flag_is_off_bare_or_a_mode():
    parser = argparse.ArgumentParser()
    add_compile_argument(parser)
    assert parser.parse_args([]).compile is None
    assert parser.parse_args(["--compile"]).compile == "default"
    for mode in COMPILE_MODES:
        assert parser.parse_args(["--compile", mode]).compile == mode
    with pytest.raises(SystemExit):
        parser.parse_args(["--compile", "fastest"])


def test_configure_backends_switches_cudnn_autotuning(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    configure_backends()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    configure_backends(deterministic=True)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic


def test_autocast_none_is_a_no_op_and_bf16_lowers_matmuls():
    weight = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "none"):
        assert (weight @ weight).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (weight @ weight).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="'amp' must be one of"):
        autocast(torch.device("cpu"), "fp8")
