"""Checkpoints: the reference's full-model snapshots and the project's head checkpoints,
atomic saving, and RNG state as plain data.

Reference snapshot (``imagenet_epoch_{E}_glo_step_{S}.pth.tar``)::

    {"epoch", "arch", "global_counter", "state_dict": <whole model>, "optimizer"}

Project checkpoint (``lcam_epoch_{E}_glo_step_{S}.pth.tar`` at the end of epoch E, and
``lcam_epoch_{E}_glo_step_{S}_mid.pth.tar`` part-way through it), loadable with
``torch.load(weights_only=True)``::

    {"format": "lcam", "version": 1, "contents": "head" | "full", "arch", "num_classes",
     "backbone_weights", "settings", "epoch", "global_counter",
     "state_dict": <AM parameters and all buffers, or the whole model>,
     "optimizer"?, "rng"?, "args"?, ...}
"""

from __future__ import annotations

import os
import pickle
import pickletools
import random
import re
import warnings
import zipfile
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.core.errors import UserFileNotFoundError, UserValueError, abbreviate, state_dict_mismatch
from utils.core.files import atomic_open

__all__ = [
    "FORMAT",
    "CheckpointReadError",
    "checkpoint_name",
    "find_newest_checkpoint",
    "get_rng_state",
    "is_mid_epoch_name",
    "list_checkpoints",
    "load_checkpoint",
    "make_checkpoint",
    "read_torch_file",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "lcam"
VERSION = 1
SUFFIX = ".pth.tar"
MID_EPOCH_TAG = "_mid"
_NAME_PATTERN = re.compile(r"_epoch_(\d+)_glo_step_(\d+)(_mid)?\.pth\.tar$")


class CheckpointReadError(UserValueError):
    """A file that cannot be read as a checkpoint at all: empty, truncated, text, foreign
    (pickled objects that are not loaded for safety) or of no known layout. ``reason`` is
    the message without the path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def checkpoint_name(epoch: int, global_counter: int, reference: bool = False, mid_epoch: bool = False) -> str:
    """``lcam_epoch_{E}_glo_step_{S}.pth.tar`` (end of epoch E), ``..._mid.pth.tar`` (part-way
    through epoch E, ``mid_epoch``), or the reference's ``imagenet_...`` name."""
    if reference and mid_epoch:
        raise UserValueError("the reference's snapshots are written at the end of an epoch only")
    prefix = "imagenet" if reference else FORMAT
    tag = MID_EPOCH_TAG if mid_epoch else ""
    return f"{prefix}_epoch_{epoch}_glo_step_{global_counter}{tag}{SUFFIX}"


def is_mid_epoch_name(path: str | os.PathLike) -> bool:
    """Whether a file name is that of a mid-epoch checkpoint (``..._mid.pth.tar``)."""
    match = _NAME_PATTERN.search(os.path.basename(os.fspath(path)))
    return bool(match and match.group(3))


def list_checkpoints(directory: str | os.PathLike, mid_epoch: bool = True) -> list[str]:
    """The ``.pth.tar`` files of ``directory``, newest first (without the mid-epoch ones
    unless ``mid_epoch``).

    Newest = highest global step in the name (``..._glo_step_{S}[_mid].pth.tar``), then an
    end-of-epoch file before a mid-epoch one, then the project's file before a reference
    one of the same step, then modification time.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise UserFileNotFoundError(f"checkpoint directory not found: {directory!r}")
    candidates = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not name.endswith(SUFFIX) or not os.path.isfile(path):
            continue
        match = _NAME_PATTERN.search(name)
        step = int(match.group(2)) if match else -1
        end_of_epoch = not (match and match.group(3))
        if not (end_of_epoch or mid_epoch):
            continue
        key = (step, end_of_epoch, name.startswith(FORMAT + "_"), os.path.getmtime(path), name)
        candidates.append((key, path))
    return [path for _, path in sorted(candidates, reverse=True)]


def find_newest_checkpoint(directory: str | os.PathLike, mid_epoch: bool = False) -> str | None:
    """The newest ``.pth.tar`` in ``directory`` (see :func:`list_checkpoints`), or None
    when it holds none.

    Mid-epoch checkpoints (``..._mid.pth.tar``) count only with ``mid_epoch=True`` (resuming
    training), or when the directory holds nothing else: evaluating a folder takes its
    newest finished epoch.
    """
    newest = list_checkpoints(directory, mid_epoch) or list_checkpoints(directory, mid_epoch=True)
    return newest[0] if newest else None


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> str:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file, then a rename), so an
    interrupted write never leaves a truncated checkpoint. Returns the path."""
    with atomic_open(path, "wb") as handle:
        torch.save(checkpoint, handle)
    return os.fspath(path)


def make_checkpoint(
    model: nn.Module, epoch: int, global_counter: int, full: bool = False, **extra: Any
) -> dict[str, Any]:
    """The project's checkpoint of an :class:`models.lcam.LCAM` model: its trainable
    state (``full=False``) or whole state_dict, its identity, and ``extra`` plain data
    (``optimizer``, ``rng``, ``args``, ...)."""
    model = _unwrap(model)
    state_dict = model.state_dict() if full else model.trainable_state_dict()
    return {
        "format": FORMAT,
        "version": VERSION,
        "contents": "full" if full else "head",
        "arch": model.arch,
        "num_classes": model.num_classes,
        "backbone_weights": getattr(model, "backbone_weights", "unknown"),
        "settings": model.build_settings(),
        "epoch": int(epoch),
        "global_counter": int(global_counter),
        "state_dict": {key: value.detach().cpu() for key, value in state_dict.items()},
        **extra,
    }


def load_checkpoint(
    path_or_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer`` when given and the file has one of the same
    shape) from a checkpoint file, or from the newest ``.pth.tar`` of a directory.

    Accepts the authors' snapshots (a whole-model ``state_dict``, with or without a
    DataParallel ``module.`` prefix), a bare state_dict, and the project's own files.

    Returns:
        The checkpoint's metadata: every entry but ``state_dict`` and ``optimizer``, plus
        ``"path"`` (the file read).

    Raises:
        FileNotFoundError: no such file, or a directory without checkpoints.
        CheckpointReadError: an empty, truncated, text or foreign file, or one without a
            state_dict (one line saying which; foreign pickles are never unpickled).
        UserValueError: the checkpoint is of another architecture (the message names the
            missing and unexpected keys or the mismatching shapes).
    """
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        newest = find_newest_checkpoint(path)
        if newest is None:
            raise UserFileNotFoundError(f"no {SUFFIX} checkpoint in directory {path!r}")
        path = newest
    elif not os.path.isfile(path):
        raise UserFileNotFoundError(f"checkpoint not found: {path!r}")
    checkpoint = read_torch_file(path, map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(path, f"not a checkpoint (it holds a {type(checkpoint).__name__}, not a dict)")
    target = _unwrap(model)
    if checkpoint.get("format") == FORMAT:
        expected_arch = getattr(target, "arch", None)
        if checkpoint.get("arch") != expected_arch:
            raise UserValueError(
                f"{path}: checkpoint of arch {checkpoint.get('arch')!r}, but the model is {expected_arch!r}"
            )
        if checkpoint.get("backbone_weights") not in (None, "unknown", getattr(target, "backbone_weights", None)):
            warnings.warn(
                f"{path}: trained on backbone weights {checkpoint['backbone_weights']!r}, "
                f"the model has {getattr(target, 'backbone_weights', 'unknown')!r}",
                stacklevel=2,
            )
        state_dict = checkpoint["state_dict"]
        partial = checkpoint.get("contents") == "head"
    else:
        state_dict = checkpoint.get("state_dict", checkpoint)
        partial = False
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(value) for value in state_dict.values()):
        keys = abbreviate(sorted(map(str, checkpoint)))
        raise CheckpointReadError(path, f"not a checkpoint: no state_dict of tensors in it (keys {keys})")
    state_dict = _strip_prefix(state_dict, "module.")
    _check_fits(path, target, state_dict, partial)
    target.load_state_dict(state_dict, strict=not partial)
    if optimizer is not None and isinstance(checkpoint.get("optimizer"), dict):
        _load_optimizer(path, optimizer, checkpoint["optimizer"])
    metadata = {key: value for key, value in checkpoint.items() if key not in ("state_dict", "optimizer")}
    metadata["path"] = path
    metadata["has_optimizer"] = isinstance(checkpoint.get("optimizer"), dict)
    return metadata


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, with a one-line diagnosis when that fails.

    Only tensors and plain data are unpickled: a file holding other Python objects (a
    pickled model, NumPy arrays, a plain pickle) is refused, never loaded another way.
    ``mmap=True`` memory-maps the tensors (cheap for a big file of which little is used);
    a file in the format before PyTorch 1.6, which cannot be memory-mapped, is read whole.

    Raises:
        CheckpointReadError: saying whether the file is empty, truncated, text, a foreign
            pickle or an archive that is not PyTorch's.
    """
    path = os.fspath(path)
    with warnings.catch_warnings():  # torch's note on plain pickles' protocol is not the user's business
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        if mmap:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except Exception:  # not a zip archive, or not readable at all: the plain load below says which
                pass
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:
            raise CheckpointReadError(path, _unreadable_reason(path, error)) from None


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = b"\x80"
# torch.save's format before PyTorch 1.6: a pickled magic number, the protocol version, system
# information and the object, then the raw tensor data.
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
_FOREIGN_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _unreadable_reason(path: str, error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed on ``path``, told from the file's
    contents rather than from torch's message (which suggests unsafe loading)."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes), not a checkpoint: was it saved or copied completely? copy it again"
    with open(path, "rb") as handle:
        head = handle.read(512)
    truncated = f"truncated checkpoint (it ends after {size} bytes): was it saved or copied completely? copy it again"
    refused = isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower()
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return truncated
        if refused:
            return _foreign(error)
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "damaged checkpoint (a PyTorch archive whose contents cannot be read): copy it again"
        return "a zip archive, but not a PyTorch checkpoint"
    if head.startswith(_PICKLE_PROTOCOL_OPCODE):
        if refused and _pickles_complete(path, 4 if head.startswith(_LEGACY_TORCH_MAGIC) else 1):
            return _foreign(error)
        return truncated
    text = _as_text(head)
    if text is not None:
        first_words = " ".join(text.split())[:40]
        return f"a text file, not a checkpoint (it begins {first_words!r})"
    return "not a PyTorch checkpoint (unrecognised binary content)"


def _foreign(error: Exception) -> str:
    found = _FOREIGN_GLOBAL.search(str(error))
    holds = f"pickled Python objects ({found.group(1)})" if found else "pickled Python objects"
    return (
        f"not a checkpoint written by this project or the L-CAM authors: it holds {holds}, not only tensors "
        "and plain data; not loaded, for safety (unpickling it could run any code)"
    )


def _pickles_complete(path: str, count: int) -> bool:
    """Whether the file's first ``count`` pickles are whole (read opcode by opcode, nothing
    executed): a file that breaks off inside them is truncated, not foreign."""
    with open(path, "rb") as handle:
        try:
            for _ in range(count):
                for _ in pickletools.genops(handle):
                    pass
        except Exception:  # a stream that ends early or breaks off in an opcode
            return False
    return True


def _as_text(head: bytes) -> str | None:
    """``head`` decoded, when it looks like the start of a text file."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not just a character cut at the end of the sample
            return None
        text = head[: error.start].decode("utf-8")
    printable = sum(character.isprintable() or character in "\t\r\n" for character in text)
    return text if text and printable >= 0.95 * len(text) else None


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def _check_fits(path: str, model: nn.Module, state_dict: dict[str, torch.Tensor], partial: bool) -> None:
    required = model.trainable_state_dict() if partial and hasattr(model, "trainable_state_dict") else None
    problem = state_dict_mismatch(model.state_dict(), state_dict, required)
    if problem:
        raise UserValueError(
            f"{path}: checkpoint does not fit {getattr(model, 'arch', type(model).__name__)}: {problem}"
        )


def _load_optimizer(path: str, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    groups = state.get("param_groups", [])
    ours = [len(group["params"]) for group in optimizer.param_groups]
    theirs = [len(group["params"]) for group in groups]
    if ours != theirs:
        warnings.warn(
            f"{path}: optimizer state of another layout ({theirs} vs {ours} parameters per group) not restored",
            stacklevel=3,
        )
        return
    initial_lrs = [group.get("initial_lr") for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, initial_lr in zip(optimizer.param_groups, initial_lrs):
        # The authors' optimizer states hold the decayed lr but no initial one: keep ours,
        # so utils.optim.adjust_lr goes on from the right base.
        if "initial_lr" not in group and initial_lr is not None:
            group["initial_lr"] = initial_lr


def get_rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch and CUDA RNG states as plain data (tensors, ints, lists)."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(_plain, numpy_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    return value.item() if hasattr(value, "item") else value
