"""``load_model(source)``: one entry point for every way a model can arrive.

Formats live in one registry; each knows how to recognise its files and how to load them.
The API, the CLI's ``--model`` and the web app all call :func:`load_model`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.device import module_device, resolve_device
from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.checkpoint import (
    is_checkpoint,
    load_checkpoint,
    load_state_dict_into,
    read_safetensors,
)
from convlens.model.core import Model
from convlens.model.zoo import ZOO, build
from convlens.registry import Registry


@dataclass(frozen=True)
class LoadOptions:
    """What the user said beside the source (CLI flags or keyword arguments)."""

    arch: str | None = None
    classes: list[str] | None = None
    input_spec: dict[str, Any] = field(default_factory=dict)  # overrides: channels, mean, ...
    trust_pickle: bool = False
    download: bool = False
    weights: str | None = None  # zoo names only: "imagenet" or a weights file


@dataclass(frozen=True)
class ModelFormat:
    """A way models arrive: ``detect(source)`` says whether it applies, ``load`` reads it."""

    detect: Callable[[str], bool]
    load: Callable[[str, LoadOptions], Model]
    description: str


FORMATS: Registry[ModelFormat] = Registry("model format")


def demo_folder() -> Path:
    return Path(str(resources.files("convlens.model") / "demo"))


def _load_demo(source: str, opts: LoadOptions) -> Model:
    folder = demo_folder()
    if not is_checkpoint(folder):
        raise ConvlensError(
            f"the bundled demo weights are missing from {folder}; regenerate them with "
            "`make demo-model`"
        )
    return load_checkpoint(folder)


def _load_zoo(source: str, opts: LoadOptions) -> Model:
    if opts.weights:
        from convlens.model.pretrained import load_pretrained

        return load_pretrained(source, opts.weights, opts.classes)
    return build(source, opts.classes)


def _load_checkpoint(source: str, opts: LoadOptions) -> Model:
    return load_checkpoint(source, opts.trust_pickle)


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message (torch's are pages long)."""
    text = str(e).strip()
    return (text.splitlines()[0][:300] if text else type(e).__name__).rstrip(".")


def _read_state_dict(path: str, opts: LoadOptions) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or a ``torch.save`` file, never unpickled unless trusted.

    A ``torch.save`` zip is size-checked, then read with ``weights_only=True`` (PyTorch's
    restricted unpickler: tensors, containers and numbers only). The pre-1.6 non-zip format is
    refused: it declares each storage's size inside the pickle stream, so nothing can be
    checked before torch allocates it.
    """
    from convlens.model.formats.pt2_archive import archive_kind, quiet
    from convlens.model.formats.safety import check_zip, model_budget_bytes, regular_file

    p = regular_file(path, "weights file")
    if path.lower().endswith(".safetensors"):
        return read_safetensors(path)
    kind = archive_kind(path)
    if kind == "torch-save":
        check_zip(path).close()
    elif not opts.trust_pickle:
        what = (
            "a TorchScript or torch.export program, not a state dict"
            if kind
            else "a pre-1.6 (non-zip) torch.save file, whose sizes cannot be checked before "
            "reading, or not a torch file at all"
        )
        raise ConvlensError(
            f"{path!r} is {what}; accepted: a state dict saved by torch.save (PyTorch 1.6+) or "
            "safetensors, or pass --trust-pickle if you trust its author"
        )
    elif p.stat().st_size > model_budget_bytes():
        raise ConvlensError(f"{path!r} is larger than the model budget")
    try:
        with quiet():
            obj = torch.load(path, map_location="cpu", weights_only=not opts.trust_pickle)
    except Exception as e:
        hint = (
            " It may hold pickled Python objects; if you trust its author, pass --trust-pickle "
            "(trust_pickle=True) to allow running code from it"
            if not opts.trust_pickle
            else ""
        )
        raise ConvlensError(
            f"cannot read {path!r} as a PyTorch state dict: {_one_line(e)}.{hint}"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a training checkpoint that wraps the weights
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvlensError(f"{path!r} does not hold a state dict (a mapping of names to tensors)")
    return obj


def _load_state_dict(source: str, opts: LoadOptions) -> Model:
    if not opts.arch:
        raise ConvlensError(
            f"{source!r} holds weights only; say which architecture they belong to with "
            f"--arch NAME[:args] (arch=...), one of: {', '.join(ZOO.names())}"
        )
    model = build(opts.arch, opts.classes)
    state = _read_state_dict(source, opts)
    load_state_dict_into(model, state, source)
    return model.eval()


def _has_suffix(*suffixes: str) -> Callable[[str], bool]:
    return lambda s: Path(s).suffix.lower() in suffixes and Path(s).is_file()


def _is_weights_file(source: str) -> bool:
    """A weights suffix, unless the content is a program (a ``.pt2`` or TorchScript zip)."""
    from convlens.model.formats.pt2_archive import archive_kind

    is_file = _has_suffix(".safetensors", ".pt", ".pth", ".bin")(source)
    return is_file and archive_kind(source) not in ("pt2", "torchscript")


def _is_zoo_name(source: str) -> bool:
    return source.partition(":")[0] in ZOO


FORMATS.add("demo", ModelFormat(
    lambda s: s == "demo", _load_demo,
    "the bundled demo: Tiny VGG trained on Fashion-MNIST"))  # fmt: skip
FORMATS.add("zoo", ModelFormat(
    _is_zoo_name, _load_zoo,
    "a zoo architecture with random weights: " + ", ".join(ZOO.names())))  # fmt: skip
FORMATS.add("checkpoint", ModelFormat(
    is_checkpoint, _load_checkpoint,
    "a folder written by `convlens train` (model.json + weights.safetensors)"))  # fmt: skip
FORMATS.add("state-dict", ModelFormat(
    _is_weights_file, _load_state_dict,
    "weights only (.safetensors, or .pt/.pth read weights_only) with --arch"))  # fmt: skip


def formats_help() -> str:
    return "; ".join(f"{name}: {fmt.description}" for name, fmt in FORMATS.items())


# Names that are not zoo architectures but load by name (formats register them too).
NAMED_MODELS = ("demo", "cnn-explainer")


def detect_format(source: str) -> str:
    for name, fmt in FORMATS.items():
        if fmt.detect(source):
            return name
    if not Path(source).exists() and ("/" in source or "." in Path(source).name):
        raise ConvlensError(f"model file {source!r} does not exist")
    close = difflib.get_close_matches(source.partition(":")[0], [*ZOO.names(), *NAMED_MODELS])
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConvlensError(
        f"cannot tell what kind of model {source!r} is.{hint} Accepted: {formats_help()}"
    )


def _apply_overrides(model: Model, opts: LoadOptions) -> Model:
    """Replace the input spec or class names when the user gave them explicitly."""
    spec = model.spec
    if opts.input_spec:
        merged = spec.to_dict() | opts.input_spec
        if "size" in merged:
            merged["height"] = merged["width"] = merged.pop("size")
        spec = InputSpec.from_dict(merged)
    if spec == model.spec and not opts.classes:
        return model
    return Model(
        model.net,
        spec,
        opts.classes or model.classes,
        name=model.name,
        arch=model.arch,
        outputs=model.outputs,
        samples=model.samples,
    )


def load_model(
    source: str | os.PathLike[str] | nn.Module,
    *,
    format: str | None = None,
    input_spec: InputSpec | dict[str, Any] | None = None,
    classes: list[str] | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> Model:
    """Load a model from a zoo name, ``"demo"``, a file or folder, or a live ``nn.Module``.

    A live module needs its ``input_spec`` (an :class:`InputSpec` or a dict). ``device``
    (``"auto"``, ``"cpu"``, ``"cuda:1"``, ``"mps"``) is where it runs; files are always read on
    the CPU first, then moved; ``None`` leaves a given model where it is (files: the CPU).

    >>> load_model("tiny-vgg:input_size=32").graph.output.output_shape
    (10,)
    """
    # An unavailable device fails before any reading.
    target = None if device is None else resolve_device(device)
    if isinstance(source, Model):
        return source if target is None else source.to(target)
    if isinstance(source, nn.Module):
        if input_spec is None:
            raise ConvlensError(
                "a live nn.Module needs input_spec=InputSpec(channels, height, width, mean, std)"
            )
        spec = input_spec if isinstance(input_spec, InputSpec) else InputSpec.from_dict(input_spec)
        model = Model(source, spec, classes, name=type(source).__name__)
        # The wrapper's mean/std buffers join the live network where it already is.
        return model.to(target or module_device(source))
    overrides = input_spec.to_dict() if isinstance(input_spec, InputSpec) else input_spec
    try:
        opts = LoadOptions(classes=classes, input_spec=dict(overrides or {}), **options)
    except TypeError as e:
        raise ConvlensError(f"unknown option for load_model: {e}") from None
    src = os.fspath(source)
    name = format or detect_format(src)
    if opts.weights and name != "zoo":
        raise ConvlensError(
            f"weights= (--weights) applies to zoo architectures ({', '.join(ZOO.names())}); "
            f"{src!r} is a {name} model"
        )
    model = _read_untrusted(name, src, opts)
    model = _apply_overrides(model, replace(opts, classes=classes))
    return model if target is None else model.to(target)


def _read_untrusted(name: str, src: str, opts: LoadOptions) -> Model:
    """Run a format's reader; whatever escapes it unplanned still ends in one line.

    Every reader validates before it allocates and raises :class:`ConvlensError` for what it
    refuses; this is the last line of defence for a hostile file that reaches an unforeseen
    path (a torch, numpy or h5py error deep inside a conversion), so that the CLI and the
    server answer with one line naming the file and the reader instead of a traceback.
    """
    reader = FORMATS.get(name)
    try:
        return reader.load(src, opts)
    except ConvlensError:
        raise
    except Exception as e:  # any library error from a hostile file
        raise ConvlensError(
            f"the {name} reader could not convert {src!r}: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else 'no message'} (the file is damaged "
            "or uses something convlens does not support; if it loads in its own runtime, "
            "please report it)"
        ) from e
