"""The CLI's model flags and clean errors for model files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convlens.cli import main
from convlens.cli.common import input_overrides, open_model, parse_input_size
from convlens.errors import ConvlensError
from convlens.model import Model, build

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"


def test_summary_of_cnn_explainer_model_json(capsys: pytest.CaptureFixture[str]) -> None:
    if not (FIXTURE / "model.json").is_file():
        pytest.skip("CNN Explainer fixture not found")
    assert main(["summary", str(FIXTURE / "model.json")]) == 0
    out = capsys.readouterr().out
    assert "cnn-explainer: input 3×64×64, 10 classes" in out
    assert "conv_1_1" in out and "max_pool_2" in out and "19,920" in out


def test_flags_reach_the_model(tmp_path: Path) -> None:
    net = build("tiny-vgg:in_channels=1,input_size=28", seed=0).net.eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 1, 28, 28),)), path)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"item {i}" for i in range(10)) + "\n")
    m = open_model(str(path), classes=str(classes), mean="0.5", std="0.25")
    assert m.classes[3] == "item 3"
    assert m.spec.mean == (0.5,) and m.spec.std == (0.25,)
    assert m.spec.shape == (1, 28, 28)


def test_sidecar_json_gives_classes_and_spec(tmp_path: Path) -> None:
    net = build("tiny-vgg:input_size=32", seed=0).net.eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 32, 32),)), path)
    doc = {"classes": [f"k{i}" for i in range(10)], "input_spec": {"mean": [0.5], "std": [0.5]}}
    (tmp_path / "net.convlens.json").write_text(json.dumps(doc))
    m = open_model(str(path))
    assert m.classes[0] == "k0" and m.spec.mean == (0.5, 0.5, 0.5)


def test_flag_parsing() -> None:
    assert parse_input_size("224") == {"height": 224, "width": 224}
    assert input_overrides(None, "0.1, 0.2,0.3", None, 3) == {
        "mean": [0.1, 0.2, 0.3],
        "channels": 3,
    }
    with pytest.raises(ConvlensError, match="H or H,W"):
        parse_input_size("big")
    with pytest.raises(ConvlensError, match="--mean takes 1 or 3 finite numbers"):
        input_overrides(mean="a,b")


def test_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = tmp_path / "thing.json"
    unknown.write_text("{}")
    assert main(["summary", str(unknown)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: cannot tell what kind of model") and "tfjs" in err and "onnx" in err
    )
    assert "Traceback" not in err
    whole = tmp_path / "whole.pt"
    torch.save(build("tiny-vgg:input_size=32").net, whole)
    assert main(["summary", str(whole), "--arch", "tiny-vgg:input_size=32"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err


def test_an_unforeseen_reader_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last line of defence: a library error escaping a reader (here an IndexError from
    inside the ONNX reader) reaches the user as one line naming the reader and file, exit 2."""
    import dataclasses

    from convlens.model import load as load_module

    def broken(source: str, opts: load_module.LoadOptions) -> Model:
        raise IndexError("list index out of range")

    onnx = dataclasses.replace(load_module.FORMATS.get("onnx"), load=broken)
    monkeypatch.setattr(load_module.FORMATS, "get", lambda name: onnx)
    path = tmp_path / "net.onnx"
    path.write_bytes(b"\x08\x07")
    assert main(["summary", str(path), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert "onnx reader could not convert" in err and "IndexError" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
