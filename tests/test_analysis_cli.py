"""The scan/report/map/neighbors commands end to end on a tiny image folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main
from convlens.model import Model
from convlens.model.checkpoint import save_checkpoint


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two classes of 6 gray 28×28 images (bright squares at different places), one broken."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("left", "right")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            img = (rng.random((28, 28)) * 60).astype(np.uint8)
            img[8:20, 2 + 14 * c : 12 + 14 * c] = 230
            Image.fromarray(img).save(root / cls / f"{i}.png")
    (root / "right" / "3.png").write_bytes(b"\x89PNG broken")
    return root


@pytest.fixture
def model_dir(tiny_vgg: Model, tmp_path: Path) -> str:
    return str(save_checkpoint(tiny_vgg, tmp_path / "model"))


def test_scan_report_map_neighbors(
    folder: Path, model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scan"
    argv = ["scan", model_dir, "--dataset", str(folder), "--split", "all",
            "--layers", "relu_2_2,conv_2_1", "--top-k", "4", "--batch-size", "5",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s)" in err and "3.png" in err
    meta = json.loads((out / "scan.json").read_text())
    assert meta["complete"] and meta["images_done"] == 12 and len(meta["skipped"]) == 1
    assert (out / "patches" / "relu_2_2.png").is_file()
    assert (out / "patches" / "conv_2_1" / "unit-000.png").is_file()
    assert (out / "report.png").is_file()
    assert main(argv) == 0  # a finished scan is reused
    assert main(["report", str(out), "--rare", "0.5"]) == 0
    assert "relu_2_2" in capsys.readouterr().out
    assert main(["report", str(out), "--rare", "2"]) == 2

    mapped = tmp_path / "map"
    assert main(["map", model_dir, "--dataset", str(folder), "--split", "all", "--n", "20",
                 "--method", "pca", "--out", str(mapped)]) == 0  # fmt: skip
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err
    assert (mapped / "map-pca-grid.png").is_file() and (mapped / "map-pca-scatter.png").is_file()
    fig = tmp_path / "nn.png"
    query = folder / "left" / "0.png"
    assert main(["neighbors", model_dir, str(query), "--dataset", str(folder), "--split",
                 "all", "--map", str(mapped), "--k", "3", "--out", str(fig)]) == 0  # fmt: skip
    out_text = capsys.readouterr().out
    assert "left" in out_text and fig.is_file()
    first = out_text.split("distance")[1]
    assert "0.0000" in first  # the query itself is in the data set, at distance 0


def test_bad_inputs_are_one_line_errors(
    folder: Path, model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty" / "cls"
    empty.mkdir(parents=True)
    assert main(["scan", model_dir, "--dataset", str(empty.parent), "--split", "all",
                 "--out", str(tmp_path / "s")]) == 2  # fmt: skip
    assert "no images" in capsys.readouterr().err
    assert main(["scan", model_dir, "--dataset", str(folder), "--split", "all",
                 "--layers", "nope", "--out", str(tmp_path / "s")]) == 2  # fmt: skip
    assert "unknown layer 'nope'" in capsys.readouterr().err
    assert main(["map", model_dir, "--dataset", str(folder), "--split", "all",
                 "--method", "mds", "--out", str(tmp_path / "m")]) == 2  # fmt: skip
    assert "accepted: pca, tsne, umap" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no scan" in capsys.readouterr().err


def test_patch_titles_promise_no_more_hits_than_kept(
    folder: Path, model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue #14: with --top-k 4 the layer overview said "top 8"."""
    import convlens.analysis.patches as patches

    titles: list[str] = []
    real_caption = patches.caption

    def spy(image: Image.Image, text: str, *args: Any, **kwargs: Any) -> Image.Image:
        titles.append(text)
        return real_caption(image, text, *args, **kwargs)

    monkeypatch.setattr(patches, "caption", spy)
    argv = ["scan", model_dir, "--dataset", str(folder), "--split", "all", "--layers",
            "conv_2_1", "--top-k", "4", "--out", str(tmp_path / "scan")]  # fmt: skip
    assert main(argv) == 0
    overview = [t for t in titles if "receptive-field patches per unit" in t]
    assert overview == ["conv_2_1: top 4 receptive-field patches per unit"]
