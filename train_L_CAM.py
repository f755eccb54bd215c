"""Train the attention mechanism of an L-CAM variant (the authors' recipe by default; a recipe for small data with --recipe small-data, the default of --arch generic).

One script for the nine variants (``--arch`` names the file in ``models/``), on one device
or, through ``torchrun``, on several (DistributedDataParallel, only rank 0 writes).
Defaults are the authors' (loss, optimiser, data and checkpoints of their code);
``python train_L_CAM.py --help`` explains every flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable

import torch

from models import ARCH_CHOICES, GENERIC, BackboneFamily, build_model, families, family_of
from models.generic import init_head_from_classifier, resolve_image_sizes
from utils.core.checkpoint import list_checkpoints
from utils.core.cli import (
    REPO_ROOT,
    add_decode_argument,
    add_image_size_arguments,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from utils.core.errors import UserFileNotFoundError, UserValueError
from utils.core.files import ensure_writable
from utils.core.runtime import (
    AMP_CHOICES,
    add_compile_argument,
    add_deterministic_argument,
    compile_function,
    configure_backends,
    grad_scaler,
    init_distributed,
    seed_everything,
)
from utils.data.datalists import (
    ImageList,
    ResumableSampler,
    SeededAugmentation,
    build_loader,
    check_images_exist,
    samples_from,
    train_transform,
)
from utils.data.device_decode import DecodingLoader, DeviceDecoder, EncodedImageList, collate_encoded
from utils.evaluation import build_eval_loader
from utils.training import (
    BEST_BY,
    HEAD_INITS,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    HeldOutCheck,
    TrainOptions,
    TrainState,
    archive_previous_run,
    build_recipe_optimizer,
    check_no_previous_run,
    fit,
    lr_schedules,
    resume_training,
)
from utils.training.diagnostics import TermGradientProbe
from utils.training.validation import SMALL_DATA_DOC

ROOT_DIR = REPO_ROOT


def _true_false(text: str) -> str:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected 'True' or 'False', got {text!r}")
    return "True" if text.lower() == "true" else "False"


def _per_family(describe: Callable[[BackboneFamily], object]) -> str:
    """``describe(family)`` for every family, e.g. ``"8 (VGG-16), 26 (ResNet-50), 8 (any CNN)"``."""
    return ", ".join(f"{describe(family)} ({family.title})" for family in families())


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train an L-CAM attention head on a frozen ImageNet classifier (reference recipe by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    paths = parser.add_argument_group("data and paths (reference flags)")
    paths.add_argument("--root_dir", default=ROOT_DIR, help="project root; the defaults below are relative to it")
    paths.add_argument(
        "--img_dir",
        default=None,
        help="folder the datalist paths are relative to [ROOT_DIR/dataset/ILSVRC2012_img_train]",
    )
    paths.add_argument(
        "--train_list",
        default=None,
        help="training datalist ('<image path> <label>' per line, model-truth labels) or a folder of class "
        "subfolders (labels by sorted folder name) [the family's list in ROOT_DIR/datalist/ILSVRC: "
        + _per_family(lambda family: family.train_list or "required")
        + "]",
    )
    paths.add_argument(
        "--test_list",
        default=None,
        help="evaluation datalist; recorded only, training does not read it, as in the reference "
        "[ROOT_DIR/datalist/ILSVRC/Evaluation_2000.txt]",
    )
    paths.add_argument("--snapshot_dir", default=None, help="where checkpoints and logs go [ROOT_DIR/snapshots/ARCH]")
    paths.add_argument(
        "--restore_from",
        default="",
        help="resume from this checkpoint file instead of the newest one of --snapshot_dir (needs --resume True)",
    )
    paths.add_argument(
        "--resume",
        type=_true_false,
        default="True",
        help="'True': continue from the newest checkpoint of --snapshot_dir (or --restore_from) when there is one; "
        "'False': start from scratch, in a --snapshot_dir that holds no earlier run (see --archive_old)",
    )
    paths.add_argument(
        "--archive_old",
        action="store_true",
        help="with --resume False: move an earlier run's checkpoints, train_record.csv and train_log.json in "
        "--snapshot_dir into a new subfolder archived-YYYYmmdd-HHMMSS/ before starting (without it, such a "
        "folder is refused; nothing is ever overwritten)",
    )
    paths.add_argument(
        "--skip_missing",
        action="store_true",
        help="train without the listed images that do not exist (one warning) instead of refusing to start",
    )
    paths.add_argument("--dataset", default="imagenet", help="dataset name, recorded (reference flag)")

    recipe = parser.add_argument_group("model and recipe (reference flags)")
    recipe.add_argument(
        "--arch",
        default="VGG16_L_CAM_Fm",
        choices=ARCH_CHOICES,
        metavar="ARCH",
        help=f"variant: {', '.join(ARCH_CHOICES)} ('generic': any CNN, see the 'generic' flags)",
    )
    recipe.add_argument(
        "--num_classes", type=positive_int, default=1000, help="classes of the classifier and the datalist labels"
    )
    recipe.add_argument(
        "--batch_size", type=positive_int, default=64, help="images per optimizer step (per process under torchrun)"
    )
    add_image_size_arguments(recipe, "RandomCrop size", from_model="--backbone timm:NAME: timm's data config")
    recipe.add_argument(
        "--no_hflip",
        action="store_true",
        help="no random horizontal flip of the training images (for data whose mirror image is another class or "
        "none: digits, text)",
    )
    recipe.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="learning rate; with --optimizer sgd-reference the base lr (the head's weights train at 100 x lr, its "
        "biases at 200 x lr) [the recipe's: 1e-4 reference, 1e-3 small-data]",
    )
    recipe.add_argument(
        "--epoch",
        type=positive_int,
        default=None,
        help="epochs to train [the family's: " + _per_family(lambda family: family.epochs) + "]",
    )
    recipe.add_argument("--disp_interval", type=positive_int, default=40, help="steps between progress updates")
    recipe.add_argument(
        "--global_counter", type=non_negative_int, default=0, help="global step to start from (without a checkpoint)"
    )
    recipe.add_argument(
        "--current_epoch", type=non_negative_int, default=0, help="epoch to start from, 0-based (without a checkpoint)"
    )
    recipe.add_argument(
        "--decay_points", default="none", help="ignored, as in the reference (lr x 0.75 per epoch 1..22)"
    )
    recipe.add_argument("--num_gpu", type=int, default=1, help="ignored; use torchrun --nproc_per_node N for N GPUs")

    generic = parser.add_argument_group("--arch generic: L-CAM on any CNN (models/generic.py)")
    generic.add_argument(
        "--backbone",
        default=None,
        help="a torchvision classifier name (resnet18, densenet121, convnext_tiny, ...) or 'package.module:callable' "
        "returning an nn.Module [resnet18]",
    )
    generic.add_argument(
        "--layer", default=None, help="dotted name of the feature layer [the last convolutional stage]"
    )
    generic.add_argument(
        "--apply_cam_to", choices=("image", "feature_maps"), default=None, help="L-CAM-Img or L-CAM-Fm [image]"
    )
    generic.add_argument("--loss", choices=("lcam", "ce"), default=None, help="L-CAM loss, or CE alone [lcam]")

    small = parser.add_argument_group(
        "training recipe (docs/small-data.md); each flag left out takes the value of --recipe"
    )
    small.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=None,
        help="'reference': the authors' recipe, bit for bit; 'small-data': for a few thousand images (head from "
        "the classifier's last layer, AdamW, cosine lr by steps, warm-up of area and smoothness, own-label maps, "
        "frozen BatchNorm) [reference for the nine variants, small-data for --arch generic]",
    )
    small.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=None, help="the authors' SGD groups, or AdamW [the recipe's]"
    )
    small.add_argument(
        "--weight_decay", type=float, default=None, help="weight decay (sgd-reference: 5e-4 only) [the recipe's]"
    )
    small.add_argument(
        "--lr_schedule",
        choices=SCHEDULES,
        default=None,
        help="'epoch-decay': lr x 0.75 before each epoch 1..22 (reference); 'cosine-steps': cosine decay to 0 "
        "over the run's optimiser steps [the recipe's]",
    )
    small.add_argument(
        "--warmup_steps",
        type=non_negative_int,
        default=None,
        help="the area and smoothness terms rise linearly from 0 over this many steps; 0: off [the recipe's: 0, 100]",
    )
    small.add_argument(
        "--head_init",
        choices=HEAD_INITS,
        default=None,
        help="the AM's initial weights: 'random' (reference), or 'classifier': the classifier's last linear layer, "
        "for a network ending with global average pooling and one linear layer (the initial maps are its CAM) "
        "[the recipe's; small-data falls back to random, with a warning, on other networks]",
    )
    small.add_argument(
        "--head_init_scale",
        type=positive_float,
        default=None,
        help="factor on the weights copied by --head_init classifier (< 1 keeps the sigmoid out of saturation) "
        "[the recipe's: 1, 0.1]",
    )

    held_out = parser.add_argument_group("held-out check after each epoch (off without --val_list)")
    held_out.add_argument(
        "--val_list",
        default=None,
        help="held-out datalist (or class folder): each epoch reports the masked-image accuracy, AD/IC at 100 %% and "
        "the loss terms on it, keeps lcam_best.pth.tar and draws train_curves.png in --snapshot_dir",
    )
    held_out.add_argument("--val_img_dir", default=None, help="folder the --val_list paths are relative to [--img_dir]")
    held_out.add_argument(
        "--best_by",
        choices=tuple(BEST_BY),
        default=None,
        help="criterion of lcam_best.pth.tar: held-out masked-image accuracy, AD (lowest), IC, AD - IC (lowest) or "
        "loss (lowest); "
        "with --head_init classifier the head before training competes too "
        "[the recipe's: masked_accuracy (reference), ad (small-data)]",
    )
    held_out.add_argument(
        "--plateau_epochs",
        type=non_negative_int,
        default=3,
        help="warn once when the held-out masked-image accuracy has not improved for this many epochs (0: never)",
    )

    extra = parser.add_argument_group("project flags")
    extra.add_argument(
        "--backbone_weights",
        default="IMAGENET1K_V1",
        help="torchvision weights name (IMAGENET1K_V1 = the reference's), a path to a torchvision state_dict, "
        "or 'none' for random init",
    )
    extra.add_argument(
        "--backbone_mode",
        choices=("reference", "frozen"),
        default=None,
        help="'reference': the whole model in train mode (dropout on, BatchNorm statistics drift); "
        "'frozen': BatchNorm and Dropout of the classifier stay in eval mode [the recipe's: reference, frozen]",
    )
    extra.add_argument(
        "--mask_loss_maps",
        choices=("batch", "own"),
        default=None,
        help="maps in the area/smoothness terms: 'batch' = every label of the batch (reference code), "
        "'own' = each image's own label (paper) [the recipe's: batch, own]",
    )
    extra.add_argument(
        "--normalize_first_pass",
        action="store_true",
        help="ResNet50_L_CAM_ImgA: feed the normalised image to the attention pass (the reference feeds the raw one)",
    )
    extra.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    extra.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=None,
        help="DataLoader worker processes [min(8, CPU cores / processes on this node)]; results do not depend on it",
    )
    extra.add_argument("--amp", choices=AMP_CHOICES, default="none", help="mixed precision of forward and loss")
    extra.add_argument("--channels_last", action="store_true", help="channels_last memory format (faster on GPUs)")
    add_compile_argument(extra)
    add_deterministic_argument(extra)
    add_decode_argument(extra)
    extra.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of initialisation, data order and augmentation"
    )
    extra.add_argument(
        "--save_full",
        action="store_true",
        help="also write the reference's full-model snapshot imagenet_epoch_{E}_glo_step_{S}.pth.tar each epoch",
    )
    extra.add_argument(
        "--save_every",
        type=non_negative_int,
        default=0,
        help="also save a mid-epoch checkpoint lcam_epoch_{E}_glo_step_{S}_mid.pth.tar every N global steps "
        "(0: off); --resume True continues from it, evaluation takes the newest end-of-epoch checkpoint",
    )
    extra.add_argument(
        "--log_term_gradients",
        type=non_negative_int,
        default=0,
        help="every N steps record each loss term's gradient norm at the head, the masks' saturation and the share "
        "of collapsed maps to SNAPSHOT_DIR/term_gradients.json and .png (docs/small-data.md); 0: off",
    )
    extra.add_argument(
        "--stop_after_step",
        type=non_negative_int,
        default=0,
        help="end the run right after this global step as an interruption would, without an extra checkpoint "
        "(to try resuming); 0: off",
    )
    extra.add_argument("--no_progress", action="store_true", help="no progress bar (epoch summaries are still printed)")
    return parser


def _generic_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flags of ``--arch generic`` that were given (``--backbone``, ``--layer``,
    ``--apply_cam_to``, ``--loss``), by setting name."""
    names = ("backbone", "layer", "apply_cam_to", "loss")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on ``--root_dir`` and ``--arch``; check values."""
    if args.arch != GENERIC and _generic_flags(args):
        given = ", ".join(f"--{name}" for name in _generic_flags(args))
        raise UserValueError(
            f"{given} only apply to --arch {GENERIC}; {args.arch} fixes its backbone, layer and method"
        )
    family = family_of(args.arch)
    if family.train_list is None and args.train_list is None:
        raise UserValueError(f"--arch {args.arch} needs --train_list (a datalist or a folder of class subfolders)")
    datalists = os.path.join(args.root_dir, "datalist", "ILSVRC")
    if args.img_dir is None:
        args.img_dir = os.path.join(args.root_dir, "dataset", "ILSVRC2012_img_train")
    if args.train_list is None:
        args.train_list = os.path.join(datalists, family.train_list)
    if args.test_list is None:
        args.test_list = os.path.join(datalists, "Evaluation_2000.txt")
    if args.snapshot_dir is None:
        args.snapshot_dir = os.path.join(args.root_dir, "snapshots", args.arch)
    if args.epoch is None:
        args.epoch = family.epochs
    if args.recipe is None:
        args.recipe = "small-data" if args.arch == GENERIC else "reference"
    # a flag given wins over the recipe; the recipe's head_init may fall back (see _init_head)
    args.recipe_head_init = args.head_init is None
    for name, value in RECIPES[args.recipe].as_dict().items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.optimizer == "sgd-reference" and args.weight_decay != RECIPES["reference"].weight_decay:
        raise UserValueError(f"'--weight_decay' {args.weight_decay} needs '--optimizer adamw' (sgd-reference has 5e-4)")
    if args.weight_decay < 0:
        raise UserValueError(f"'--weight_decay' must be >= 0, got {args.weight_decay}")
    if args.val_img_dir is None:
        args.val_img_dir = args.img_dir
    args.input_size, args.crop_size = resolve_image_sizes(
        args.input_size, args.crop_size, args.backbone, args.backbone_weights
    )
    if args.restore_from and args.resume == "False":
        raise UserValueError("'--restore_from' given with '--resume False': drop one of them")
    if args.archive_old and args.resume == "True":
        raise UserValueError("'--archive_old' applies to a fresh start: add '--resume False', or drop '--archive_old'")
    return args


def _default_workers() -> int:
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, (os.cpu_count() or 1) // local_processes))


def main(args: argparse.Namespace) -> list[dict]:
    args = resolve_defaults(args)
    if args.num_workers is None:
        args.num_workers = _default_workers()
    dist = init_distributed(args.device)
    device = dist.device
    configure_backends(args.deterministic)
    if dist.is_main:
        print("Running parameters:\n" + json.dumps(vars(args), indent=4), flush=True)
        if args.num_gpu > 1 and not dist.enabled:
            warnings.warn(
                "--num_gpu is ignored: start several processes with torchrun --nproc_per_node N", stacklevel=1
            )

    if not args.restore_from:  # before any work: a new run never writes over an earlier one
        check_no_previous_run(args.snapshot_dir, fresh_start=args.resume == "False", archive_old=args.archive_old)
    samples = samples_from(args.train_list, args.img_dir, args.num_classes)
    samples = check_images_exist(samples, args.train_list, skip_missing=args.skip_missing)
    val_samples = None
    if args.val_list is not None:
        val_samples = samples_from(args.val_list, args.val_img_dir, args.num_classes)
        val_samples = check_images_exist(val_samples, args.val_list, skip_missing=args.skip_missing)
    ensure_writable(args.snapshot_dir, "--snapshot_dir", is_folder=True)

    seed_everything(args.seed)  # every process builds the same model
    settings = {"mask_loss_maps": args.mask_loss_maps}
    if args.normalize_first_pass:
        settings["normalize_first_pass"] = True
    if args.arch == GENERIC:  # the flags not given keep the generic variant's defaults
        settings.update(_generic_flags(args), input_size=args.crop_size, resize_size=args.input_size)
    pretrained = False if args.backbone_weights.lower() == "none" else args.backbone_weights
    model = build_model(args.arch, pretrained, args.num_classes, args.backbone_mode, **settings).to(device)
    _init_head(model, args, dist.is_main)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weight_decay = None if args.optimizer == "sgd-reference" else args.weight_decay
    optimizer = build_recipe_optimizer(model, args.optimizer, args.lr, weight_decay, fused=device.type == "cuda")
    scaler = grad_scaler(device, args.amp)
    seed_everything(args.seed + dist.rank)  # dropout differs between processes

    state = TrainState(epoch=args.current_epoch, global_counter=args.global_counter)
    source = _checkpoint_to_resume(args)
    if source is not None:
        state, metadata = resume_training(source, model, optimizer, scaler, dist, args.batch_size)
        if dist.is_main:
            where = f"epoch {state.epoch}" + (f", after batch {state.batches_done}" if state.batches_done else "")
            print(f"=> resumed from {metadata['path']}: continuing at {where}, global step {state.global_counter}")
    elif args.resume == "True" and dist.is_main:
        print(f"=> no checkpoint in {args.snapshot_dir}: training from the start")
    if state.epoch >= args.epoch:
        if dist.is_main:
            print(f"nothing to do: {state.epoch} of {args.epoch} epochs already trained")
        return []
    if args.archive_old and dist.is_main:
        archive = archive_previous_run(args.snapshot_dir)
        if archive:
            print(f"=> moved the earlier run's files into {archive}", flush=True)

    loader = _build_train_loader(samples, args, device, dist, model.interpolation)
    forward_model = model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        forward_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    forward_model = compile_function(forward_model, args.compile)

    step_schedule, lr_schedule = lr_schedules(args.lr_schedule, args.epoch * len(loader))
    options = TrainOptions(
        device=device,
        amp=args.amp,
        channels_last=args.channels_last,
        disp_interval=args.disp_interval,
        snapshot_dir=args.snapshot_dir,
        save_every=args.save_every,
        save_full=args.save_full,
        stop_after_step=args.stop_after_step,
        args=vars(args),
        progress=not args.no_progress,
        warmup_steps=args.warmup_steps,
        step_schedule=step_schedule,
        validate=_held_out_check(val_samples, args, device, model.interpolation),
        best_by=args.best_by,
        start_is_candidate=args.head_init == "classifier",
        plateau_epochs=args.plateau_epochs,
        term_gradients=TermGradientProbe(args.log_term_gradients) if args.log_term_gradients else None,
    )
    if dist.is_main and args.recipe == "small-data" and val_samples is None:
        print(
            "note: without --val_list the last epoch is the result and nothing compares it with the head's start; "
            f"give held-out images with --val_list to keep the best of them (see {SMALL_DATA_DOC})",
            file=sys.stderr,
            flush=True,
        )
    try:
        return fit(model, loader, optimizer, args.epoch, options, state, scaler, forward_model, dist, lr_schedule)
    finally:
        if dist.enabled:
            torch.distributed.destroy_process_group()


def _init_head(model: torch.nn.Module, args: argparse.Namespace, is_main: bool) -> None:
    """--head_init classifier: the AM from the classifier's last linear layer. When it came
    from the recipe and the network does not end so, warn and keep the random head."""
    if args.head_init != "classifier":
        return
    try:
        init_head_from_classifier(model, args.head_init_scale)
    except ValueError as error:
        if not args.recipe_head_init:
            raise
        args.head_init = "random"
        if is_main:
            warnings.warn(f"{error}; the head starts from random weights", stacklevel=1)


def _held_out_check(samples, args: argparse.Namespace, device: torch.device, interpolation: str) -> HeldOutCheck | None:
    """The held-out check of --val_list (None without one): the evaluation transform at the
    training sizes and the model's ``interpolation``, in datalist order."""
    if samples is None:
        return None
    loader = build_eval_loader(
        samples, args.input_size, args.crop_size, args.batch_size, args.num_workers, device, interpolation=interpolation
    )
    return HeldOutCheck(loader, device, args.amp)


def _build_train_loader(samples, args: argparse.Namespace, device: torch.device, dist, interpolation: str):
    """The seeded, resumable training loader: PIL transforms in the workers, or file bytes
    decoded on the device (``--decode device``), resized with the model's ``interpolation``."""
    if args.decode == "device":
        dataset = EncodedImageList(samples)
        sampler = ResumableSampler(dataset, dist.world_size, dist.rank, shuffle=True, seed=args.seed)
        loader = build_loader(
            dataset, args.batch_size, device, sampler, args.num_workers, collate_fn=collate_encoded, seed=args.seed
        )
        return DecodingLoader(
            loader,
            DeviceDecoder(
                args.input_size, args.crop_size, train=True, interpolation=interpolation, hflip=not args.no_hflip
            ),
            device,
        )
    transform = train_transform(args.input_size, args.crop_size, interpolation, hflip=not args.no_hflip)
    dataset = SeededAugmentation(ImageList(samples, transform))
    sampler = ResumableSampler(dataset, dist.world_size, dist.rank, shuffle=True, seed=args.seed)
    return build_loader(dataset, args.batch_size, device, sampler, args.num_workers, seed=args.seed)


def _checkpoint_to_resume(args: argparse.Namespace) -> str | None:
    """The checkpoint file, or the folder whose newest checkpoint ``--resume``/``--restore_from``
    ask for, or None to start afresh."""
    if args.resume == "False":
        return None
    if args.restore_from:
        if not os.path.isfile(args.restore_from):
            raise UserFileNotFoundError(f"'--restore_from' checkpoint not found: {args.restore_from!r}")
        return args.restore_from
    if os.path.isdir(args.snapshot_dir) and list_checkpoints(args.snapshot_dir, mid_epoch=True):
        return args.snapshot_dir
    return None


if __name__ == "__main__":
    run_cli(main, get_args_parser(), interrupted_hint="; run it again with --resume True to continue")
