"""bench.check_classifiers: a row per classifier with its layer and CAM size, or its refusal."""

from __future__ import annotations

import json

from bench import check_classifiers


def test_rows_and_refusals(tmp_path, capsys, one_thread):
    output = tmp_path / "rows.json"
    names = "tests.test_generic:tiny_vit,tests.test_generic:tiny_swin,no_such_net"
    flags = ["--names", names, "--size", "32", "--output", str(output)]
    rows = check_classifiers.main(check_classifiers.get_args_parser().parse_args(flags))
    vit, swin, unknown = rows
    assert (vit["layer"], vit["layout"], vit["cam_size"]) == ("encoder.layers.encoder_layer_0", "sequence", [4, 4])
    assert (swin["layer"], swin["layout"], swin["cam_size"]) == ("norm", "channels_last", [4, 4])
    assert unknown["refused"].startswith("unknown backbone 'no_such_net'")
    assert json.loads(output.read_text())["rows"] == rows
    assert "2 of 3 wrap with a grid of the image; 1 refused" in capsys.readouterr().out
