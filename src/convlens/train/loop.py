"""The training loop: mini-batch SGD/Adam with checkpoints each epoch, exact resume and a
clean stop on Ctrl-C.

Each step minimises the cross-entropy ``L = −(1/B) Σ_b log softmax(f(x_b))[y_b]`` over a
mini-batch. Reproducibility comes from seeding, not from saved random states: epoch ``e``
visits the images in ``randperm(N)`` drawn from a generator seeded with ``(seed, e)``, and
batch ``s`` of it is augmented with a generator seeded with ``(seed, e, s)``. A run resumed
at any step therefore sees the same batches as an uninterrupted one.

The output folder is a checkpoint (``weights.safetensors`` + ``model.json``, see
:mod:`convlens.model.checkpoint`) plus ``train_state.pt``: weights, optimizer, schedule and
position in one file, written atomically, read back with ``weights_only=True``.

>>> from convlens.model import build
>>> from convlens.data import TensorImages
>>> data = TensorImages(torch.rand(8, 1, 28, 28), torch.arange(8) % 10, list("abcdefghij"))
>>> m = build("tiny-vgg:in_channels=1,input_size=28", list("abcdefghij"), seed=0)
>>> result = train(m, data, data, "/tmp/convlens-doctest-run", TrainConfig(epochs=1),
...                overwrite=True)
>>> len(result.history)
1
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from convlens.data.base import ImageDataset
from convlens.errors import ConvlensError
from convlens.io.atomic import ensure_writable_dir, write_bytes_atomic
from convlens.io.figure import RichDisplay
from convlens.model.checkpoint import META_FILE, WEIGHTS_FILE, save_checkpoint
from convlens.model.core import Model
from convlens.train.augment import Augment
from convlens.train.transfer import TRANSFER_MODES, frozen_norm_layers_eval, param_groups

if TYPE_CHECKING:
    from convlens.train.features import FeatureCache
    from convlens.train.watch import Watch

STATE_FILE = "train_state.pt"
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a run (saved with every checkpoint)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.003
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"  # cosine: lr·½(1 + cos(π t/T)) per step; step: ×0.1 at 50%, 75%
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    mode: str = "full"  # or features (alias feature-extraction), finetune: train.transfer
    body_lr_scale: float = 0.1
    unfreeze: int | None = None  # finetune: the top blocks that learn (None: all)
    channels_last: bool = True  # measured faster on CPU (benchmarks/train.py)
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES,
             f"unknown learning-rate schedule {self.schedule!r}; accepted: {', '.join(SCHEDULES)}"),
            (self.mode in TRANSFER_MODES,
             f"unknown training mode {self.mode!r}; accepted: {', '.join(TRANSFER_MODES)}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConvlensError(message)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["augment"] = Augment(**d.get("augment", {}))
        return cls(**d)


@dataclass(frozen=True)
class StepInfo:
    """What the progress display shows after each batch."""

    epoch: int  # 1-based
    epochs: int
    step: int  # batches done in this epoch
    steps: int
    loss: float  # running mean over the epoch so far
    accuracy: float
    images_per_s: float
    lr: float


@dataclass
class TrainResult(RichDisplay):
    history: list[dict[str, Any]]
    out: Path
    interrupted: bool = False

    def _display_figure(self) -> tuple[Any, str]:
        from convlens.train.curves import read_history  # curves reads what this module writes

        return read_history(self.out)._display_figure()


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the state was saved; ``--resume`` continues from it."""

    def __init__(self, out: Path, epoch: int, step: int) -> None:
        super().__init__(
            f"interrupted; saved epoch {epoch} at batch {step} to {out}; "
            "continue with the same command plus --resume"
        )
        self.out, self.epoch, self.step = out, epoch, step


# ---------------------------------------------------------------------------- pieces


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (so (seed, epoch, step) never collide in practice)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & (2**64 - 1)
    return h & (2**63 - 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` images."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch)))


def lr_factor(schedule: str, t: float) -> float:
    """Learning-rate multiplier at fraction ``t ∈ [0, 1]`` of training."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def make_optimizer(model: Model, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model.net, config.mode, config.lr, config.body_lr_scale, config.unfreeze)
    for g in groups:
        g["base_lr"] = g["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def set_lr(opt: torch.optim.Optimizer, factor: float) -> float:
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor
    return float(opt.param_groups[-1]["lr"])


def loss_fn(model: Model, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y = y.to(out.device)  # labels come from the data set on the CPU; out is on the model's device
    if model.outputs == "probabilities":
        return F.nll_loss(out.clamp_min(1e-12).log(), y)
    return F.cross_entropy(out, y)


@torch.inference_mode()
def evaluate(
    model: Model, data: ImageDataset, batch_size: int = 1000, channels_last: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for _, x, y in data.batches(batch_size):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            total_loss += float(loss_fn(model, out, y)) * len(y)
            correct += int((out.argmax(1).cpu() == y).sum())
            count += len(y)
    finally:
        model.train(was_training)
    return total_loss / max(count, 1), correct / max(count, 1)


# ---------------------------------------------------------------------------- state on disk


def save_state(out: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(out / STATE_FILE, buf.getvalue())


def load_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.is_file():
        raise ConvlensError(f"nothing to resume in {str(out)!r}: {STATE_FILE} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvlensError(
            f"cannot read {str(path)!r}: corrupt or not a convlens state ({e})"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "arch" not in state:
        raise ConvlensError(f"{str(path)!r} is not a convlens training state")
    return state


def check_same_arch(model: Model, state: dict[str, Any], out: Path) -> None:
    if state["arch"] != model.arch:
        saved = state["arch"] or {}
        raise ConvlensError(
            f"the checkpoint in {str(out)!r} is a {saved.get('name')} {saved.get('args', {})}, "
            f"not a {model.arch['name'] if model.arch else model.name} "
            f"{model.arch.get('args', {}) if model.arch else ''}; resume with the model it was "
            "trained as, or choose another --out"
        )
    own = model.net.state_dict()
    if set(state["model"]) != set(own) or any(state["model"][k].shape != own[k].shape for k in own):
        raise ConvlensError(f"the weights in {str(out)!r} do not fit the model being trained")


def prepare_out(out: str | os.PathLike[str], resume: bool, overwrite: bool) -> Path:
    """Create ``out``; refuse to overwrite an earlier run unless resuming or told to."""
    folder = ensure_writable_dir(out)
    earlier = [f for f in (STATE_FILE, META_FILE, WEIGHTS_FILE) if (folder / f).exists()]
    if earlier and not resume and not overwrite:
        raise ConvlensError(
            f"{str(folder)!r} already holds a training run; add --resume to continue it or "
            "choose another --out"
        )
    return folder


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[Callable[[], bool]]:
    """While active, the first Ctrl-C only sets a flag (checked after each batch); a second
    one interrupts at once. Yields a function telling whether a stop was asked for."""
    asked = [False]

    def handler(signum: int, frame: object) -> None:
        if asked[0]:
            raise KeyboardInterrupt
        asked[0] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield lambda: False
        return
    try:
        yield lambda: asked[0]
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------- the loop


@dataclass
class _Progress:
    """The position and running sums of the current epoch (saved on interrupt)."""

    epoch: int = 0  # 0-based epoch in progress
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0


def train(
    model: Model,
    train_data: ImageDataset,
    val_data: ImageDataset | None,
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    extra_meta: dict[str, Any] | None = None,
    watch: Watch | None = None,
    features: tuple[FeatureCache, FeatureCache | None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data``, validating on ``val_data`` and checkpointing to
    ``out`` after every epoch. Raises :class:`TrainingInterrupted` after saving on Ctrl-C.

    With ``resume``, the run saved in ``out`` continues with its own settings; only
    ``config.epochs`` (the new total) is taken from ``config``. ``features`` (train and
    validation caches of a frozen body, :mod:`convlens.train.features`) make each step run
    the head alone on cached features.
    """
    config = config or TrainConfig()
    if model.arch is None:
        raise ConvlensError("only zoo-built models can be trained (their checkpoints need one)")
    if tuple(train_data.shape) != model.spec.shape:
        raise ConvlensError(
            f"the data's images are {train_data.shape} but the model takes {model.spec.shape}"
        )
    created = not Path(out).exists()
    folder = prepare_out(out, resume, overwrite)
    try:
        return _run(model, train_data, val_data, folder, config, resume, on_step, on_epoch,
                    dict(extra_meta or {}), watch, features)  # fmt: skip
    except TrainingInterrupted:
        raise
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # leave no trace of a run that saved nothing
        raise


def _run(
    model: Model,
    train_data: ImageDataset,
    val_data: ImageDataset | None,
    folder: Path,
    config: TrainConfig,
    resume: bool,
    on_step: Callable[[StepInfo], None] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    meta: dict[str, Any],
    watch: Watch | None = None,
    features: tuple[FeatureCache, FeatureCache | None] | None = None,
) -> TrainResult:
    history: list[dict[str, Any]] = []
    pos = _Progress()
    if resume:
        state = load_state(folder)
        check_same_arch(model, state, folder)
        config = replace(TrainConfig.from_dict(state["config"]), epochs=config.epochs)
        model.net.load_state_dict(state["model"])
        history, pos = list(state["history"]), _Progress(**state["progress"])
    if config.channels_last:
        model.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = make_optimizer(model, config)
    if resume:
        opt.load_state_dict(state["optimizer"])

    def save(interrupted: bool) -> None:
        save_state(folder, {
            "arch": model.arch, "model": {k: v.contiguous() for k, v in
                                           model.net.state_dict().items()},
            "optimizer": opt.state_dict(), "config": config.to_dict(),
            "history": history, "progress": asdict(pos),
        })  # fmt: skip
        save_checkpoint(model, folder, history=history, training=config.to_dict(),
                        epochs_done=len(history), interrupted=interrupted, **meta)  # fmt: skip

    n = len(train_data)
    steps = math.ceil(n / config.batch_size)
    if watch:
        watch.start(model, folder, val_data or train_data, pos.epoch * steps + pos.step, steps)
    with stop_on_sigint() as stop_asked:
        while pos.epoch < config.epochs:
            order = epoch_order(n, config.seed, pos.epoch).tolist()
            model.train()
            frozen_norm_layers_eval(model.net)
            lr = 0.0
            while pos.step < steps:
                t0 = time.perf_counter()
                idx = order[pos.step * config.batch_size : (pos.step + 1) * config.batch_size]
                lr = set_lr(opt, lr_factor(config.schedule, (pos.epoch + pos.step / steps)
                                           / config.epochs))  # fmt: skip
                loss, correct = _step(model, opt, train_data, idx, config, pos,
                                      features[0] if features else None)  # fmt: skip
                pos.step += 1
                pos.loss_sum += loss * len(idx)
                pos.correct += correct
                pos.count += len(idx)
                pos.seconds += time.perf_counter() - t0
                info = StepInfo(pos.epoch + 1, config.epochs, pos.step, steps,
                                pos.loss_sum / pos.count, pos.correct / pos.count,
                                pos.count / max(pos.seconds, 1e-9), lr)  # fmt: skip
                if on_step:
                    on_step(info)
                if watch:
                    watch.after_step(model, info)
                if stop_asked() and pos.step < steps:
                    save(interrupted=True)
                    raise TrainingInterrupted(folder, pos.epoch + 1, pos.step)
            record = _finish_epoch(model, val_data, config, pos, lr,
                                   features[1] if features else None)  # fmt: skip
            history.append(record)
            if watch:  # before the state is saved: a resumed run never lacks this frame
                watch.after_epoch(model, record)
            pos = _Progress(epoch=pos.epoch + 1)
            save(interrupted=False)
            if on_epoch:
                on_epoch(record)
            if stop_asked() and pos.epoch < config.epochs:
                raise TrainingInterrupted(folder, pos.epoch, 0)
    model.eval()
    return TrainResult(history, folder)


def _step(
    model: Model,
    opt: torch.optim.Optimizer,
    data: ImageDataset,
    idx: list[int],
    config: TrainConfig,
    pos: _Progress,
    cache: FeatureCache | None = None,
) -> tuple[float, int]:
    """One optimisation step on the images ``idx``; returns (loss, number correct)."""
    if cache is not None:  # the frozen body's outputs, computed once: only the head runs
        feats, y = cache.get(idx)
        torch.manual_seed(seed_for(config.seed, pos.epoch, pos.step, 1))  # the same dropout
        out = cache.head(feats)
    else:
        out, y = _forward(model, data, idx, config, pos)
    loss = loss_fn(model, out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), int((out.detach().argmax(1).cpu() == y.cpu()).sum())


def _forward(
    model: Model, data: ImageDataset, idx: list[int], config: TrainConfig, pos: _Progress
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs on images ``idx`` (augmented when configured) and their labels."""
    x, y = data.get(idx)
    if config.augment.active:
        x = config.augment(x, torch.Generator().manual_seed(seed_for(config.seed, pos.epoch,
                                                                     pos.step)))  # fmt: skip
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(seed_for(config.seed, pos.epoch, pos.step, 1))  # dropout, if any
    out = model(x)
    return out, y


def _finish_epoch(
    model: Model,
    val_data: ImageDataset | None,
    config: TrainConfig,
    pos: _Progress,
    lr: float,
    val_cache: FeatureCache | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "epoch": pos.epoch + 1,
        "train_loss": round(pos.loss_sum / max(pos.count, 1), 5),
        "train_acc": round(pos.correct / max(pos.count, 1), 5),
        "lr": lr,
        "seconds": round(pos.seconds, 2),
        "images_per_s": round(pos.count / max(pos.seconds, 1e-9), 1),
    }
    if val_data is not None:
        val_loss, val_acc = (
            val_cache.evaluate(config.eval_batch_size) if val_cache is not None else
            evaluate(model, val_data, config.eval_batch_size, config.channels_last)
        )  # fmt: skip
        record |= {"val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5)}
    return record
