"""``convlens curves``: history reading, the overfitting mark and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main
from convlens.errors import ConvlensError
from convlens.model import build
from convlens.model.checkpoint import save_checkpoint
from convlens.train.curves import PANEL, curves_figure, overfit_epoch, read_history, read_runs

ARCH = "tiny-vgg:in_channels=1,input_size=16,width=4,num_classes=4,padding=1"


def write_run(folder: Path, val_loss: list[float] | None, n: int = 8) -> None:
    """A checkpoint as `convlens train` writes it, with a synthetic history."""
    history = []
    for e in range(1, n + 1):
        rec = {"epoch": e, "train_loss": 1.0 / e, "train_acc": 1 - 0.5 / e, "lr": 0.01}
        if val_loss is not None:
            rec |= {"val_loss": val_loss[e - 1], "val_acc": 0.5 + 0.04 * e}
        history.append(rec)
    save_checkpoint(build(ARCH, list("abcd"), seed=0), folder, history=history)


def hand_mark(val: list[float]) -> int | None:
    """Epoch (1-based) of the first minimum, if any later value exceeds it."""
    i = int(np.argmin(val))
    return i + 1 if max(val[i + 1 :], default=-np.inf) > val[i] else None


def test_overfit_epoch_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    cases = [[0.9, 0.7, 0.5, 0.55, 0.6], [0.9, 0.7, 0.5, 0.4], [0.5, 0.5, 0.5], [0.4, 0.6, 0.4]]
    cases += [list(rng.random(9)) for _ in range(20)]
    for val in cases:
        assert overfit_epoch(list(range(1, len(val) + 1)), val) == hand_mark(val), val
    assert overfit_epoch([1, 2, 3], [None, None, None]) is None
    assert overfit_epoch([1, 2, 3], [None, 0.3, 0.5]) == 2


def test_figure_marks_the_epoch_and_has_its_size(tmp_path: Path) -> None:
    val = [1.0, 0.8, 0.6, 0.5, 0.55, 0.7, 0.8, 0.9]
    write_run(tmp_path / "overfit", val)
    write_run(tmp_path / "plain", None)
    runs = read_runs([tmp_path / "overfit", tmp_path / "plain"])
    assert [r.name for r in runs] == ["overfit", "plain"] and not runs[1].has_validation
    assert runs[0].values["val_loss"] == val and runs[0].epochs == list(range(1, 9))
    out = tmp_path / "figs" / "c.png"
    out.parent.mkdir()
    assert main(["curves", str(tmp_path / "overfit"), str(tmp_path / "plain"), "-o", str(out)]) == 0
    img = Image.open(out)
    fig = curves_figure(runs)
    assert img.size == fig.size
    assert img.width > 2 * PANEL[0] and img.height > PANEL[1] + 60


def test_bad_runs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "ok", [0.5] * 8)
    save_checkpoint(build(ARCH, list("abcd"), seed=0), tmp_path / "untrained")
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    write_run(bad, [0.5] * 8)
    doc = json.loads((bad / "model.json").read_text())
    doc["history"][2]["val_loss"] = "NaN?"
    (bad / "model.json").write_text(json.dumps(doc))
    for run, message in (("missing", "does not exist"), ("untrained", "no training history"),
                         ("empty", "no model.json"), ("bad", "val_loss")):  # fmt: skip
        assert main(["curves", str(tmp_path / "ok"), str(tmp_path / run), "-o",
                     str(tmp_path / "c.png")]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    with pytest.raises(ConvlensError, match="increasing"):
        doc["history"][2] = {"epoch": 1, "train_loss": 0.1}
        (bad / "model.json").write_text(json.dumps(doc))
        read_history(bad)
    assert not (tmp_path / "c.png").exists()
