"""PyTorch programs: ``torch.export`` archives (``.pt2``) and TorchScript archives.

Neither an ``ExportedProgram`` nor a ``ScriptModule`` can be traced by ``torch.fx`` or hooked
per layer, which every view of convlens needs. So the program's ATen graph is converted back
into ordinary modules (``aten.conv2d`` → ``nn.Conv2d`` with the program's weights, ...) and
assembled by :mod:`convlens.model.formats.opgraph`. Layer names come from the program's
``nn_module_stack`` (the original module paths, ``layer1.0.conv1``), else from the owner of
the weights, else from the node name. TorchScript archives are first turned into an
``ExportedProgram`` by PyTorch's own TorchScript converter.

Safety: a ``.pt2`` archive is read by :mod:`convlens.model.formats.pt2_archive`, an
allow-list reader that never unpickles or evaluates anything; an archive it refuses for holding
pickled payloads, custom objects or code goes to ``torch.export.load`` only with
``trust_pickle=True``. Both kinds are recognised by content, whatever the file's suffix.
A TorchScript archive is a program (TorchScript code plus pickled constants) that loading
compiles and converting runs, and its loader has had code-execution bugs (CVE-2025-32434),
so it too needs ``trust_pickle=True``.

>>> m = load_model("net.pt2")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats.aten_ops import program_to_module
from convlens.model.formats.base import make_model
from convlens.model.formats.pt2_archive import PickleRequiredError, archive_kind, quiet, read_pt2
from convlens.model.formats.safety import check_zip
from convlens.model.load import FORMATS, LoadOptions, ModelFormat


def is_exported_program(source: str) -> bool:
    return archive_kind(source) == "pt2"


def is_torchscript(source: str) -> bool:
    return archive_kind(source) == "torchscript"


def read_exported(path: str, trust_pickle: bool) -> torch.export.ExportedProgram:
    """The program in a ``.pt2``: by convlens's allow-list reader, or torch's when trusted."""
    try:
        return read_pt2(path)
    except PickleRequiredError:
        if not trust_pickle:
            raise
    check_zip(path).close()  # sizes are checked even for a trusted archive
    try:
        with quiet():
            return torch.export.load(path)
    except Exception as e:
        raise ConvlensError(
            f"cannot read {path!r} as a torch.export program: {_one_line(e)}"
        ) from None


def read_torchscript(path: str, spec: InputSpec | None) -> torch.export.ExportedProgram:
    try:
        check_zip(path).close()
        with quiet():
            script = torch.jit.load(path, map_location="cpu")
    except ConvlensError:
        raise
    except Exception as e:
        raise ConvlensError(
            f"cannot read {path!r} as a TorchScript archive: {_one_line(e)}"
        ) from None
    if spec is None:
        raise ConvlensError(
            f"{path!r} is a TorchScript archive, which does not record its input size; give it "
            "with --input-size H[,W] and --channels C (or a sidecar convlens.json)"
        )
    from torch._export.converter import TS2EPConverter  # private API; a slow import

    example = (torch.zeros(1, *spec.shape),)
    try:
        with quiet():
            ep = TS2EPConverter(script.eval(), example).convert()
    except Exception as e:
        raise ConvlensError(
            f"cannot convert the TorchScript archive {path!r} (export it with torch.export "
            f"instead): {_one_line(e)}"
        ) from None
    try:  # the converter leaves sizes symbolic; one more export at the given size fixes them
        with quiet():
            return torch.export.export(ep.module(), example)
    except Exception:
        return ep


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


# ------------------------------------------------------------------ formats


def _spec_from(shape: tuple[int, ...], opts: LoadOptions, source: str) -> InputSpec:
    if len(shape) != 4:
        raise ConvlensError(f"{source!r} takes input of shape {shape}; convlens needs (B, C, H, W)")
    if min(shape[1:]) > 0:
        return InputSpec(shape[1], shape[2], shape[3])
    given = _user_spec(opts, source)  # exported with a symbolic height or width
    if given is None:
        raise ConvlensError(
            f"{source!r} was exported with a symbolic image size {shape[1:]}; give one with "
            "--input-size H[,W] (and --channels C)"
        )
    return given


def _user_spec(opts: LoadOptions, source: str) -> InputSpec | None:
    from convlens.model.formats.base import read_sidecar

    d = dict(read_sidecar(source).get("input_spec") or {}) | opts.input_spec
    if "size" in d:
        d["height"] = d["width"] = d.pop("size")
    if not {"height", "width"} <= set(d):
        return None
    d.setdefault("channels", 3)
    return InputSpec.from_dict(d)


def _finish(net: nn.Module, shape: tuple[int, ...], source: str, opts: LoadOptions) -> Model:
    spec = _spec_from(shape, opts, source)
    return make_model(
        net, spec, source, opts.classes, name=Path(source).stem, input_overrides=opts.input_spec
    )


def load_exported(source: str, opts: LoadOptions) -> Model:
    net, shape = program_to_module(read_exported(source, opts.trust_pickle))
    return _finish(net, shape, source, opts)


def load_torchscript(source: str, opts: LoadOptions) -> Model:
    if not opts.trust_pickle:
        raise ConvlensError(
            f"{source!r} is a TorchScript archive: TorchScript code and pickled data that run "
            "when it is loaded. If you trust its author, pass --trust-pickle (trust_pickle=True); "
            "or save the model with torch.export.save (.pt2), which loads without running code"
        )
    net, shape = program_to_module(read_torchscript(source, _user_spec(opts, source)))
    return _finish(net, shape, source, opts)


FORMATS.add(
    "torch-export",
    ModelFormat(is_exported_program, load_exported, "a torch.export program (.pt2)"),
)
FORMATS.add(
    "torchscript",
    ModelFormat(
        is_torchscript,
        load_torchscript,
        "a TorchScript archive (torch.jit.save) with --input-size and --trust-pickle",
    ),
)
