"""Options and helpers shared by several commands.

A command that opens a model takes its source (``--model`` or an argument) and is decorated
with :func:`with_model_flags`, which adds the ten flags every command shares (``--arch``,
``--format``, ``--trust-pickle``, ``--device``, ``--weights`` for zoo names and, for files
that do not say everything, ``--classes``, ``--input-size``, ``--mean``, ``--std``,
``--channels``) and hands them to the command as one :class:`ModelFlags`;
``flags.open(source)`` then calls :func:`open_model`.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Any, TypeVar

import typer

from convlens.errors import ConvlensError
from convlens.io.spec import MAX_SIDE, MEAN_RANGE, STD_RANGE
from convlens.model import Model, load_model
from convlens.model.formats.base import read_classes

ModelArg = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help="'demo', 'cnn-explainer', a zoo name (tiny-vgg[:args]), a checkpoint folder or a "
        "model file (.pt2, TorchScript, .safetensors/.pt with --arch, .onnx, .keras, .h5, "
        "TF.js model.json).",
    ),
]  # fmt: skip
ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", help="Architecture for a weights-only file: ZOO_NAME[:args]."),
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="Force a model format instead of detecting it.")
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-pickle", help="Allow unpickling (running code from) a model file."),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes", help="Class names: a JSON list or a text file with one name per line."
    ),
]
InputSizeOpt = Annotated[
    str | None, typer.Option("--input-size", help="Input image size: H, or H,W (e.g. 224).")
]
MeanOpt = Annotated[
    str | None,
    typer.Option("--mean", help="Input mean per channel in [0, 1] units, e.g. 0.485,0.456,0.406."),
]
StdOpt = Annotated[
    str | None,
    typer.Option("--std", help="Input std per channel in [0, 1] units, e.g. 0.229,0.224,0.225."),
]
_CHANNELS_HELP = "Input channels: 1 (gray) or 3 (RGB)."
ChannelsOpt = Annotated[
    int | None, typer.Option("--channels", "--input-channels", help=_CHANNELS_HELP)
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="For a zoo name: 'imagenet' (the published torchvision weights, downloaded once "
        "and checksum-checked) or a weights file such as resnet18-f37072fd.pth.",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where to compute: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.",
    ),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="float32, or bfloat16/float16 under torch.autocast (faster on GPUs, less exact).",
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local (this process) or ray (Ray Data workers; needs pip install convlens\\[scale]).",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --engine ray: a running cluster (HOST:PORT, ray://HOST:PORT or auto); "
        "default: a local Ray started for the command.",
    ),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", help="With --engine ray: worker processes (one model each).")
]


def check_engine(engine: str, address: str | None, workers: int) -> None:
    """``--engine`` is local or ray; ``--address``/``--workers`` belong to ray."""
    if engine not in ("local", "ray"):
        raise ConvlensError(f"unknown --engine {engine!r}; accepted: local, ray")
    if engine == "local" and address is not None:
        raise ConvlensError("--address needs --engine ray")
    if not 1 <= workers <= 4096:
        raise ConvlensError(f"--workers must be at least 1 and at most 4096, got {workers}")


# For commands whose own --channels means something else (visualize: which units to render).
InputChannelsOpt = Annotated[int | None, typer.Option("--input-channels", help=_CHANNELS_HELP)]


def _floats(text: str, flag: str, lo: float, hi: float) -> list[float]:
    """Comma-separated finite numbers in ``[lo, hi]`` (NaN and inf would poison every output)."""
    try:
        values = [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and lo <= v <= hi for v in values):
        raise ConvlensError(
            f"{flag} takes 1 or 3 finite numbers in [{lo:g}, {hi:g}] separated by commas "
            f"(e.g. 0.5,0.5,0.5), got {text!r}"
        )
    return values


def parse_input_size(text: str) -> dict[str, int]:
    """``"64"`` → height = width = 64; ``"64,48"`` or ``"64x48"`` → height 64, width 48.

    >>> parse_input_size("64x48")
    {'height': 64, 'width': 48}
    """
    parts = [p for p in re.split(r"[,x×\s]+", text.strip().lower()) if p]
    # isascii: "²".isdigit() is true but int("²") fails.
    if not 1 <= len(parts) <= 2 or not all(
        p.isascii() and p.isdigit() and 1 <= int(p) <= MAX_SIDE for p in parts
    ):
        raise ConvlensError(
            f"--input-size takes H or H,W, whole numbers of pixels in 1..{MAX_SIDE}, got {text!r}"
        )
    h = int(parts[0])
    return {"height": h, "width": int(parts[-1])}


def input_overrides(
    input_size: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    channels: int | None = None,
) -> dict[str, Any]:
    """The input-spec keys the user set on the command line."""
    spec: dict[str, Any] = {}
    if input_size is not None:
        spec |= parse_input_size(input_size)
    if mean is not None:
        spec["mean"] = _floats(mean, "--mean", *MEAN_RANGE)
    if std is not None:
        spec["std"] = _floats(std, "--std", *STD_RANGE)
    if channels is not None:
        if channels not in (1, 3):
            raise ConvlensError(f"--channels must be 1 (gray) or 3 (RGB), got {channels}")
        spec["channels"] = channels
    return spec


def classes_file(path: str) -> list[str]:
    """``--classes FILE``: read by :func:`read_classes`, which bounds it (a FIFO would block the
    read forever, ``/dev/zero`` would never end)."""
    return read_classes(path)


def refuse_special_file(source: str) -> None:
    """A model path that exists must be a plain file or a folder: a reader forced with
    ``--format`` would otherwise open a FIFO and wait forever for a writer."""
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return  # not a path (a zoo name, "demo") or missing: load_model explains
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ConvlensError(
            f"model {source!r} is not a regular file or folder (a FIFO, socket or device); "
            "accepted: a model file or a checkpoint folder"
        )


def open_model(
    source: str,
    arch: str | None = None,
    fmt: str | None = None,
    trust_pickle: bool = False,
    *,
    classes: str | None = None,
    input_size: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    channels: int | None = None,
    device: str = "cpu",
    **extra: Any,
) -> Model:
    """Load the model named on the command line (errors are ConvlensError, shown cleanly).

    Naming a downloadable model (``cnn-explainer``) on the command line is the request to
    fetch it, so ``download`` is on unless a caller turns it off.
    """
    refuse_special_file(source)
    options: dict[str, Any] = {"trust_pickle": trust_pickle, "download": True, **extra}
    if arch:
        options["arch"] = arch
    spec = input_overrides(input_size, mean, std, channels)
    return load_model(
        source,
        format=fmt,
        classes=classes_file(classes) if classes is not None else None,
        input_spec=spec or None,
        device=device,
        **options,
    )


@dataclass(frozen=True)
class ModelFlags:
    """The model-loading flags of one command line."""

    arch: str | None = None
    fmt: str | None = None
    trust_pickle: bool = False
    classes: str | None = None
    input_size: str | None = None
    mean: str | None = None
    std: str | None = None
    channels: int | None = None
    weights: str | None = None
    device: str = "cpu"

    def open(self, source: str) -> Model:
        return open_model(
            source, self.arch, self.fmt, self.trust_pickle, classes=self.classes,
            input_size=self.input_size, mean=self.mean, std=self.std, channels=self.channels,
            weights=self.weights, device=self.device,
        )  # fmt: skip


_FLAG_OPTIONS: dict[str, Any] = {
    "arch": ArchOpt, "fmt": FormatOpt, "trust_pickle": TrustOpt, "classes": ClassesOpt,
    "input_size": InputSizeOpt, "mean": MeanOpt, "std": StdOpt, "channels": ChannelsOpt,
    "weights": WeightsOpt, "device": DeviceOpt,
}  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


def with_model_flags(command: F) -> F:
    """Give ``command`` (which takes ``flags: ModelFlags``) the shared model-loading options.

    Typer reads the signature, so the wrapper's signature is the command's minus ``flags``
    plus one keyword option per :class:`ModelFlags` field.
    """
    base = inspect.signature(command, eval_str=True)
    kept = [p for p in base.parameters.values() if p.name != "flags"]
    own = {p.name for p in kept}
    defaults = ModelFlags()
    # flag field -> the wrapper's parameter name; a command's own parameter of the same name
    # wins, and the flag moves to its alternative (only --channels has one).
    params = {
        f.name: f.name if f.name not in own else f"input_{f.name}" for f in fields(ModelFlags)
    }
    options = _FLAG_OPTIONS | {"input_channels": InputChannelsOpt}
    extra = [
        inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, n),
                          annotation=options[p])
        for n, p in params.items()
    ]  # fmt: skip

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {n: kwargs.pop(p, getattr(defaults, n)) for n, p in params.items()}
        return command(*args, flags=ModelFlags(**values), **kwargs)

    wrapper.__signature__ = base.replace(parameters=kept + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in kept + extra} | {
        "return": base.return_annotation
    }
    return wrapper  # type: ignore[return-value]
