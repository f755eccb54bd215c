"""L-CAM as an explainer: a trained model rebuilt from its checkpoint alone, and one forward
pass that gives the plain logits and the maps of every class."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from models import ARCH_CHOICES, GENERIC, build_model
from models.generic import AS_BUILT
from models.lcam import LCAM, LCAMOutput
from utils.core.checkpoint import FORMAT, find_newest_checkpoint, load_checkpoint, read_torch_file
from utils.core.errors import UserFileNotFoundError, UserTypeError, UserValueError
from utils.core.runtime import compile_function
from utils.explainers.protocol import Classifier

__all__ = ["LCAMExplainer", "lcam_classifier", "load_lcam_model", "resolve_checkpoint"]


class LCAMExplainer:
    """L-CAM as an explainer: one forward pass gives the plain logits and the CAMs of all
    classes; the map of class ``k`` is the raw attention output ``out.cams[:, k]`` (not its
    sigmoid), as in the reference evaluation. Runs under ``torch.inference_mode``.

    The caller puts ``model`` in eval mode (the scripts do); this class changes nothing on it.
    ``compile`` (True or a mode of :data:`utils.core.runtime.COMPILE_MODES`) runs both passes
    through ``torch.compile`` (slow first batches, then faster on GPUs).
    """

    def __init__(self, model: LCAM, compile: bool | str | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise UserTypeError(f"'model' must be an L-CAM torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._forward = compile_function(model, compile)
        self._plain_logits = compile_function(self._plain_pass, compile)

    def _plain_pass(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.classify(self.model.normalize(images))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The plain classifier's logits (``model(images).logits``, without computing the
        CAMs: both are ``classify(normalize(images))`` for every variant)."""
        with torch.inference_mode():
            return self._plain_logits(images)

    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The raw CAMs of ``classes``, N x 1 x h x w."""
        with torch.inference_mode():
            cams = self._forward(images).cams
            return _select_maps(cams, classes.to(cams.device))

    def explain_all_classes(self, images: torch.Tensor) -> LCAMOutput:
        """The plain logits and the raw CAMs of every class (``model(images)``), one pass."""
        with torch.inference_mode():
            return self._forward(images)

    def predict_and_explain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain logits and the raw CAM of each image's predicted class, from one forward."""
        with torch.inference_mode():
            out = self._forward(images)
            return out.logits, _select_maps(out.cams, out.logits.argmax(dim=1))


def lcam_classifier(model: LCAM) -> Classifier:
    """The scoring classifier of an L-CAM model: images in [0, 1] -> plain logits."""
    return LCAMExplainer(model).classify


def _select_maps(cams: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return cams[torch.arange(cams.size(0), device=cams.device), classes.long()].unsqueeze(1)


def resolve_checkpoint(restore_from: str | None, snapshot_dir: str | None, resume: bool = True) -> str:
    """The checkpoint file to evaluate: ``restore_from`` (a file or a directory) or else the
    newest ``.pth.tar`` of ``snapshot_dir`` (when ``resume``).

    Raises:
        FileNotFoundError: nothing to restore (never evaluate an untrained head).
    """
    if restore_from:
        if os.path.isdir(restore_from):
            newest = find_newest_checkpoint(restore_from)
            if newest is None:
                raise UserFileNotFoundError(
                    f"--restore_from {restore_from!r}: no .pth.tar checkpoint in that directory"
                )
            return newest
        if not os.path.isfile(restore_from):
            raise UserFileNotFoundError(f"--restore_from {restore_from!r}: checkpoint file not found")
        return os.fspath(restore_from)
    if not resume:
        raise UserFileNotFoundError("no checkpoint to evaluate: --resume False and no --restore_from given")
    if not snapshot_dir or not os.path.isdir(snapshot_dir):
        raise UserFileNotFoundError(
            f"no checkpoint to evaluate: --snapshot_dir {snapshot_dir!r} does not exist; "
            "give --restore_from FILE or the --snapshot_dir of a training run"
        )
    newest = find_newest_checkpoint(snapshot_dir)
    if newest is None:
        raise UserFileNotFoundError(
            f"no checkpoint to evaluate: no .pth.tar in --snapshot_dir {snapshot_dir!r}; give --restore_from FILE"
        )
    return newest


def _weights_name(recorded: str) -> bool | str | None:
    """A checkpoint's recorded ``backbone_weights`` as a ``pretrained`` argument:
    ``"VGG16_Weights.IMAGENET1K_V1"`` -> ``"IMAGENET1K_V1"``, ``"none"`` -> False, a custom
    network's ``"as built"`` -> None (call its builder again), a path as is."""
    if recorded == AS_BUILT:
        return None
    if recorded in (None, "", "none", "unknown"):
        return False if recorded == "none" else True
    prefix, _, member = recorded.rpartition(".")
    if prefix.endswith("_Weights") and member:
        return member
    return recorded


def load_lcam_model(
    arch: str,
    checkpoint: str | os.PathLike,
    num_classes: int | None = None,
    backbone_weights: str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[LCAM, dict[str, Any]]:
    """Build ``arch`` and restore a trained checkpoint into it, in eval mode on ``device``.

    A full checkpoint (the authors' snapshots, the project's ``--save_full`` files) holds the
    backbone: the model is built with ``pretrained=False`` and nothing is downloaded. A
    head-only checkpoint rebuilds the backbone from ``backbone_weights`` (a torchvision
    weights name, a state_dict path, or ``"none"``), by default the one it records.
    ``num_classes`` (default: the checkpoint's) and the variant's settings (e.g. the ImgA
    first-pass quirk) come from the checkpoint.

    Returns:
        The model and the checkpoint's metadata (see :func:`utils.checkpoint.load_checkpoint`).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: a checkpoint of another arch (one line), of another number of classes,
            or not an L-CAM checkpoint.
    """
    if arch not in ARCH_CHOICES:
        raise UserValueError(f"unknown --arch {arch!r}; valid: {', '.join(ARCH_CHOICES)}")
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        path = resolve_checkpoint(path, None)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"checkpoint not found: {path!r}")
    header = read_torch_file(path, mmap=True)  # memory-mapped: cheap for big files
    if not isinstance(header, dict):
        raise UserValueError(f"{path}: not a checkpoint (a {type(header).__name__}, expected a dict)")
    recorded_arch = header.get("arch")
    if recorded_arch in ARCH_CHOICES and recorded_arch != arch:
        raise UserValueError(f"{path}: checkpoint of arch {recorded_arch!r}, but --arch is {arch!r}")
    settings: dict[str, Any] = {}
    if header.get("format") == FORMAT:
        stored_classes = int(header["num_classes"])
        full = header.get("contents") == "full"
        stored = header.get("settings") or {}
        # a reference variant's other settings are its identity; a generic model needs them all
        keys = stored if arch == GENERIC else ("mask_loss_maps", "normalize_first_pass", "backbone_mode")
        settings = {key: stored[key] for key in keys if key in stored}
        recorded_weights = header.get("backbone_weights", "unknown")
    elif arch == GENERIC:
        raise UserValueError(f"{path}: a generic L-CAM model is restored from the project's checkpoints only")
    else:
        state_dict = header.get("state_dict", header)
        weight = next((value for key, value in state_dict.items() if key.endswith("attnM.op.weight")), None)
        if not torch.is_tensor(weight):
            raise UserValueError(f"{path}: not an L-CAM checkpoint (no 'attnM.op.weight' in its state_dict)")
        stored_classes, full, recorded_weights = int(weight.shape[0]), True, None
    if num_classes is not None and num_classes != stored_classes:
        raise UserValueError(f"{path}: checkpoint has {stored_classes} classes, but --num_classes is {num_classes}")
    if full:
        pretrained: bool | str | None = False  # the checkpoint overwrites every backbone weight
    elif backbone_weights is not None:
        pretrained = _weights_name(backbone_weights)
    else:
        pretrained = _weights_name(recorded_weights)
        if pretrained is False:
            warnings.warn(
                f"{path}: head-only checkpoint trained on a randomly initialised backbone, which it does not "
                "hold: a new random backbone is built (give --backbone_weights, or save full checkpoints)",
                stacklevel=2,
            )
    backbone_mode = settings.pop("backbone_mode", "reference")
    model = build_model(
        arch, pretrained=pretrained, num_classes=stored_classes, backbone_mode=backbone_mode, **settings
    )
    del header  # release the memory map before reading the file for real
    with warnings.catch_warnings():
        if backbone_weights is not None:  # the user chose other backbone weights on purpose
            warnings.filterwarnings("ignore", message=".*trained on backbone weights.*")
        metadata = load_checkpoint(path, model)
    model.to(device).eval()
    return model, metadata
