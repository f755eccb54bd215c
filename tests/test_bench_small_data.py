"""bench.small_data on a tiny setting: one classifier, one head by the README's command (one step), every row written."""

from __future__ import annotations

import json
import math

import torch

from bench import small_data


def test_tiny_study_writes_every_method_and_the_verdict(tmp_path, run_command):
    argv = [
        "--output_dir", str(tmp_path / "out"),
        "--datasets", "shapes",
        "--networks", "demo-cnn",
        "--seeds", "0",
        "--head_inits", "classifier",
        "--canvas_size", "32",
        "--num_train", "8", "--num_val", "4", "--num_test", "6",
        "--classifier_epochs", "1", "--head_epochs", "2", "--head_batch_size", "8",
        "--no_progress", "--score_epochs",
    ]  # fmt: skip
    status, out, err = run_command(small_data.main, small_data.get_args_parser(), argv)
    assert status == 0, err
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {row["method"]: row for row in written["rows"]}
    assert list(rows) == ["gradcam", "lcam_init", "lcam_classifier"]
    for row in rows.values():
        assert row["images"] == 6
        assert all(math.isfinite(row[column]) for column in ("AD100", "IC100", "AD50", "IC50", "AD15", "IC15"))
    assert rows["lcam_classifier"]["head_steps"] == 2 and rows["lcam_classifier"]["head_cpu_seconds"] > 0
    # --score_epochs: the start and both epochs scored; the recipe's rule picks the head training kept
    (run,) = json.loads((tmp_path / "out" / "epochs.json").read_text())["runs"]
    assert [entry["epoch"] for entry in run["epochs"]] == [-1, 0, 1]
    assert run["epochs"][0]["test"] == {key: rows["lcam_init"][key] for key in run["epochs"][0]["test"]}
    head_dir = tmp_path / "out" / "shapes" / "demo-cnn" / "seed0" / "lcam_classifier"
    kept = torch.load(head_dir / "lcam_best.pth.tar", weights_only=True)["epoch"]
    recipe_pick = small_data.EPOCH_RULES["ad, the start competing (the recipe)"](run["epochs"])
    assert recipe_pick == kept
    kept_row = next(entry for entry in run["epochs"] if entry["epoch"] == kept)["test"]
    assert kept_row["AD100"] == rows["lcam_classifier"]["AD100"]
    assert "| ad, the start competing (the recipe) | " + str(kept) in (tmp_path / "out" / "epochs.md").read_text()
    assert (tmp_path / "out" / "shapes" / "demo-cnn" / "seed0" / "lcam_classifier" / "lcam_best.pth.tar").is_file()
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "### shapes, demo-cnn" in markdown and "pointing game" in markdown and "usual tolerance of 2 px" in markdown
    assert markdown.startswith(
        f"Command: `python -m bench.small_data --output_dir {tmp_path / 'out'} --datasets shapes"
    )
    assert rows["gradcam"]["pointing_tolerance"] == 2 and 0 <= rows["gradcam"]["pointing_game_tolerant"] <= 100
    assert all(row["pointing_game"] <= row["pointing_game_ceiling"] <= 100 for row in rows.values())
    assert "at this network's resolution, upsampled, can score more than" in markdown
    assert (tmp_path / "out" / "results.csv").read_text().startswith("dataset,network,seed,method,AD100")


def test_unknown_network_is_one_line(tmp_path, run_command):
    status, _, err = run_command(
        small_data.main, small_data.get_args_parser(), ["--output_dir", str(tmp_path), "--networks", "vgg"]
    )
    assert status == 2 and "--networks: unknown ['vgg']; valid: demo-cnn, resnet18, resnet18-small" in err


def test_resnet18_for_small_images_keeps_a_4x4_grid_at_64_px():
    import torch

    from models.generic import GenericLCAM, load_network

    spec, layer, _, _ = small_data.NETWORKS["resnet18-small"]
    network, _ = load_network(spec, pretrained=False, num_classes=6)
    model = GenericLCAM(network, layer=layer, input_size=64, backbone_mode="frozen").eval()
    with torch.no_grad():
        maps = model.feature_maps(model.normalize(torch.rand(1, 3, 64, 64)))
    assert maps.shape == (1, 512, 4, 4)  # torchvision's ResNet-18 gives 2 x 2 here


def test_classifier_epochs_default_per_network(tmp_path, monkeypatch):
    import torch

    epochs_used = []

    def fake_train(network, layer, images, labels, device, epochs, **kwargs):
        epochs_used.append(epochs)
        return small_data.NormalizedClassifier(network, layer)

    monkeypatch.setattr(small_data, "train_classifier", fake_train)
    split = small_data.DigitsSplit(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), torch.zeros(2, 4), ["a", "b"])
    for network, flag in (("demo-cnn", []), ("resnet18-small", []), ("demo-cnn", ["--classifier_epochs", "3"])):
        args = small_data.get_args_parser().parse_args(flag)
        args.num_classes = 2
        run_dir = tmp_path / f"{network}{len(epochs_used)}"
        run_dir.mkdir()
        small_data._classifier(args, network, split, str(run_dir), 0, torch.device("cpu"))
    assert epochs_used == [12, 8, 3]
    defaults = small_data.get_args_parser().parse_args([])
    assert defaults.networks == "demo-cnn,resnet18-small"
    assert [small_data.head_epochs(defaults, network) for network in ("demo-cnn", "resnet18-small")] == [10, 3]
    given = small_data.get_args_parser().parse_args(["--head_epochs", "2"])
    assert [small_data.head_epochs(given, network) for network in ("demo-cnn", "resnet18-small")] == [2, 2]
