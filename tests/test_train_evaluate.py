"""``convlens evaluate``: accuracy, per-class accuracy and the confusion matrix against numpy
on the model's own predictions; the figures and the error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.cli import main
from convlens.data import TensorImages, open_dataset
from convlens.errors import ConvlensError
from convlens.model import build, load_model
from convlens.model.checkpoint import save_checkpoint
from convlens.train.evaluation import confusion_figure, evaluate_model

ARCH = "tiny-vgg:in_channels=1,input_size=16,width=4,num_classes=4,padding=1"
CLASSES = ["dark", "left", "right", "top"]


def write_folder(root: Path, n: int = 48) -> None:
    """A small image folder ROOT/CLASS/*.png of noisy 16×16 images."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 16, 16, generator=g) * 0.3
    y = torch.arange(n) % 4
    x[y == 1, :, :8] += 0.6
    x[y == 2, :, 8:] += 0.6
    x[y == 3, :8, :] += 0.6
    for i in range(n):
        folder = root / CLASSES[int(y[i])]
        folder.mkdir(parents=True, exist_ok=True)
        arr = (x[i].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr, "L").save(folder / f"{i:03d}.png")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    write_folder(tmp_path / "imgs")
    # An untrained net with biased weights, so that it is right on some images, wrong on others.
    m = build(ARCH, CLASSES, seed=3)
    save_checkpoint(m, tmp_path / "model")
    return tmp_path / "imgs", tmp_path / "model"


def numpy_reference(model_dir: Path, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions from one forward pass of the whole set, outside convlens'
    batching."""
    m = load_model(str(model_dir))
    data = open_dataset(data_dir, "all")
    x, y = data.get(range(len(data)))
    with torch.no_grad():
        logits = m.eval()(x).numpy()
    return y.numpy(), logits.argmax(axis=1)


def test_metrics_equal_numpy_on_the_models_predictions(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    data_dir, model_dir = setup
    out = tmp_path / "report"
    assert main(["evaluate", str(model_dir), "-d", str(data_dir), "--split", "all",
                 "--batch-size", "5", "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    y, pred = numpy_reference(model_dir, data_dir)
    confusion = np.zeros((4, 4), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    assert metrics["confusion"] == confusion.tolist() and metrics["images"] == len(y)
    assert metrics["accuracy"] == pytest.approx(float((y == pred).mean()))
    assert 0 < metrics["accuracy"] < 1  # the test sees both right and wrong answers
    for k, name in enumerate(CLASSES):
        assert metrics["per_class"][name] == pytest.approx(float((pred[y == k] == k).mean()))
    assert Image.open(out / "confusion.png").width > 200
    wrong = Image.open(out / "wrong.png")
    assert wrong.width > 84 and wrong.height > 84


def test_most_confident_wrong_order_and_class_matching(setup: tuple[Path, Path]) -> None:
    data_dir, model_dir = setup
    m = load_model(str(model_dir))
    data = open_dataset(data_dir, "all")
    ev = evaluate_model(m, data, batch_size=7)
    x, y = data.get(range(len(data)))
    with torch.no_grad():
        prob = m.eval()(x).softmax(1).numpy()
    wrong = np.flatnonzero(prob.argmax(1) != y.numpy())
    conf = prob.max(1)[wrong]
    picks = ev.most_confident_wrong(5)
    assert picks == wrong[np.argsort(-conf, kind="stable")][:5].tolist()
    np.testing.assert_allclose(ev.confidence.numpy(), prob.max(1), rtol=1e-6)
    # The same model with its classes in another order is matched by name.
    shuffled = build(ARCH, CLASSES[::-1], seed=3)
    with torch.no_grad():
        for p, q in zip(shuffled.net.parameters(), m.net.parameters(), strict=True):
            p.copy_(q)
    renamed = evaluate_model(shuffled, data)
    idx = prob.argmax(1)
    expected = np.array([CLASSES.index(CLASSES[::-1][i]) for i in idx])
    assert renamed.predictions.tolist() == expected.tolist()
    fig = confusion_figure(ev)
    assert fig.width > 4 * 22 and fig.height > 4 * 22


def test_bad_inputs_are_one_line_errors(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, model_dir = setup
    other = build(ARCH.replace("num_classes=4", "num_classes=3"), ["a", "b", "c"], seed=0)
    save_checkpoint(other, tmp_path / "three")
    cases = [
        ([str(tmp_path / "three"), "-d", str(data_dir), "--split", "all"], "3 classes"),
        ([str(model_dir), "-d", str(tmp_path / "nowhere")], "nowhere"),
        ([str(model_dir), "-d", str(data_dir), "--batch-size", "0"], "--batch-size"),
    ]
    for args, message in cases:
        assert main(["evaluate", *args, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()
    small = TensorImages(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), CLASSES)
    with pytest.raises(ConvlensError, match="takes"):
        evaluate_model(load_model(str(model_dir)), small)
