"""``train --watch``: the snapshots' steps and values against hand computations, kill -9 and
``--resume``, the ``timeline`` command and its errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from convlens.cli import main
from convlens.data import TensorImages
from convlens.model import Model, build
from convlens.model.checkpoint import read_safetensors
from convlens.train import StepInfo, TrainConfig, train
from convlens.train.watch import (
    FRAMES_DIR,
    INDEX_FILE,
    Watch,
    read_frame,
    read_index,
    read_probe,
    timeline_dir,
)

ARCH = "tiny-vgg:in_channels=1,input_size=16,width=4,num_classes=4"
CLASSES = ["dark", "left", "right", "top"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quadrants(n: int, size: int = 16, seed: int = 0) -> TensorImages:
    """Which part of a noisy image is bright: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.3
    y = torch.arange(n) % 4
    h = size // 2
    x[y == 1, :, :, :h] += 0.6
    x[y == 2, :, :, h:] += 0.6
    x[y == 3, :, :h, :] += 0.6
    return TensorImages(x.clamp(0, 1), y, CLASSES, name="quadrants")


def expected_steps(every: int, steps_per_epoch: int, epochs: int) -> list[int]:
    total = steps_per_epoch * epochs
    grid = set(range(0, total + 1, every))
    ends = {steps_per_epoch * e for e in range(1, epochs + 1)}
    return sorted(grid | ends)


def conv_of(model: Model, name: str) -> torch.nn.Conv2d:
    """The network's convolution ``name``, read straight from the module tree."""
    conv = model.net.get_submodule(name)
    assert isinstance(conv, torch.nn.Conv2d)
    return conv


def manual_forward(net: torch.nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every child's output, by name, from a plain loop over the Sequential."""
    outs = {}
    h = x
    for name, layer in net.named_children():
        h = layer(h)
        outs[name] = h
    return outs


# ------------------------------------------------------------------ snapshots


def test_snapshots_at_the_right_steps_with_the_right_values(tmp_path: Path) -> None:
    data, val = quadrants(48), quadrants(20, seed=1)
    model = build(ARCH, CLASSES, seed=0)
    bias = conv_of(model, "conv_1_2").bias
    assert bias is not None
    with torch.no_grad():  # a unit that can never fire: the dead count is not trivially 0
        bias[0] = -1e3
    weights_at: dict[int, torch.Tensor] = {}

    def on_step(s: StepInfo) -> None:
        weights_at[(s.epoch - 1) * s.steps + s.step] = (
            conv_of(model, "conv_1_1").weight.detach().clone()
        )

    watch = Watch(every=4)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.01, optimizer="sgd", channels_last=False)
    train(model, data, val, tmp_path / "run", config, on_step=on_step, watch=watch)
    index = read_index(tmp_path / "run")
    assert [f.step for f in index.frames] == expected_steps(4, 6, 2) == [0, 4, 6, 8, 12]
    assert [f.epoch_end for f in index.frames] == [False, False, True, False, True]
    assert index.frames[0].loss is None and index.frames[2].val_acc is not None
    assert index.frames[1].val_loss is None and index.frames[1].loss is not None
    history = json.loads((tmp_path / "run" / "model.json").read_text())["history"]
    assert index.frames[-1].val_loss == history[-1]["val_loss"]
    assert index.frames[-1].loss == history[-1]["train_loss"]

    # filters: the weights at that step (as training saw them, and as the checkpoint holds)
    for i, f in enumerate(index.frames[1:], start=1):
        torch.testing.assert_close(read_frame(tmp_path / "run", index, i)["filters"],
                                   weights_at[f.step], rtol=0, atol=0)  # fmt: skip
    final = read_safetensors(tmp_path / "run" / "weights.safetensors")
    last = read_frame(tmp_path / "run", index, len(index.frames) - 1)
    torch.testing.assert_close(last["filters"], final["conv_1_1.weight"], rtol=0, atol=0)

    # dead units, activations and Grad-CAM recomputed by hand from the final weights
    probe, labels = read_probe(timeline_dir(tmp_path / "run"))
    torch.testing.assert_close(probe, (val.images[: len(probe)] * 255).round() / 255)
    check = build(ARCH, CLASSES, seed=0)
    check.net.load_state_dict(final)
    net = check.net.eval()
    assert isinstance(net, torch.nn.Sequential)
    with torch.no_grad():
        outs = manual_forward(net, probe)  # tiny-vgg: mean 0, std 1 (no normalisation)
    for name in index.plan.dead:
        never_positive = (outs[name] <= 0).all(dim=3).all(dim=2).all(dim=0)
        assert index.frames[-1].dead[name] == int(never_positive.sum())
        assert torch.equal(last[f"dead/{name}"].bool(), never_positive)
    assert index.frames[-1].dead["relu_1_2"] >= 1
    for name in index.plan.show:
        torch.testing.assert_close(last[f"act/{name}"].float(), outs[name][0, :8],
                                   atol=2e-3, rtol=2e-3)  # fmt: skip
    x = probe[:1].clone()
    h = x
    for name, layer in net.named_children():
        h = layer(h)
        if name == index.plan.cam:
            act = h
            act.retain_grad()
    h[0, int(labels[0])].backward()
    alpha = act.grad.mean(dim=(2, 3), keepdim=True)
    cam = (alpha * act).sum(dim=1)[0].relu()
    torch.testing.assert_close(last["cam"], cam.detach(), atol=1e-5, rtol=1e-4)

    # watching does not change training: the same weights as an unwatched run
    plain = build(ARCH, CLASSES, seed=0)
    plain_bias = conv_of(plain, "conv_1_2").bias
    assert plain_bias is not None
    with torch.no_grad():
        plain_bias[0] = -1e3
    train(plain, data, val, tmp_path / "plain", config)
    other = read_safetensors(tmp_path / "plain" / "weights.safetensors")
    for k, v in final.items():
        torch.testing.assert_close(v, other[k], rtol=0, atol=0)


# ------------------------------------------------------------------ kill -9 and resume


def write_folder(root: Path, n: int, size: int = 28) -> None:
    data = quadrants(n, size)
    for split, lo, hi in (("train", 0, n - 40), ("test", n - 40, n)):
        for i in range(lo, hi):
            folder = root / split / CLASSES[int(data.labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            arr = (data.images[i, 0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr, "L").save(folder / f"{i:04d}.png")


@pytest.mark.slow
def test_timeline_survives_kill_9_and_resume_continues_it(tmp_path: Path) -> None:
    write_folder(tmp_path / "imgs", 440)  # 400 training images: 50 steps an epoch
    run = tmp_path / "run"
    args = ["train", "-d", str(tmp_path / "imgs"), "-m", "tiny-vgg", "--epochs", "3",
            "--batch-size", "8", "--out", str(run)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "convlens", *args, "--watch", "--every", "7"],
                            env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    index_path = timeline_dir(run) / INDEX_FILE
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:  # the index is only ever replaced whole, so it always parses
                doc = json.loads(index_path.read_text())
            except FileNotFoundError:
                doc = {"frames": []}
            if doc["frames"] and doc["frames"][-1]["step"] >= 50 + 14:  # into epoch 2
                break
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    killed = read_index(run)  # still a readable timeline, every frame whole
    assert len(killed.frames) >= 5
    for i in range(len(killed.frames)):
        read_frame(run, killed, i)
    assert main(["timeline", str(run), "--out", str(tmp_path / "killed")]) == 0

    assert main([*args, "--resume", "--every", "5"]) == 2  # not the timeline's
    assert main([*args, "--resume"]) == 0  # --watch and --every 7 come from the timeline
    index = read_index(run)
    steps = [f.step for f in index.frames]
    assert steps == expected_steps(7, 50, 3)  # no duplicate, no gap
    files = sorted(p.name for p in (timeline_dir(run) / FRAMES_DIR).iterdir())
    assert files == [f"{s:09d}.safetensors" for s in steps]  # no stray frame of the killed run
    history = json.loads((run / "model.json").read_text())["history"]
    assert [f.val_acc for f in index.frames if f.epoch_end] == [h["val_acc"] for h in history]
    final = read_safetensors(run / "weights.safetensors")
    torch.testing.assert_close(read_frame(run, index, len(steps) - 1)["filters"],
                               final["conv_1_1.weight"], rtol=0, atol=0)  # fmt: skip


# ------------------------------------------------------------------ the timeline command


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("watched") / "run"
    torch.set_num_threads(1)
    model = build(ARCH, CLASSES, seed=0)
    train(model, quadrants(48), None, run, TrainConfig(epochs=2, batch_size=8),
          watch=Watch(every=2))  # fmt: skip
    return run


def test_timeline_command_writes_all_frames(watched_run: Path, tmp_path: Path) -> None:
    n = len(read_index(watched_run).frames)
    assert n == len(expected_steps(2, 6, 2)) == 7
    assert main(["timeline", str(watched_run), "--out", str(tmp_path / "a")]) == 0
    gif = Image.open(tmp_path / "a" / "timeline.gif")
    assert len(list(ImageSequence.Iterator(gif))) == n and gif.info["loop"] == 0
    sheet = Image.open(tmp_path / "a" / "contact-sheet.png")
    assert sheet.width > 200 and sheet.height > 7 * 40
    assert main(["timeline", str(watched_run), "--out", str(tmp_path / "b"), "--format", "apng",
                 "--max-frames", "3"]) == 0  # fmt: skip
    apng = Image.open(tmp_path / "b" / "timeline.png")
    assert len(list(ImageSequence.Iterator(apng))) == 3


def test_bad_input_is_one_line(
    watched_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def one_error(argv: list[str], words: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error:") and words in err, err

    plain = tmp_path / "plain"
    train(build(ARCH, CLASSES, seed=0), quadrants(16), None, plain, TrainConfig(epochs=1))
    one_error(["timeline", str(plain), "--out", str(tmp_path / "o")], "no training timeline")
    one_error(["timeline", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
              "no training timeline")  # fmt: skip
    one_error(["timeline", str(watched_run), "--out", str(tmp_path / "o"), "--format", "mp4"],
              "accepted: gif, apng")  # fmt: skip
    base = ["train", "-d", "fashion-mnist", "--out", str(tmp_path / "r")]
    one_error([*base, "--watch", "--every", "0"], "--every must be")
    one_error([*base, "--every", "5"], "add --watch")
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()

    broken = tmp_path / "broken"
    (timeline_dir(broken)).mkdir(parents=True)
    doc = json.loads((timeline_dir(watched_run) / INDEX_FILE).read_text())
    doc["frames"][1]["step"] = 0  # a duplicate step
    (timeline_dir(broken) / INDEX_FILE).write_text(json.dumps(doc))
    one_error(["timeline", str(broken), "--out", str(tmp_path / "o")], "does not follow")
    doc["frames"] = [{"step": "0; rm -rf", "dead": {}}]
    (timeline_dir(broken) / INDEX_FILE).write_text(json.dumps(doc))
    one_error(["timeline", str(broken), "--out", str(tmp_path / "o")], "step")
