"""Build the datalists (README, 'Datalists').

``train``: run the frozen classifier over an ImageNet-style train folder (class subfolders)
and write its own predictions as labels (the "model truth" the reference trains on),
batched, with progress, resumable (a partial output is continued, its lines kept).

``val``: a ground-truth list from a class-subfolder validation tree, or from a flat
folder plus a ground-truth file, with N images sampled with a seed, optionally excluding
the images of other lists; an image PIL cannot open is left out (one warning) and another
is drawn in its place.

``authors``: download the authors' lists (``Evaluation_2000.txt``, ``VGG16_train.txt``,
``ResNet50_train.txt``) from their repository into ``datalist/ILSVRC/``, each checked against
a SHA-256 (:mod:`utils.data.authors`).

    python -m scripts.make_datalist train --backbone resnet50 --img_dir dataset/ILSVRC2012_img_train
    python -m scripts.make_datalist val --img_dir dataset/ILSVRC2012_img_val --ground_truth LOC_val_solution.csv
    python -m scripts.make_datalist authors Evaluation_2000.txt
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import torch
from PIL import Image
from tqdm import tqdm

from models import BackboneFamily, families, get_family
from models.backbones import load_torchvision_classifier
from utils.core.cli import (
    REPO_ROOT,
    HelpFormatter,
    add_device_arguments,
    add_image_size_arguments,
    add_precision_arguments,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from utils.core.errors import UserFileNotFoundError, UserValueError
from utils.core.files import atomic_open, ensure_writable
from utils.core.runtime import autocast, resolve_device, seed_everything
from utils.data.authors import AUTHORS_LISTS, AUTHORS_URL_BASES, fetch_authors_lists, parse_sha256
from utils.data.boxes import LOC_HEADER, read_loc_solution
from utils.data.datalists import (
    IMAGE_EXTENSIONS,
    ImageList,
    build_loader,
    describe_unreadable,
    eval_transform,
    folder_samples,
    read_datalist,
)
from utils.evaluation import warn_unreadable

__all__ = ["fetch_authors", "get_args_parser", "main", "make_train_list", "make_val_list", "read_ground_truth"]

ROOT_DIR = REPO_ROOT


def _labelling_families() -> dict[str, BackboneFamily]:
    """The families with a torchvision classifier and a training datalist, by name."""
    return {family.name: family for family in families() if family.builder is not None and family.train_list}


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _done_lines(output: str) -> tuple[set[str], int]:
    """The image paths an earlier, interrupted run wrote to ``output``; a last line cut
    short is dropped from the file. Returns the paths and the number of lines kept."""
    if not os.path.isfile(output):
        return set(), 0
    with open(output, "rb") as handle:
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(output, "wb") as handle:
            handle.write(complete)
    lines = complete.decode("utf-8").splitlines()
    return {line.rsplit(maxsplit=1)[0] for line in lines if line.strip()}, len(lines)


def make_train_list(args: argparse.Namespace) -> str:
    """Write ``<path relative to img_dir> <predicted class>`` for every image of the
    class-subfolder tree ``args.img_dir``; continues a partial ``args.output``."""
    device = resolve_device(args.device)
    samples, _ = folder_samples(args.img_dir)
    done, kept = _done_lines(args.output)
    todo = [sample for sample in samples if _relative(sample[0], args.img_dir) not in done]
    print(f"{len(samples)} images in {args.img_dir}; {kept} already in {args.output}; {len(todo)} to classify")
    if not todo:
        return args.output
    seed_everything(args.seed)
    family = get_family(args.backbone)
    pretrained = False if args.backbone_weights.lower() == "none" else args.backbone_weights
    classifier, weights_name = load_torchvision_classifier(family.builder, family.weights, pretrained, args.num_classes)
    classifier = classifier.eval().to(device)
    if args.channels_last:
        classifier = classifier.to(memory_format=torch.channels_last)
    mean = torch.tensor(family.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(family.std, device=device).view(1, 3, 1, 1)
    dataset = ImageList(todo, eval_transform(args.input_size, args.crop_size))
    loader = build_loader(dataset, args.batch_size, device, num_workers=args.num_workers)
    failed = []
    os.makedirs(os.path.dirname(os.path.abspath(args.output)) or ".", exist_ok=True)
    with open(args.output, "a", encoding="utf-8") as handle, torch.inference_mode():
        for batch in tqdm(loader, desc=f"{family.title} ({weights_name}) predictions", unit="batch"):
            failed.extend(batch.failed)
            if batch.images is None:
                continue
            images = batch.images.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, args.amp):
                predictions = classifier((images - mean) / std).argmax(dim=1).tolist()
            handle.writelines(
                f"{_relative(todo[index][0], args.img_dir)} {label}\n"
                for index, label in zip(batch.indices.tolist(), predictions)
            )
            handle.flush()
    _report_unreadable(describe_unreadable(todo, failed))
    print(f"wrote {args.output}")
    return args.output


def _report_unreadable(unreadable: list[dict]) -> None:
    if unreadable:
        print(f"{len(unreadable)} unreadable image(s) left out (run again to retry them):", file=sys.stderr)
        for entry in unreadable:
            print(f"  {entry['path']}: {entry['reason']}", file=sys.stderr)


def read_ground_truth(path: str, synsets: str | None = None) -> dict[str, int]:
    """Image name (without extension) -> 0-based label (classes in sorted-wnid order,
    torchvision's) from one of:

    - ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the wnid first; the classes
      are the sorted wnids of ``synsets`` when given, else of the file itself);
    - ``<image name> <label>`` lines (0-based labels, e.g. Caffe's ``val.txt``);
    - the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one 1-based ILSVRC2012_ID
      per line, for ILSVRC2012_val_00000001 on) with ``synsets`` = a file of
      ``<wnid> <ILSVRC2012_ID> [name]`` lines (e.g. ``map_clsloc.txt``).

    Raises:
        FileNotFoundError: a missing file.
        ValueError: ``file:line`` of a line in none of these forms, or devkit ids without ``synsets``.
    """
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"ground-truth file not found: {path!r}")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if lines and lines[0].replace(" ", "").startswith(LOC_HEADER):
        wnids = {name: boxes[0].label for name, boxes in read_loc_solution(path).items()}
        classes = _read_synsets(synsets).values() if synsets else wnids.values()
        order = {wnid: label for label, wnid in enumerate(sorted(set(classes)))}
        return {name: order[wnid] for name, wnid in wnids.items()}
    labels: dict[str, int] = {}
    devkit_ids: list[int] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1 and fields[0].isdigit():
            devkit_ids.append(int(fields[0]))
        elif len(fields) == 2 and fields[1].lstrip("-").isdigit():
            labels[os.path.splitext(os.path.basename(fields[0]))[0]] = int(fields[1])
        else:
            raise UserValueError(f"{path}:{number}: unrecognised ground-truth line {line!r}")
    if devkit_ids:
        if synsets is None:
            raise UserValueError(
                f"{path} holds devkit class ids: pass --synsets (lines '<wnid> <ILSVRC2012_ID> [name]')"
            )
        by_id = _read_synsets(synsets)
        order = {wnid: label for label, wnid in enumerate(sorted(by_id.values()))}
        for number, class_id in enumerate(devkit_ids, start=1):
            if class_id not in by_id:
                raise UserValueError(f"{path}:{number}: class id {class_id} is not in {synsets}")
            labels[f"ILSVRC2012_val_{number:08d}"] = order[by_id[class_id]]
    return labels


def _read_synsets(path: str) -> dict[int, str]:
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"synsets file not found: {path!r}")
    by_id = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or not fields[1].isdigit():
                raise UserValueError(f"{path}:{number}: expected '<wnid> <ILSVRC2012_ID> [name]', got {line.strip()!r}")
            by_id[int(fields[1])] = fields[0]
    return by_id


def make_val_list(args: argparse.Namespace) -> str:
    """Sample ``args.num_images`` labelled images of a validation folder into ``args.output``."""
    if not os.path.isdir(args.img_dir):
        raise UserFileNotFoundError(f"image folder not found: {args.img_dir!r}")
    has_classes = any(entry.is_dir() for entry in os.scandir(args.img_dir))
    if has_classes and args.ground_truth is None:
        samples, _ = folder_samples(args.img_dir)
        candidates = [(_relative(path, args.img_dir), label) for path, label in samples]
    else:
        if args.ground_truth is None:
            raise UserValueError(f"{args.img_dir} has no class subfolders: pass --ground_truth")
        labels = read_ground_truth(args.ground_truth, args.synsets)
        files = sorted(name for name in os.listdir(args.img_dir) if name.lower().endswith(IMAGE_EXTENSIONS))
        candidates = [
            (name, labels[os.path.splitext(name)[0]]) for name in files if os.path.splitext(name)[0] in labels
        ]
        unlabelled = len(files) - len(candidates)
        if unlabelled:
            print(
                f"{unlabelled} image(s) of {args.img_dir} have no label in {args.ground_truth}: left out",
                file=sys.stderr,
            )
    bad = [(name, label) for name, label in candidates if not 0 <= label < args.num_classes]
    if bad:
        raise UserValueError(f"label {bad[0][1]} of {bad[0][0]} outside [0, {args.num_classes})")
    excluded = set()
    for list_path in args.exclude or []:
        excluded.update(os.path.basename(path) for path, _ in read_datalist(list_path))
    candidates = [item for item in candidates if os.path.basename(item[0]) not in excluded]
    if args.num_images > len(candidates):
        raise UserValueError(f"--num_images {args.num_images} but only {len(candidates)} labelled images remain")
    chosen, unreadable = _sample_readable(candidates, args.num_images, args.seed, args.img_dir)
    warn_unreadable(unreadable)
    with atomic_open(args.output) as handle:
        handle.writelines(f"{name} {label}\n" for name, label in chosen)
    print(f"wrote {len(chosen)} of {len(candidates)} images to {args.output}")
    return args.output


def _sample_readable(
    candidates: list[tuple[str, int]], count: int, seed: int, img_dir: str
) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
    """``count`` of ``candidates`` (``(path relative to img_dir, label)``) sampled with
    ``seed``: ``random.Random(seed).sample``, so the same list as before whenever every image
    can be read; an image PIL cannot open is left out and replaced by further draws. Returns
    the chosen ones and ``{"path", "index", "reason"}`` of those left out."""
    generator = random.Random(seed)
    remaining = list(candidates)
    chosen: list[tuple[str, int]] = []
    unreadable: list[dict[str, str]] = []
    while len(chosen) < count:
        needed = count - len(chosen)
        if needed > len(remaining):
            raise UserValueError(
                f"--num_images {count} but only {len(chosen) + len(remaining)} readable labelled images remain "
                f"({len(unreadable)} cannot be read)"
            )
        drawn = generator.sample(remaining, needed)
        drawn_names = {name for name, _ in drawn}
        remaining = [item for item in remaining if item[0] not in drawn_names]
        for name, label in drawn:
            path = os.path.join(img_dir, name)
            reason = _unreadable_reason(path)
            if reason is None:
                chosen.append((name, label))
            else:
                unreadable.append({"path": path, "index": len(unreadable), "reason": reason})
    return chosen, unreadable


def _unreadable_reason(path: str) -> str | None:
    """Why PIL cannot open the image ``path`` (its header and ``verify``, without decoding
    the pixels), or None."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # missing, truncated, corrupt or unsupported: all left out
        return f"{error.__class__.__name__}: {error}"
    return None


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Make the training (model-truth) and evaluation (ground-truth) datalists.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="label a train folder with the frozen classifier's predictions",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument(
        "--backbone",
        type=str.lower,
        choices=sorted(_labelling_families()),
        required=True,
        help="the family of the classifier to explain (case-insensitive: VGG16 and ResNet50 work too)",
    )
    train.add_argument(
        "--img_dir",
        default=os.path.join(ROOT_DIR, "dataset", "ILSVRC2012_img_train"),
        help="folder of class subfolders",
    )
    train.add_argument(
        "--output",
        default=None,
        help="datalist to write or continue [the family's list in datalist/ILSVRC: "
        + ", ".join(f"{family.train_list} ({name})" for name, family in _labelling_families().items())
        + "]",
    )
    train.add_argument(
        "--backbone_weights",
        default="IMAGENET1K_V1",
        help="torchvision weights name, a path to a torchvision state_dict, or 'none' (random, for tests)",
    )
    train.add_argument("--num_classes", type=positive_int, default=1000, help="classes of the classifier")
    add_image_size_arguments(train)
    add_device_arguments(train, 128, "images per forward pass")
    add_precision_arguments(train, amp_help="mixed precision")
    train.add_argument("--seed", type=int, default=0, help="seed (random weights only)")

    val = commands.add_parser(
        "val",
        help="sample a ground-truth evaluation list",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    val.add_argument(
        "--img_dir",
        default=os.path.join(ROOT_DIR, "dataset", "ILSVRC2012_img_val"),
        help="validation images: a folder of class subfolders (labels by sorted name), or flat with --ground_truth",
    )
    val.add_argument(
        "--ground_truth",
        default=None,
        help="LOC_val_solution.csv, '<image> <label>' lines, or the devkit's ILSVRC2012_validation_ground_truth.txt",
    )
    val.add_argument(
        "--synsets", default=None, help="with devkit ids: '<wnid> <ILSVRC2012_ID> [name]' lines (map_clsloc.txt)"
    )
    val.add_argument("--num_images", type=positive_int, default=2000, help="images to sample")
    val.add_argument("--seed", type=int, default=0, help="sampling seed")
    val.add_argument(
        "--exclude", action="append", help="leave out the images whose file name is in this datalist (repeatable)"
    )
    val.add_argument("--num_classes", type=int, default=1000, help="labels must be in [0, num_classes)")
    val.add_argument(
        "--output",
        default=os.path.join(ROOT_DIR, "datalist", "ILSVRC", "Evaluation_2000.txt"),
        help="the evaluation datalist to write",
    )

    authors = commands.add_parser(
        "authors",
        help="download the authors' lists from their repository, checked against a SHA-256",
        formatter_class=HelpFormatter,
    )
    authors.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"the lists to fetch, of {', '.join(AUTHORS_LISTS)} [all]",
    )
    authors.add_argument(
        "--output_dir", default=os.path.join(ROOT_DIR, "datalist", "ILSVRC"), help="where the lists go"
    )
    authors.add_argument(
        "--url_base",
        action="append",
        default=None,
        help="URL of the folder holding the lists (repeatable: tried in order) [the authors' repository: "
        + ", then ".join(AUTHORS_URL_BASES)
        + "]",
    )
    authors.add_argument(
        "--sha256",
        action="append",
        default=None,
        metavar="NAME=HEX",
        help="the SHA-256 a list must have (wins over the project's and the recorded ones); repeatable",
    )
    authors.add_argument("--retries", type=non_negative_int, default=3, help="further attempts after a broken download")
    authors.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds without an answer before an attempt fails"
    )
    return parser


def fetch_authors(args: argparse.Namespace) -> str:
    """Fetch and check the authors' lists ``args.names`` into ``args.output_dir``; returns the folder."""
    unknown = [name for name in args.names if name not in AUTHORS_LISTS]
    if unknown:
        raise UserValueError(f"unknown list {unknown[0]!r}; the authors' lists are {', '.join(AUTHORS_LISTS)}")
    given = dict(parse_sha256(text) for text in args.sha256 or [])
    ensure_writable(args.output_dir, "--output_dir", is_folder=True)
    fetch_authors_lists(
        args.output_dir,
        args.names or None,
        url_bases=args.url_base or AUTHORS_URL_BASES,
        given=given,
        retries=args.retries,
        timeout=args.timeout,
    )
    return args.output_dir


def main(args: argparse.Namespace) -> str:
    """Write the datalist of ``args.command`` (``train`` or ``val``), or fetch the authors' lists
    (``authors``); returns the path written."""
    if args.command == "authors":
        return fetch_authors(args)
    if args.command == "train":
        if args.output is None:
            args.output = os.path.join(ROOT_DIR, "datalist", "ILSVRC", get_family(args.backbone).train_list)
        ensure_writable(args.output, "--output")
        return make_train_list(args)
    ensure_writable(args.output, "--output")
    return make_val_list(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser(), interrupted_hint="; run it again to continue where it stopped")
