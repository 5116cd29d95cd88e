"""``convlens train`` (train or fine-tune a model, with checkpoints and --resume) and
``convlens augment-preview`` (a grid of augmented samples)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from convlens.cli import checks
from convlens.cli.common import ArchOpt, DeviceOpt, PrecisionOpt, TrustOpt, open_model
from convlens.data import EmptyDatasetError, ImageDataset, open_dataset
from convlens.data.base import dataset_help, named_datasets
from convlens.device import autocast, parse_precision, resolve_device
from convlens.errors import ConvlensError
from convlens.io.figure import grid, save_png
from convlens.model import Model
from convlens.model.headed import HEAD_HELP, TransferNet, parse_head
from convlens.model.zoo import ZOO, build, parse_arch
from convlens.train import (
    Augment,
    StepInfo,
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    default_augment,
)
from convlens.train import train as run_training
from convlens.train.augment import with_overrides
from convlens.train.curves import curves_figure, read_runs
from convlens.train.datasets import Subset, for_model
from convlens.train.features import FeatureCache
from convlens.train.loop import OPTIMIZERS, SCHEDULES, prepare_out
from convlens.train.transfer import (
    LabelMapped,
    check_classes,
    class_mapping,
    new_head,
    unfrozen_blocks,
    with_classes,
)
from convlens.train.watch import Watch, watch_for_run

TRANSFER_CLI_MODES = ("features", "finetune")
DatasetOpt = Annotated[
    str,
    typer.Option("--dataset", "-d", help=dataset_help()),
]
DataDirOpt = Annotated[
    str | None, typer.Option("--data-dir", help="Folder holding the data set's files.")
]
DownloadOpt = Annotated[
    bool, typer.Option("--download", help="Fetch missing files from the official source.")
]

# The geometric augmentations of the Keras course (train.augment), off unless given.
VflipOpt = Annotated[bool | None, typer.Option("--vflip/--no-vflip", help="Random vertical flips.")]
RotationOpt = Annotated[float | None, typer.Option(help="Random rotation, ± degrees.")]
ZoomOpt = Annotated[float | None, typer.Option(help="Random zoom: scale 1 ± this.")]
ShearOpt = Annotated[float | None, typer.Option(help="Random shear, ± degrees.")]
TranslateOpt = Annotated[
    float | None, typer.Option(help="Random shift, ± this fraction of the image size.")
]
FillOpt = Annotated[
    str | None,
    typer.Option(help="What rotations and shifts bring in: nearest (Keras), constant, reflect."),
]


def check_out_target(out: str) -> None:
    """Fail before any work if ``out`` could not be created or written (creates nothing)."""
    p = Path(out).absolute()
    if p.exists() and not p.is_dir():
        raise ConvlensError(f"--out {out!r} exists and is not a folder")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConvlensError(f"--out {out!r} cannot be written (no write permission on {existing})")


def check_train_numbers(
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    body_lr_scale: float,
    seed: int,
) -> None:
    checks.in_range("--epochs", epochs, 1, 100_000)
    checks.in_range("--batch-size", batch_size, 1, 65_536)
    checks.in_range("--lr", lr, 0, 10, lo_open=True)
    checks.in_range("--momentum", momentum, 0, 1)
    checks.in_range("--weight-decay", weight_decay, 0, 1)
    checks.in_range("--body-lr-scale", body_lr_scale, 0, 10)
    checks.seed(seed)


def _zoo_model(source: str, data: ImageDataset, seed: int) -> Model:
    """A fresh zoo model sized to the data unless the user gave the sizes in ``source``."""
    name, args = parse_arch(source)
    defaults = ZOO.get(name).defaults
    channels, height, _ = data.shape
    fill = {"in_channels": channels, "input_size": height, "num_classes": len(data.classes)}
    for key, value in fill.items():
        if key in defaults and key not in args:
            args[key] = value
    return build(name, data.classes, seed=seed, **args)


def prepare_model(
    source: str,
    data: ImageDataset,
    seed: int,
    arch: str | None,
    trust_pickle: bool,
    new_last_layer: bool = True,
    weights: str | None = None,
) -> Model:
    """The model to train: a fresh zoo model sized to the data, or a loaded one whose last
    layer is replaced (``new_last_layer``: --freeze/--finetune) or whose classes must match
    the data's (then they may come in another order: see :func:`mapped`)."""
    if source.partition(":")[0] in ZOO and not weights:
        return _zoo_model(source, data, seed)
    model = open_model(source, arch, None, trust_pickle, weights=weights)
    torch.manual_seed(seed)  # the new head's initialisation
    if new_last_layer:
        return with_classes(model, data.classes)
    class_mapping(model.classes, data.classes)  # a one-line error when they differ
    return model


def transfer_model(
    source: str,
    data: ImageDataset,
    head: str | None,
    out: str,
    seed: int,
    arch: str | None,
    trust_pickle: bool,
    weights: str | None,
) -> Model:
    """``source`` cut at its last spatial or pooled layer with a new ``head`` for the data's
    classes; a model file's body is copied into ``out`` so the checkpoint stands alone."""
    from convlens.model.load import detect_format

    spec = parse_head(head)  # refuse a bad --head before loading anything
    check_classes(data)
    model = open_model(source, arch, None, trust_pickle, weights=weights)
    fmt = "zoo" if model.arch is not None else detect_format(source)
    torch.manual_seed(seed)  # the new head's initialisation
    return new_head(model, data.classes, spec, source, fmt, out)


def mapped(
    model: Model, train_data: ImageDataset, val_data: ImageDataset | None, console: Console
) -> tuple[ImageDataset, ImageDataset | None]:
    """Renumber the data's labels to the model's outputs when its classes are the model's in
    another order (and say so)."""
    mapping = class_mapping(model.classes, train_data.classes)
    if mapping is None:
        return train_data, val_data
    pairs = ", ".join(f"{c} → output {i}" for c, i in zip(train_data.classes, mapping,
                                                          strict=True))  # fmt: skip
    console.print(f"the data set's classes are the model's in another order; mapping by name: "
                  f"{pairs}")  # fmt: skip
    val = None if val_data is None else LabelMapped(val_data, mapping, model.classes)
    return LabelMapped(train_data, mapping, model.classes), val


def _open_validation(dataset: str, data_dir: str | None, download: bool) -> ImageDataset | None:
    """The test split, or None (with a warning) when a small image folder has no test images."""
    try:
        return open_dataset(dataset, "test", data_dir, download)
    except EmptyDatasetError:
        pass
    print("warning: the data set has no test images; training without validation", file=sys.stderr)
    return None


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _epoch_line(rec: dict[str, Any], epochs: int) -> str:
    val = f"  val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.2%}" if "val_loss" in rec else ""
    return (
        f"epoch {rec['epoch']}/{epochs}  train loss {rec['train_loss']:.4f} "
        f"acc {rec['train_acc']:.2%}{val}  lr {rec['lr']:.2e}  {rec['seconds']:.1f} s  "
        f"{rec['images_per_s']:,.0f} img/s"
    )


# The options of `convlens train`, one alias each so that the command's signature stays a list.
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A zoo name (tiny-vgg[:args]) trained from scratch, "
        "or a checkpoint/model file to fine-tune.",
    ),
]
EpochsOpt = Annotated[int, typer.Option(help="Total epochs (with --resume: the new total).")]
BatchOpt = Annotated[int, typer.Option(help="Images per step.")]
LrOpt = Annotated[float, typer.Option(help="Learning rate (of the head, when fine-tuning).")]
OptimizerOpt = Annotated[str, typer.Option(help=f"One of {', '.join(OPTIMIZERS)}.")]
MomentumOpt = Annotated[float, typer.Option(help="SGD momentum.")]
DecayOpt = Annotated[float, typer.Option(help="L2 weight decay.")]
ScheduleOpt = Annotated[str, typer.Option(help=f"One of {', '.join(SCHEDULES)}.")]
AugmentOpt = Annotated[
    bool,
    typer.Option(
        "--augment/--no-augment",
        help="Random crop and flips (+ colour jitter for RGB), see augment-preview.",
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed of weights, data order and augmentation.")]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the run in --out with its saved settings "
        "(only --epochs, the new total, may change).",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an earlier run in --out.")]
ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="Transfer learning: cut the model at its last spatial or pooled layer and fit "
        "a new head (--head) to the data's classes. features: body frozen, its outputs "
        "cached once; finetune: the top --unfreeze blocks learn too.",
    ),
]
UnfreezeOpt = Annotated[
    int | None,
    typer.Option(help="--mode finetune: how many blocks of the body (from the top) learn."),
]
HeadOpt = Annotated[str | None, typer.Option("--head", help="New head: " + HEAD_HELP)]
CacheOpt = Annotated[
    bool, typer.Option("--cache/--no-cache", help="--mode features: compute the body once.")
]
CacheDirOpt = Annotated[
    str | None,
    typer.Option(help="Where cached features too large for memory go (default: temp)."),
]
TrainWeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights", help="For a zoo --model: 'imagenet' (published weights) or a weights file."
    ),
]
FreezeOpt = Annotated[
    bool, typer.Option("--freeze", help="Replace the last layer (zoo models), train it alone.")
]
FinetuneOpt = Annotated[
    bool, typer.Option("--finetune", help="Fine-tune all layers, the body at a lower LR.")
]
BodyLrOpt = Annotated[
    float, typer.Option(help="Body LR = lr × this (--finetune, --mode finetune).")
]
LimitOpt = Annotated[int | None, typer.Option(help="Train on this many images (a seeded subset).")]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="CPU threads for torch (default: torch's choice).")
]
ChannelsLastOpt = Annotated[
    bool, typer.Option("--channels-last/--no-channels-last", help="NHWC memory layout.")
]
WatchOpt = Annotated[
    bool,
    typer.Option(
        "--watch",
        help="Record a timeline of snapshots (filters, probe, dead units); "
        "see `convlens timeline`.",
    ),
]
EveryOpt = Annotated[int | None, typer.Option(help="Steps between --watch snapshots (default 50).")]


@dataclass(frozen=True)
class TrainRequest:
    """The options of one ``convlens train`` call, as typer parsed them (one field each)."""

    dataset: str
    out: str
    model: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    lr_schedule: str
    augment: bool
    vflip: bool | None
    rotation: float | None
    zoom: float | None
    shear: float | None
    translate: float | None
    fill: str | None
    seed: int
    resume: bool
    overwrite: bool
    mode: str | None
    unfreeze: int | None
    head: str | None
    cache: bool
    cache_dir: str | None
    weights: str | None
    freeze: bool
    finetune: bool
    body_lr_scale: float
    limit: int | None
    threads: int | None
    channels_last: bool
    data_dir: str | None
    download: bool
    arch: str | None
    trust_pickle: bool
    watch: bool
    every: int | None
    device: str
    precision: str

    @property
    def loop_mode(self) -> str:
        """The training loop's name for what learns (TrainConfig.mode)."""
        if self.mode:
            return self.mode
        return "feature-extraction" if self.freeze else "finetune" if self.finetune else "full"


def check_transfer_options(req: TrainRequest) -> None:
    """Refuse contradictory --mode / --freeze / --finetune / --unfreeze / --head combinations."""
    if req.freeze and req.finetune:
        raise ConvlensError("choose one of --freeze (feature extraction) and --finetune")
    if req.mode is not None and req.mode not in TRANSFER_CLI_MODES:
        raise ConvlensError(f"--mode {req.mode!r}; accepted: {', '.join(TRANSFER_CLI_MODES)}")
    if req.mode and (req.freeze or req.finetune):
        raise ConvlensError("--mode replaces --freeze/--finetune; give only --mode")
    if req.mode != "finetune" and req.unfreeze is not None:
        raise ConvlensError("--unfreeze applies to --mode finetune")
    if req.head is not None and not req.mode:
        raise ConvlensError("--head needs --mode features or --mode finetune")
    if req.unfreeze is not None:
        checks.in_range("--unfreeze", req.unfreeze, 0, 10_000)
    if req.head is not None:
        parse_head(req.head)


def check_request(req: TrainRequest) -> None:
    """Every check that needs no data or model, so that a bad call fails before any work."""
    check_transfer_options(req)
    check_train_numbers(
        req.epochs, req.batch_size, req.lr, req.momentum, req.weight_decay,
        req.body_lr_scale, req.seed,
    )  # fmt: skip
    if req.limit is not None:
        checks.in_range("--limit", req.limit, 1, 10**9)
    if req.threads is not None:
        checks.in_range("--threads", req.threads, 1, 1024)
    check_out_target(req.out)


def training_device(device: str, precision: str) -> torch.device:
    """The device to train on; float16 is refused (it needs loss scaling, which we lack)."""
    target = resolve_device(device)
    if parse_precision(precision) == torch.float16:
        raise ConvlensError(
            "--precision float16 needs loss scaling to train, which convlens does not do; use "
            "bfloat16 (same speed on recent GPUs, no underflow) or float32"
        )
    return target


def transfer_for_cli(
    req: TrainRequest, train_data: ImageDataset, console: Console
) -> tuple[Model, int | None]:
    """--mode: the cut model with its new head, and how many blocks learn (finetune: 1 unless
    --unfreeze says otherwise), which it names."""
    prepare_out(req.out, req.resume, req.overwrite)  # before a body file is copied into it
    m = transfer_model(
        req.model, train_data, req.head, req.out, req.seed, req.arch, req.trust_pickle,
        req.weights,
    )  # fmt: skip
    unfreeze = 1 if req.mode == "finetune" and req.unfreeze is None else req.unfreeze
    if unfreeze is not None:
        assert isinstance(m.net, TransferNet)
        names = [n for n, _ in unfrozen_blocks(m.net, unfreeze)]
        console.print(f"fine-tuning blocks {', '.join(names) or '(none)'} of "
                      f"{', '.join(n for n, _ in m.net.blocks)} and the head")  # fmt: skip
    return m, unfreeze


def model_for_request(
    req: TrainRequest, train_data: ImageDataset, console: Console
) -> tuple[Model, int | None]:
    """The model to train (transfer, zoo or loaded) and the number of blocks that learn."""
    if req.mode:
        return transfer_for_cli(req, train_data, console)
    m = prepare_model(
        req.model, train_data, req.seed, req.arch, req.trust_pickle,
        req.freeze or req.finetune, req.weights,
    )  # fmt: skip
    return m, req.unfreeze


def augmentation(req: TrainRequest, shape: tuple[int, int, int]) -> Augment:
    """--augment's defaults for the model's input with the geometric options on top; refused
    with cached features, which hold the body's outputs for the original images."""
    aug = with_overrides(
        default_augment(shape) if req.augment else Augment(),
        vflip=req.vflip, rotation=req.rotation, zoom=req.zoom, shear=req.shear,
        translate=req.translate, fill=req.fill,
    )  # fmt: skip
    if req.mode == "features" and req.cache and aug.active:
        raise ConvlensError(
            "augmentation and cached features contradict each other: the cache holds the body's "
            "outputs for the original images, computed once; add --no-cache to augment (the "
            "body then runs every step) or use --mode finetune"
        )
    return aug


def train_config(req: TrainRequest, aug: Augment, unfreeze: int | None) -> TrainConfig:
    return TrainConfig(
        epochs=req.epochs, batch_size=req.batch_size, lr=req.lr, optimizer=req.optimizer,
        momentum=req.momentum, weight_decay=req.weight_decay, schedule=req.lr_schedule,
        seed=req.seed, augment=aug, mode=req.loop_mode, body_lr_scale=req.body_lr_scale,
        channels_last=req.channels_last, unfreeze=unfreeze,
    )  # fmt: skip


def data_for_model(
    req: TrainRequest,
    m: Model,
    train_data: ImageDataset,
    val_data: ImageDataset | None,
    console: Console,
) -> tuple[ImageDataset, ImageDataset | None]:
    """The splits as the model sees them: labels mapped by class name (a model trained as is),
    resized to its input, and the training split cut to --limit."""
    if not (req.mode or req.freeze or req.finetune):
        train_data, val_data = mapped(m, train_data, val_data, console)
    train_data = for_model(train_data, m.spec.shape)
    val_data = None if val_data is None else for_model(val_data, m.spec.shape)
    if req.limit is not None:
        train_data = Subset(train_data, req.limit, req.seed)
    return train_data, val_data


FeatureCaches = tuple[FeatureCache, FeatureCache | None]


def feature_caches(
    req: TrainRequest, m: Model, train_data: ImageDataset, val_data: ImageDataset | None
) -> FeatureCaches | None:
    """--mode features --cache: the body's outputs for each split, computed once."""
    if req.mode != "features" or not req.cache:
        return None

    def cache(data: ImageDataset) -> FeatureCache:
        size = max(req.batch_size, 64)
        return FeatureCache(
            m, data, batch_size=size, channels_last=req.channels_last, cache_dir=req.cache_dir
        )

    return cache(train_data), None if val_data is None else cache(val_data)


def run_meta(req: TrainRequest, train_images: int) -> dict[str, Any]:
    """What the run's metadata records of the data and the command line."""
    name = req.dataset if req.dataset in named_datasets() else "folder"
    return {
        "dataset": {"name": name, "train_images": train_images},
        "command": "convlens train " + " ".join(sys.argv[2:]),
    }


def run_with_progress(
    req: TrainRequest,
    m: Model,
    data: tuple[ImageDataset, ImageDataset | None],
    config: TrainConfig,
    target: torch.device,
    watcher: Watch | None,
    caches: FeatureCaches | None,
    console: Console,
) -> TrainResult:
    """Run the training loop under a progress bar (a line per epoch); Ctrl-C exits 130 after
    the loop saved the run; the feature caches are closed whatever happens."""
    with _progress(console) as progress:
        task = progress.add_task("train", total=1, epoch="", stats="")

        def on_step(s: StepInfo) -> None:
            stats = f"loss {s.loss:.4f}  acc {s.accuracy:.2%}  {s.images_per_s:,.0f} img/s"
            progress.update(task, completed=s.step, total=s.steps,
                            epoch=f"{s.epoch}/{s.epochs}", stats=stats)  # fmt: skip

        def on_epoch(rec: dict[str, Any]) -> None:
            progress.console.print(_epoch_line(rec, config.epochs))

        try:
            with autocast(target, req.precision):
                return run_training(m, data[0], data[1], req.out, config, resume=req.resume,
                                    overwrite=req.overwrite, on_step=on_step, on_epoch=on_epoch,
                                    extra_meta=run_meta(req, len(data[0])), watch=watcher,
                                    features=caches)  # fmt: skip
        except TrainingInterrupted as e:
            progress.stop()
            print(e, file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            for c in caches or ():
                if c is not None:
                    c.close()


def report_done(result: TrainResult, console: Console) -> None:
    last = result.history[-1] if result.history else {}
    console.print(
        f"done: {len(result.history)} epochs, validation accuracy {last.get('val_acc', 0):.2%}; "
        f"checkpoint in {result.out} (load with --model {result.out})"
    )
    if result.history:
        console.print(f"learning curves: {_write_curves(result.out)}")


def run_train(req: TrainRequest) -> None:
    """``convlens train``: checks, data, model, augmentation, caches, then the loop."""
    check_request(req)
    target = training_device(req.device, req.precision)
    watcher = watch_for_run(req.out, req.watch, req.every, req.resume)
    if req.threads:
        torch.set_num_threads(req.threads)
    train_data = open_dataset(req.dataset, "train", req.data_dir, req.download)
    val_data = _open_validation(req.dataset, req.data_dir, req.download)
    console = Console(stderr=True, soft_wrap=True, emoji=False)  # "folder:two" is no emoji
    m, unfreeze = model_for_request(req, train_data, console)
    m = m.to(target)
    config = train_config(req, augmentation(req, m.spec.shape), unfreeze)
    train_data, val_data = data_for_model(req, m, train_data, val_data, console)
    caches = feature_caches(req, m, train_data, val_data)
    console.print(
        f"training {m.name} {m.arch['args'] if m.arch else ''} on {train_data.name}: "
        f"{len(train_data):,} images, validating on {len(val_data) if val_data else 'no'} "
        f"test images; writing {req.out}"
    )
    data = (train_data, val_data)
    result = run_with_progress(req, m, data, config, target, watcher, caches, console)
    report_done(result, console)


def train(
    dataset: DatasetOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Checkpoint folder to write.")],
    model: ModelOpt = "tiny-vgg",
    epochs: EpochsOpt = 10,
    batch_size: BatchOpt = 128,
    lr: LrOpt = 3e-3,
    optimizer: OptimizerOpt = "adam",
    momentum: MomentumOpt = 0.9,
    weight_decay: DecayOpt = 0.0,
    lr_schedule: ScheduleOpt = "none",
    augment: AugmentOpt = False,
    vflip: VflipOpt = None,
    rotation: RotationOpt = None,
    zoom: ZoomOpt = None,
    shear: ShearOpt = None,
    translate: TranslateOpt = None,
    fill: FillOpt = None,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    mode: ModeOpt = None,
    unfreeze: UnfreezeOpt = None,
    head: HeadOpt = None,
    cache: CacheOpt = True,
    cache_dir: CacheDirOpt = None,
    weights: TrainWeightsOpt = None,
    freeze: FreezeOpt = False,
    finetune: FinetuneOpt = False,
    body_lr_scale: BodyLrOpt = 0.1,
    limit: LimitOpt = None,
    threads: ThreadsOpt = None,
    channels_last: ChannelsLastOpt = True,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    arch: ArchOpt = None,
    trust_pickle: TrustOpt = False,
    watch: WatchOpt = False,
    every: EveryOpt = None,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "float32",
) -> None:
    """Train a model on a data set, validating on its test split and checkpointing each epoch.

    Ctrl-C saves the run and exits; the same command with --resume continues it exactly.
    """
    # locals() is exactly the parameters here (nothing else is bound yet): one field each.
    run_train(TrainRequest(**locals()))


def _write_curves(run: Path) -> Path:
    """The run's learning curves as ``RUN/curves.png`` (``convlens curves`` draws several)."""
    target = Path(run) / "curves.png"
    save_png(curves_figure(read_runs([run])), target)
    return target


def augment_preview(
    dataset: DatasetOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="PNG file (or folder) to write.")],
    count: Annotated[int, typer.Option(help="How many images (rows).")] = 8,
    variants: Annotated[int, typer.Option(help="Augmented versions per image.")] = 6,
    split: Annotated[str, typer.Option(help="Which split to sample.")] = "train",
    seed: Annotated[int, typer.Option(help="Seed of the sample and the augmentation.")] = 0,
    crop_padding: Annotated[
        int | None, typer.Option(help="Random-crop padding in pixels (default: fits the data).")
    ] = None,
    hflip: Annotated[bool, typer.Option("--hflip/--no-hflip", help="Random flips.")] = True,
    jitter: Annotated[
        float | None, typer.Option(help="Brightness/contrast/saturation jitter strength.")
    ] = None,
    vflip: VflipOpt = None,
    rotation: RotationOpt = None,
    zoom: ZoomOpt = None,
    shear: ShearOpt = None,
    translate: TranslateOpt = None,
    fill: FillOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
) -> None:
    """Write a grid: each row one image, first the original, then augmented versions."""
    checks.in_range("--count", count, 1, 256)
    checks.in_range("--variants", variants, 1, 64)
    if crop_padding is not None:
        checks.in_range("--crop-padding", crop_padding, 0, 1024)
    if jitter is not None:
        checks.in_range("--jitter", jitter, 0, 1)
    checks.seed(seed)
    target = checks.png_target(out, f"augment-{Path(dataset).name or 'data'}.png")
    check_out_target(str(target.parent) if str(target.parent) else ".")
    data = open_dataset(dataset, split, data_dir, download)
    base = default_augment(data.shape)
    strength = base.brightness if jitter is None else jitter
    aug = Augment(
        crop_padding=base.crop_padding if crop_padding is None else crop_padding,
        hflip=hflip, brightness=strength, contrast=strength,
        saturation=strength if data.shape[0] == 3 else 0.0,
    )  # fmt: skip
    aug = with_overrides(
        aug, vflip=vflip, rotation=rotation, zoom=zoom, shear=shear, translate=translate, fill=fill
    )
    pick = Subset(data, min(count, len(data)), seed)
    x, y = pick.get(range(len(pick)))
    gen = torch.Generator().manual_seed(seed)
    # (V, B, C, H, W): every variant of the batch, then row-major order image by image.
    versions = torch.stack([x] + [aug(x, gen) for _ in range(variants)])
    cells = list(versions.transpose(0, 1).reshape(-1, *x.shape[1:]))
    labels = [
        data.classes[int(y[i])] if v == 0 else f"aug {v}"
        for i in range(len(x))
        for v in range(variants + 1)
    ]
    title = f"{data.name} ({split}): {aug.describe()}"
    save_png(grid(cells, variants + 1, labels, title=title, cell_size=72), target)
    Console(stderr=True).print(f"wrote {target}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command("augment-preview")(augment_preview)
