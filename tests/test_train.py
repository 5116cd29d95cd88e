"""Training: augmentation, the loop against a plain PyTorch loop, resume, Ctrl-C, transfer,
and the ``train`` / ``augment-preview`` commands."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convlens.cli import main
from convlens.data import TensorImages
from convlens.errors import ConvlensError
from convlens.model import Model, build, load_model
from convlens.train import (
    Augment,
    StepInfo,
    TrainConfig,
    TrainingInterrupted,
    evaluate,
    head_name,
    train,
    with_classes,
)
from convlens.train.augment import (
    affine_matrices,
    apply_affine,
    color_jitter,
    course_augment,
    random_crop,
    random_hflip,
    with_overrides,
)
from convlens.train.datasets import Fitted, Subset
from convlens.train.loop import STATE_FILE, epoch_order, lr_factor

ARCH = "tiny-vgg:in_channels=1,input_size=16,width=4,num_classes=4,padding=1"
CLASSES = ["dark", "left", "right", "top"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convolutions run fastest on one thread (two fight over a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quadrant_data(n: int = 96, seed: int = 0) -> TensorImages:
    """A learnable toy task: which part of a noisy 16×16 image is bright."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    y = torch.arange(n) % 4
    x[y == 1, :, :, :8] += 0.6
    x[y == 2, :, :, 8:] += 0.6
    x[y == 3, :, :8, :] += 0.6
    return TensorImages(x.clamp(0, 1), y, CLASSES, name="quadrants")


def fresh() -> Model:
    return build(ARCH, CLASSES, seed=0)


# ------------------------------------------------------------------ augmentation


def test_random_crop_matches_numpy_windows() -> None:
    x = torch.rand(5, 2, 6, 7)
    out = random_crop(x, 2, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in the documented order
    dy, dx = torch.randint(0, 5, (5,), generator=g), torch.randint(0, 5, (5,), generator=g)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for b in range(5):
        ref = padded[b, :, dy[b] : dy[b] + 6, dx[b] : dx[b] + 7]
        np.testing.assert_array_equal(out[b].numpy(), ref)


def test_flip_and_jitter_properties() -> None:
    x = torch.rand(64, 3, 5, 5)
    flipped = random_hflip(x, torch.Generator().manual_seed(0))
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54
    dim = x * 0.5  # room to brighten without clipping
    bright = color_jitter(dim, torch.Generator().manual_seed(0), brightness=0.3)
    ratio = bright / dim  # one factor per image, within [0.7, 1.3]
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert float(per_image.min()) >= 0.7 - 1e-6 and float(per_image.max()) <= 1.3 + 1e-6
    gray = x[:, :1]
    assert torch.equal(color_jitter(gray, torch.Generator(), saturation=0.5), gray)


def test_augment_is_seeded_and_keeps_input() -> None:
    aug = Augment(crop_padding=2, hflip=True, brightness=0.2, contrast=0.2, saturation=0.2)
    x = torch.rand(8, 3, 10, 10)
    before = x.clone()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(x, before) and a.shape == x.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    with pytest.raises(ConvlensError, match="padding"):
        Augment(crop_padding=-1)


def test_affine_quarter_turn_and_shift_by_hand() -> None:
    """A 90° turn is torch.rot90 (counter-clockwise as displayed), exactly on pixel centres;
    a whole-pixel shift is torch.roll away from the wrapped border."""
    for h in (7, 8):
        x = torch.rand(3, 2, h, h)
        shift = torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, -1.0]])
        angle = torch.tensor([90.0, -90.0, 0.0])
        theta = affine_matrices(angle, torch.ones(3), torch.zeros(3), shift, h, h)
        out = apply_affine(x, theta, "constant")
        torch.testing.assert_close(out[0], torch.rot90(x[0], 1, (-2, -1)), atol=1e-6, rtol=0)
        torch.testing.assert_close(out[1], torch.rot90(x[1], -1, (-2, -1)), atol=1e-6, rtol=0)
        # shift right by 2, up by 1: out[y, x] = in[y + 1, x − 2]; zeros flow in.
        rolled = torch.roll(x[2], (-1, 2), (-2, -1))
        torch.testing.assert_close(out[2, :, :-1, 2:], rolled[:, :-1, 2:], atol=1e-6, rtol=0)
        assert float(out[2, :, :, :2].max()) < 1e-6 and float(out[2, :, -1].max()) < 1e-6


def test_affine_matrix_maps_points_as_documented() -> None:
    """theta sends the normalised position of p' = T·R·Sh·S·p back to that of p."""
    g = torch.Generator().manual_seed(0)
    B, H, W = 6, 10, 14
    angle, scale = 60 * torch.rand(B, generator=g) - 30, 0.8 + 0.4 * torch.rand(B, generator=g)
    shear, shift = 40 * torch.rand(B, generator=g) - 20, 4 * torch.rand(B, 2, generator=g) - 2
    theta = affine_matrices(angle, scale, shear, shift, H, W).numpy()
    p = np.array([2.5, -1.5])  # centred pixel coordinates (x right, y down)
    for b in range(B):
        a, k = math.radians(float(angle[b])), math.tan(math.radians(float(shear[b])))
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        q = rot @ np.array([[1, k], [0, 1]]) @ (float(scale[b]) * p) + shift[b].double().numpy()
        norm = np.array([2 / W, 2 / H])
        back = theta[b, :, :2] @ (q * norm) + theta[b, :, 2]
        np.testing.assert_allclose(back, p * norm, atol=1e-12)


def test_affine_augment_seeded_batched_and_identity_when_off() -> None:
    x = torch.rand(6, 3, 12, 12)
    x[3:] = x[:3]  # identical images must still get their own transforms
    assert torch.equal(Augment()(x, torch.Generator().manual_seed(0)), x)
    aug = Augment(rotation=30, zoom=0.2, shear=10, translate=0.1, vflip=True, fill="reflect")
    a = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(5)))
    assert not torch.allclose(a[:3], a[3:]) and float(a.min()) >= 0 and float(a.max()) <= 1
    # runs saved before the affine fields existed draw the same numbers as before
    old = Augment(crop_padding=1, hflip=True)
    g = torch.Generator().manual_seed(2)
    ref = random_hflip(random_crop(x, 1, g), g)
    assert torch.equal(old(x, torch.Generator().manual_seed(2)), ref)
    assert "rotation ±15°" in course_augment((1, 28, 28)).describe()
    base = Augment(crop_padding=2, hflip=True)
    assert with_overrides(base, rotation=20.0, hflip=None) == Augment(2, True, rotation=20.0)
    with pytest.raises(ConvlensError, match="unknown augmentation 'spin'"):
        with_overrides(base, spin=3)
    for bad, match in ((dict(rotation=200), "rotation"), (dict(zoom=1.0), "zoom"),
                       (dict(shear=-1), "shear"), (dict(fill="wrap"), "nearest")):  # fmt: skip
        with pytest.raises(ConvlensError, match=match):
            Augment(**bad)


def test_lr_schedules() -> None:
    assert [lr_factor("cosine", t) for t in (0, 0.5, 1)] == pytest.approx([1, 0.5, 0])
    assert [lr_factor("step", t) for t in (0.1, 0.6, 0.9)] == pytest.approx([1, 0.1, 0.01])
    with pytest.raises(ConvlensError, match="cosine"):
        TrainConfig(schedule="linear")


def test_fitted_and_subset() -> None:
    rgb = TensorImages(torch.rand(6, 3, 8, 8), torch.arange(6) % 2, ["a", "b"])
    fitted = Fitted(rgb, (1, 8, 8)).get([2])[0]
    r, g, b = rgb.get([2])[0][0]
    torch.testing.assert_close(fitted[0, 0], 0.299 * r + 0.587 * g + 0.114 * b)
    assert Fitted(rgb, (3, 4, 4)).get([0, 1])[0].shape == (2, 3, 4, 4)
    sub = Subset(rgb, 3, seed=0)
    assert len(sub) == 3 and len(set(sub.indices)) == 3


# ------------------------------------------------------------------ the loop


def test_loop_equals_plain_pytorch_sgd(tmp_path: Path) -> None:
    data = quadrant_data()
    config = TrainConfig(epochs=2, batch_size=32, lr=0.1, optimizer="sgd", momentum=0.0,
                         schedule="none", channels_last=False)  # fmt: skip
    model = fresh()
    train(model, data, None, tmp_path / "run", config)
    # The same updates written by hand: plain minibatch SGD on cross-entropy.
    ref = fresh()
    opt = torch.optim.SGD(ref.net.parameters(), lr=0.1)
    for epoch in range(2):
        order = epoch_order(len(data), 0, epoch).tolist()
        for s in range(0, len(order), 32):
            x, y = data.get(order[s : s + 32])
            loss = F.cross_entropy(ref.net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (k, v), (_, w) in zip(model.net.state_dict().items(), ref.net.state_dict().items(),
                              strict=True):  # fmt: skip
        torch.testing.assert_close(v, w, msg=k)


def test_training_learns_and_checkpoint_loads(tmp_path: Path) -> None:
    data, val = quadrant_data(), quadrant_data(48, seed=1)
    steps: list[StepInfo] = []
    result = train(fresh(), data, val, tmp_path / "run", TrainConfig(epochs=4, lr=0.02,
                   batch_size=16), on_step=steps.append)  # fmt: skip
    hist = result.history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4] and hist[-1]["val_acc"] >= 0.9
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert steps[-1].step == steps[-1].steps == 6 and steps[-1].images_per_s > 0
    loaded = load_model(str(tmp_path / "run"))
    assert loaded.classes == CLASSES and loaded.spec.shape == (1, 16, 16)
    loss, acc = evaluate(loaded, val)
    assert acc == pytest.approx(hist[-1]["val_acc"]) and loss == pytest.approx(
        hist[-1]["val_loss"], abs=1e-4
    )
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["epochs_done"] == 4 and meta["training"]["lr"] == 0.02 and len(meta["history"]) == 4
    assert sorted(os.listdir(tmp_path / "run")) == ["model.json", STATE_FILE, "weights.safetensors"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(str(path)).net.state_dict()


def _strip_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


def test_resume_extends_a_finished_run_identically(tmp_path: Path) -> None:
    data = quadrant_data(48)
    # A constant learning rate: with a schedule, a 1-epoch run and a 3-epoch run differ.
    config = TrainConfig(epochs=3, batch_size=16, augment=Augment(crop_padding=1, hflip=True))
    straight = train(fresh(), data, data, tmp_path / "a", config)
    train(fresh(), data, data, tmp_path / "b", TrainConfig(**{**config.__dict__, "epochs": 1}))
    resumed = train(fresh(), data, data, tmp_path / "b", config, resume=True)
    for k, v in _weights(tmp_path / "a").items():
        assert torch.equal(v, _weights(tmp_path / "b")[k]), k
    assert _strip_time(resumed.history) == _strip_time(straight.history)


def test_ctrl_c_saves_and_resumes_mid_epoch(tmp_path: Path) -> None:
    data = quadrant_data(48)
    config = TrainConfig(epochs=2, batch_size=16, schedule="cosine",
                         augment=Augment(crop_padding=1, hflip=True))  # fmt: skip
    train(fresh(), data, None, tmp_path / "a", config)

    def interrupt(info: StepInfo) -> None:
        if info.epoch == 1 and info.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    # The handler in place before training (SIG_IGN when pytest runs in the background, where
    # the shell starts it with SIGINT ignored) must be the one restored, not the default.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(fresh(), data, None, tmp_path / "b", config, on_step=interrupt)
    state = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert state["progress"]["step"] == 2 and state["progress"]["epoch"] == 0
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    train(fresh(), data, None, tmp_path / "b", config, resume=True)
    for k, v in _weights(tmp_path / "a").items():
        assert torch.equal(v, _weights(tmp_path / "b")[k]), k


def test_run_folder_errors(tmp_path: Path) -> None:
    data = quadrant_data(32)
    train(fresh(), data, None, tmp_path / "run", TrainConfig(epochs=1))
    with pytest.raises(ConvlensError, match="--resume"):
        train(fresh(), data, None, tmp_path / "run", TrainConfig(epochs=1))
    other = build(
        "tiny-vgg:in_channels=1,input_size=16,width=6,num_classes=4,padding=1", CLASSES, seed=0
    )
    with pytest.raises(ConvlensError, match="width"):
        train(other, data, None, tmp_path / "run", TrainConfig(epochs=2), resume=True)
    with pytest.raises(ConvlensError, match="nothing to resume"):
        train(fresh(), data, None, tmp_path / "empty", TrainConfig(epochs=1), resume=True)
    assert not (tmp_path / "empty").exists()  # nothing left behind
    (tmp_path / "run" / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(ConvlensError, match="corrupt"):
        train(fresh(), data, None, tmp_path / "run", TrainConfig(epochs=2), resume=True)


# ------------------------------------------------------------------ transfer learning


def test_feature_extraction_trains_only_the_head(tmp_path: Path) -> None:
    model = fresh()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    train(model, quadrant_data(), None, tmp_path / "r",
          TrainConfig(epochs=1, mode="feature-extraction"))  # fmt: skip
    head = head_name(model.net)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]) != k.startswith(head + "."), k


def test_finetune_uses_lower_body_lr_and_new_head(tmp_path: Path) -> None:
    base = fresh()
    model = with_classes(base, ["a", "b"])
    assert model.num_outputs == 2 and model.classes == ["a", "b"]
    torch.testing.assert_close(
        model.net.state_dict()["conv_1_1.weight"], base.net.state_dict()["conv_1_1.weight"]
    )
    from convlens.train.loop import make_optimizer

    opt = make_optimizer(model, TrainConfig(lr=0.01, mode="finetune", body_lr_scale=0.1))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.01])
    assert len(opt.param_groups[1]["params"]) == 2  # the head's weight and bias


# ------------------------------------------------------------------ the commands


def write_folder(root: Path, n: int = 40) -> None:
    data = quadrant_data(n)
    for i in range(n):
        x, y = data.get([i])
        folder = root / CLASSES[int(y)]
        folder.mkdir(parents=True, exist_ok=True)
        arr = (x[0, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr, "L").save(folder / f"{i:03d}.png")


def test_cli_train_resume_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    args = ["train", "-d", str(tmp_path / "imgs"), "-m", "tiny-vgg:width=4", "--epochs", "1",
            "--out", str(out), "--batch-size", "8"]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"]["args"]["input_size"] == 16 and meta["classes"] == CLASSES
    assert main([*args[:5], "--epochs", "2", *args[7:], "--resume"]) == 0
    assert json.loads((out / "model.json").read_text())["epochs_done"] == 2
    with Image.open(out / "curves.png") as curves:  # the run's learning curves, both epochs
        assert curves.width > 400
    assert "learning curves: " in capsys.readouterr().err
    wrong = ["train", "-d", str(tmp_path / "imgs"), "-m", "resnet18:width=4", "--epochs", "3",
             "--out", str(out), "--resume"]  # fmt: skip
    assert main(wrong) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "resume" in err and "Traceback" not in err
    assert main([*args[:3], "-m", "no-such-net", *args[5:]]) == 2
    (tmp_path / "file").write_text("x")
    assert main([*args[:7], "--out", str(tmp_path / "file" / "run"), *args[9:]]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err


def test_cli_missing_and_corrupt_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from convlens.data import fashion_mnist as fm

    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    args = ["train", "-d", "fashion-mnist", "--data-dir", str(tmp_path), "--out",
            str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    assert "--download" in capsys.readouterr().err
    for name in fm.FILES["train"] + fm.FILES["test"]:
        (tmp_path / name).write_bytes(b"\x1f\x8b not gzip")
    fm._decode.cache_clear()
    assert main(args) == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_augment_preview(tmp_path: Path) -> None:
    write_folder(tmp_path / "imgs", 8)
    out = tmp_path / "preview.png"
    assert main(["augment-preview", "-d", str(tmp_path / "imgs"), "--split", "all",
                 "--count", "3", "--variants", "4", "--out", str(out)]) == 0  # fmt: skip
    img = Image.open(out)
    assert img.width > 5 * 72 and img.height > 3 * 72
    assert main(["augment-preview", "-d", str(tmp_path / "imgs"), "--out", "x.jpg"]) == 2


def test_cli_geometric_augmentation_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Keras course's flags reach the preview and the run's stored augmentation."""
    write_folder(tmp_path / "imgs", 8)
    data = str(tmp_path / "imgs")
    out = tmp_path / "p.png"
    assert main(["augment-preview", "-d", data, "--split", "all", "--rotation", "15",
                 "--vflip", "--zoom", "0.1", "--out", str(out)]) == 0  # fmt: skip
    assert out.is_file()
    assert main(["augment-preview", "-d", data, "--shear", "nan", "--out", str(out)]) == 2
    assert "shear" in capsys.readouterr().err
    run = tmp_path / "run"
    args = ["train", "--model", "tiny-vgg:in_channels=3,input_size=16", "-d", data, "--epochs",
            "1", "--rotation", "10", "--translate", "0.1", "--out", str(run)]  # fmt: skip
    assert main(args) == 0
    stored = json.loads((run / "model.json").read_text())["training"]["augment"]
    assert (stored["rotation"], stored["translate"]) == (10.0, 0.1)


def test_epoch_order_is_a_seeded_permutation() -> None:
    a, b = epoch_order(50, 0, 3), epoch_order(50, 0, 3)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_order(50, 0, 4))
    assert math.isclose(float(a.float().mean()), 24.5)


# ------------------------------------------------------------------ the demo model


def write_fmnist_idx(folder: Path, n: int = 40) -> None:
    """Tiny Fashion-MNIST IDX files (uncompressed): header, big-endian sizes, raw bytes."""
    from convlens.data import fashion_mnist as fm

    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10)
    for split in ("train", "test"):
        for name, arr in zip(fm.FILES[split], arrays, strict=True):
            head = bytes([0, 0, 8, arr.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in arr.shape
            )
            (folder / name.removesuffix(".gz")).write_bytes(head + arr.tobytes())


def test_export_demo_writes_a_loadable_checkpoint_with_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convlens.data import fashion_mnist as fm
    from convlens.train import export_demo

    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "none")
    fm._decode.cache_clear()
    write_fmnist_idx(tmp_path)
    data = fm.open_fashion_mnist("train", str(tmp_path))
    model = build("tiny-vgg:in_channels=1,input_size=28", data.classes, seed=0)
    train(model, data, None, tmp_path / "run", TrainConfig(epochs=1))
    args = [str(tmp_path / "run"), "--dest", str(tmp_path / "demo"), "--data-dir", str(tmp_path)]
    assert export_demo.main(args) == 2  # random weights: far below the accuracy bar
    monkeypatch.setattr(export_demo, "MIN_ACCURACY", 0.0)
    assert export_demo.main(args) == 0
    demo = load_model(str(tmp_path / "demo"))
    assert sorted(os.listdir(tmp_path / "demo")) == ["model.json", "samples", "weights.safetensors"]
    assert [s.label for s in demo.samples] == [c for c in range(10) for _ in range(2)]
    first = demo.samples[0]
    assert first.path.name == "00_0_t-shirt-top-00000.png"
    x, _ = data.get([0])  # test split = train split in these files
    torch.testing.assert_close(demo.load_image(first.path), x)


def test_bundled_demo_model() -> None:
    demo = load_model("demo")
    assert demo.spec.shape == (1, 28, 28) and demo.classes[9] == "Ankle boot"
    assert len(demo.samples) == 20 and all(s.path.suffix == ".png" for s in demo.samples)
    weights = Path(demo.samples[0].path).parents[1] / "weights.safetensors"
    assert weights.stat().st_size < 2**20
    from convlens.data import fashion_mnist as fm

    if not (fm.SYSTEM_DIR / fm.FILES["test"][0]).is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    _, accuracy = evaluate(demo, fm.open_fashion_mnist("test"))
    assert accuracy >= 0.88


def test_cli_feature_extraction_from_a_checkpoint(tmp_path: Path) -> None:
    write_folder(tmp_path / "four")
    base = ["-m", "tiny-vgg:width=4,padding=1", "--epochs", "1", "--batch-size", "8"]
    assert main(["train", "-d", str(tmp_path / "four"), "--out", str(tmp_path / "a"), *base]) == 0
    for cls in CLASSES[2:]:  # a new task with two of the classes
        for p in (tmp_path / "four" / cls).iterdir():
            (tmp_path / "two" / cls).mkdir(parents=True, exist_ok=True)
            p.rename(tmp_path / "two" / cls / p.name)
    args = ["train", "-d", str(tmp_path / "two"), "-m", str(tmp_path / "a"), "--freeze",
            "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(args) == 0
    before, after = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    assert after.classes == CLASSES[2:] and after.num_outputs == 2
    torch.testing.assert_close(
        after.net.get_submodule("conv_2_2").weight, before.net.get_submodule("conv_2_2").weight
    )
    assert main([*args[:-2], "--finetune", "--out", str(tmp_path / "c")]) == 2  # both modes
