"""The command line's shared behaviour: discovery, clean errors, `summary` and `demo`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from convlens.cli import main
from convlens.model.checkpoint import is_checkpoint
from convlens.model.load import demo_folder


def test_summary_prints_the_table_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "tiny-vgg"]) == 0
    out = capsys.readouterr().out
    assert "conv_2_2" in out and "19,920" in out and "16×16" in out  # RF of max_pool_2


def test_summary_flags_a_window_that_does_not_tile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "tiny-vgg:input_size=9,blocks=1"]) == 0
    out = capsys.readouterr().out
    assert "does not tile" in out and "2.50" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "tiny-vg"], "Did you mean 'tiny-vgg'"),
        (["summary", "no/such/file.pt"], "does not exist"),
        (["summary", "tiny-vgg:width=ten"], "must be a"),
    ],
)
def test_bad_model_is_one_line_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_entry_point_runs_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "convlens", "summary", "nonexistent-model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr


def test_demo_model_is_bundled_and_predicts_its_samples() -> None:
    if not is_checkpoint(demo_folder()):
        pytest.skip("demo weights not generated yet (make demo-model)")
    import convlens

    model = convlens.load_model("demo")
    assert model.spec.shape == (1, 28, 28) and len(model.classes) == 10
    assert len(model.samples) == 20
    import torch

    x = torch.cat([model.load_image(s.path) for s in model.samples])
    pred = model.probabilities(x).argmax(1)
    labels = torch.tensor([s.label for s in model.samples])
    assert (pred == labels).float().mean() >= 0.7
