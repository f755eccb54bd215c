"""scripts.make_datalist: model-truth train lists (batched, resumable) and sampled
ground-truth val lists, on tiny generated data."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from PIL import Image

from scripts import make_datalist
from utils.data.datalists import eval_transform, read_datalist

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(*argv):
    return make_datalist.main(make_datalist.get_args_parser().parse_args([str(arg) for arg in argv]))


def _train(root, output, batch_size=5):
    argv = ["train", "--backbone", "ResNet50", "--backbone_weights", "none", "--num_classes", "5", "--img_dir", root]
    argv += ["--output", output, "--input_size", "40", "--crop_size", "32", "--batch_size", batch_size]
    return _run(*argv, "--num_workers", "0", "--device", "cpu")


def test_train_list_holds_the_classifier_predictions_and_resumes(jpeg_tree, tmp_path):
    root, _, samples = jpeg_tree()
    output = tmp_path / "ResNet50_train.txt"
    _train(root, output)
    lines = output.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [os.path.relpath(path, root) for path, _ in samples]

    torch.manual_seed(0)
    classifier = torchvision.models.resnet50(num_classes=5).eval()
    transform = eval_transform(40, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    images = torch.stack([(transform(Image.open(path).convert("RGB")) - mean) / std for path, _ in samples])
    with torch.inference_mode():
        expected = classifier(images).argmax(1).tolist()
    assert [int(line.split()[1]) for line in lines] == expected
    assert [label for _, label in read_datalist(output, root, num_classes=5)] == expected

    # interrupted after two lines and part of a third: continued, nothing lost or repeated
    output.write_text("\n".join(lines[:2]) + "\n" + lines[2][:7])
    _train(root, output, batch_size=4)
    assert output.read_text().splitlines() == lines
    _train(root, output)  # complete: nothing to do
    assert output.read_text().splitlines() == lines


def test_train_list_leaves_out_unreadable_images(jpeg_tree, tmp_path, capsys):
    root, _, samples = jpeg_tree(classes=1, per_class=3)
    with open(samples[1][0], "wb") as handle:
        handle.write(b"broken")
    output = tmp_path / "list.txt"
    _train(root, output)
    assert len(output.read_text().splitlines()) == 2
    assert f"{samples[1][0]}: UnidentifiedImageError" in capsys.readouterr().err


def test_val_list_from_class_folders_samples_with_a_seed_and_excludes(jpeg_tree, tmp_path):
    root, _, samples = jpeg_tree(classes=3, per_class=4, size=(8, 8), root_name="val")
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    _run("val", "--img_dir", root, "--num_images", 5, "--seed", 1, "--num_classes", 3, "--output", first)
    _run("val", "--img_dir", root, "--num_images", 5, "--seed", 1, "--num_classes", 3, "--output", second)
    chosen = read_datalist(first, root, num_classes=3)
    assert first.read_text() == second.read_text() and len(chosen) == 5 and len(set(chosen)) == 5
    assert set(chosen) <= set(samples)  # labels = sorted folder index
    rest = tmp_path / "rest.txt"
    _run("val", "--img_dir", root, "--num_images", 7, "--exclude", first, "--num_classes", 3, "--output", rest)
    assert set(read_datalist(rest, root)) == set(samples) - set(chosen)
    with pytest.raises(ValueError, match="--num_images 8 but only 7 labelled images remain"):
        _run("val", "--img_dir", root, "--num_images", 8, "--exclude", first, "--num_classes", 3, "--output", rest)


@pytest.fixture
def flat_val(tmp_path):
    folder = tmp_path / "ILSVRC2012_img_val"
    folder.mkdir()
    for number in range(1, 5):
        Image.new("RGB", (8, 8)).save(folder / f"ILSVRC2012_val_{number:08d}.JPEG")
    return folder


def test_val_list_from_ground_truth_files(flat_val, tmp_path):
    output = tmp_path / "out.txt"
    wnids = ["n03", "n01", "n02", "n01"]  # sorted-wnid labels: 2, 0, 1, 0
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text(
        "ImageId,PredictionString\n"
        + "".join(f"ILSVRC2012_val_{i + 1:08d},{wnid} 1 2 3 4\n" for i, wnid in enumerate(wnids))
    )
    _run("val", "--img_dir", flat_val, "--ground_truth", solution, "--num_images", 4, "--output", output)
    assert dict(read_datalist(output, flat_val)) == {
        str(flat_val / f"ILSVRC2012_val_{i + 1:08d}.JPEG"): label for i, label in enumerate([2, 0, 1, 0])
    }

    devkit, synsets = tmp_path / "ILSVRC2012_validation_ground_truth.txt", tmp_path / "map_clsloc.txt"
    devkit.write_text("1\n2\n3\n2\n")
    synsets.write_text("n03 1 c\nn01 2 a\nn02 3 b\n")
    _run(
        "val",
        "--img_dir",
        flat_val,
        "--ground_truth",
        devkit,
        "--synsets",
        synsets,
        "--num_images",
        4,
        "--output",
        output,
    )
    assert sorted(label for _, label in read_datalist(output, flat_val)) == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="holds devkit class ids: pass --synsets"):
        _run("val", "--img_dir", flat_val, "--ground_truth", devkit, "--output", output)

    pairs = tmp_path / "val.txt"
    pairs.write_text("ILSVRC2012_val_00000001.JPEG 7\nILSVRC2012_val_00000002.JPEG 9\n")
    _run("val", "--img_dir", flat_val, "--ground_truth", pairs, "--num_images", 2, "--output", output)
    assert sorted(label for _, label in read_datalist(output, flat_val)) == [7, 9]
    pairs.write_text("ILSVRC2012_val_00000001.JPEG 7\nnot a line at all\n")
    with pytest.raises(ValueError, match=r"val\.txt:2: unrecognised ground-truth line"):
        _run("val", "--img_dir", flat_val, "--ground_truth", pairs, "--output", output)
    with pytest.raises(ValueError, match="has no class subfolders: pass --ground_truth"):
        _run("val", "--img_dir", flat_val, "--output", output)
