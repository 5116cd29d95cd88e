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

import operator
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats.base import make_model
from convlens.model.formats.opgraph import Op, assemble, drop_final_softmax, unique
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
        raise ConvlensError(f"cannot read {path!r} as a torch.export program: {e}") from None


def read_torchscript(path: str, spec: InputSpec | None) -> torch.export.ExportedProgram:
    try:
        script = torch.jit.load(path, map_location="cpu")
    except Exception as e:
        raise ConvlensError(f"cannot read {path!r} as a TorchScript archive: {e}") from None
    if spec is None:
        raise ConvlensError(
            f"{path!r} is a TorchScript archive, which does not record its input size; give it "
            "with --input-size H[,W] and --channels C (or a sidecar convlens.json)"
        )
    from torch._export.converter import TS2EPConverter  # private API; a slow import

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter warns once per TorchScript node
            return TS2EPConverter(script.eval(), (torch.zeros(1, *spec.shape),)).convert()
    except Exception as e:
        raise ConvlensError(
            f"cannot convert the TorchScript archive {path!r} (export it with torch.export "
            f"instead): {e}"
        ) from None


# ------------------------------------------------------------------ ATen graph → modules


def _static(dim: Any) -> int:
    """A dimension as an int, ``-1`` when it is symbolic (a dynamic batch)."""
    try:
        return int(dim)
    except (TypeError, ValueError, RuntimeError):
        return -1


def _aten(target: Any) -> str:
    s = str(target)
    parts = s.split(".")
    return parts[1] if parts[0] == "aten" and len(parts) > 1 else s


def _ints(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    vals = [int(x) for x in v]
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


class _Reader:
    """Walks an ``ExportedProgram``'s graph, producing :class:`Op` s."""

    def __init__(self, ep: torch.export.ExportedProgram) -> None:
        sig = ep.graph_signature
        consts = ep.constants
        self.fqn: dict[str, str] = {
            **sig.inputs_to_parameters,
            **sig.inputs_to_buffers,
            **sig.inputs_to_lifted_tensor_constants,
        }
        self.tensors: dict[str, torch.Tensor] = {}
        for node_name, fqn in self.fqn.items():
            t = ep.state_dict.get(fqn, consts.get(fqn))
            if isinstance(t, torch.Tensor):
                self.tensors[node_name] = t.detach().clone()
        self.user_inputs = list(sig.user_inputs)
        self.ops: list[Op] = []
        self.alias: dict[str, str] = {}
        self.taken: set[str] = set()
        self.ep = ep

    def value(self, arg: Any) -> str:
        name = arg.name if isinstance(arg, torch.fx.Node) else str(arg)
        return self.alias.get(name, name)

    def tensor(self, arg: Any) -> torch.Tensor | None:
        if arg is None:
            return None
        if isinstance(arg, torch.fx.Node) and arg.name in self.tensors:
            return self.tensors[arg.name]
        raise ConvlensError(f"expected a weight tensor, got the computed value {arg}")

    def name_for(
        self, node: torch.fx.Node, leaf: type[nn.Module] | None, weight: Any = None
    ) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        fqn, kind = ("", "")
        if stack:
            fqn, kind = list(stack.values())[-1]
            fqn = str(fqn)
            kind = kind if isinstance(kind, str) else getattr(kind, "__name__", "")
        if fqn and leaf is not None and kind.endswith(leaf.__name__):
            base = fqn
        elif isinstance(weight, torch.fx.Node) and weight.name in self.fqn:
            base = self.fqn[weight.name].rsplit(".", 1)[0]
        else:
            base = f"{fqn}.{node.name}" if fqn and "." not in fqn[-1:] else node.name
        base = base.replace("L['self'].", "").strip(".") or node.name
        return unique(base, self.taken)

    def add(
        self, node: torch.fx.Node, module: nn.Module, leaf: type[nn.Module], weight: Any = None
    ) -> None:
        src = node.args[0]
        self.ops.append(
            Op(self.name_for(node, leaf, weight), [self.value(src)], node.name, module=module)
        )

    def fn(self, node: torch.fx.Node, fn: Callable[..., Any], inputs: list[Any], **kw: Any) -> None:
        self.ops.append(Op(node.name, [self.value(a) for a in inputs], node.name, fn=fn, kwargs=kw))

    def run(self) -> tuple[nn.Module, tuple[int, ...]]:
        graph = self.ep.graph
        shape: tuple[int, ...] = ()
        output = ""
        for i, node in enumerate(graph.nodes):
            if node.op == "placeholder":
                if node.name in self.user_inputs:
                    val = node.meta.get("val")
                    shape = tuple(_static(s) for s in val.shape) if val is not None else ()
                continue
            if node.op == "output":
                outs = node.args[0]
                if len(outs) != 1:
                    raise ConvlensError(f"the program has {len(outs)} outputs; convlens needs one")
                output = self.value(outs[0])
                continue
            handler = _HANDLERS.get(_aten(node.target))
            if node.target is operator.getitem:
                self.alias[node.name] = self.value(node.args[0])  # first of (out, mean, var)
                continue
            if handler is None:
                raise ConvlensError(
                    f"operation {i} ({node.name}: {node.target}) is not supported; accepted: "
                    + ", ".join(sorted(_HANDLERS))
                )
            handler(self, node)
        if len(self.user_inputs) != 1:
            raise ConvlensError(
                f"the program takes {len(self.user_inputs)} inputs; convlens needs one image"
            )
        output, _ = drop_final_softmax(self.ops, output)
        return assemble(self.value(self.user_inputs[0]), self.ops, output), shape


def _args(n: torch.fx.Node) -> list[Any]:
    """A node's arguments, loosely typed: fx's Argument union is too wide to narrow here."""
    return list(n.args)


def _conv(r: _Reader, n: torch.fx.Node) -> None:
    a = _args(n)
    if _aten(n.target) == "convolution":
        _, w, b, stride, pad, dil, transposed, _, groups = a[:9]
        if transposed:
            raise ConvlensError(f"{n.name}: transposed convolutions are not supported")
    else:
        a += [None] * (7 - len(a))
        _, w, b, stride, pad, dil, groups = a
        stride, pad, dil, groups = stride or 1, pad or 0, dil or 1, groups or 1
    weight = r.tensor(w)
    assert weight is not None
    if weight.dim() != 4:
        raise ConvlensError(f"{n.name}: only 2-D convolutions are supported")
    bias = r.tensor(b)
    padding: Any = pad if isinstance(pad, str) else _ints(pad)
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    conv = nn.Conv2d(
        weight.shape[1] * groups, weight.shape[0], kernel, _ints(stride), padding, _ints(dil),
        groups, bias=bias is not None,
    )  # fmt: skip
    conv.weight.data = weight
    if bias is not None:
        conv.bias.data = bias  # type: ignore[union-attr]
    r.add(n, conv, nn.Conv2d, w)


def _linear(r: _Reader, n: torch.fx.Node) -> None:
    w = r.tensor(_args(n)[1])
    b = r.tensor(_args(n)[2]) if len(_args(n)) > 2 else None
    assert w is not None
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    lin.weight.data = w
    if b is not None:
        lin.bias.data = b
    r.add(n, lin, nn.Linear, _args(n)[1])


def _batch_norm(r: _Reader, n: torch.fx.Node) -> None:
    a = _args(n)
    # batch_norm(x, w, b, mean, var, training, momentum, eps) or
    # _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)
    eps = float(a[7]) if _aten(n.target) == "batch_norm" else float(a[6])
    mean, var = r.tensor(a[3]), r.tensor(a[4])
    assert mean is not None and var is not None
    w, b = r.tensor(a[1]), r.tensor(a[2])
    bn = nn.BatchNorm2d(mean.shape[0], eps=eps, affine=w is not None)
    if w is not None and b is not None:
        bn.weight.data, bn.bias.data = w, b
    bn.running_mean.data, bn.running_var.data = mean, var  # type: ignore[union-attr]
    r.add(n, bn, nn.BatchNorm2d, a[1] if w is not None else a[3])


def _max_pool(r: _Reader, n: torch.fx.Node) -> None:
    a = _args(n) + [None] * 6
    k = _ints(a[1])
    stride = _ints(a[2]) if a[2] else k
    pool = nn.MaxPool2d(k, stride, _ints(a[3] or 0), _ints(a[4] or 1), ceil_mode=bool(a[5]))
    r.add(n, pool, nn.MaxPool2d)


def _avg_pool(r: _Reader, n: torch.fx.Node) -> None:
    a = _args(n) + [None] * 7
    k = _ints(a[1])
    stride = _ints(a[2]) if a[2] else k
    include = True if a[5] is None else bool(a[5])
    pool = nn.AvgPool2d(k, stride, _ints(a[3] or 0), bool(a[4]), include, a[6])
    r.add(n, pool, nn.AvgPool2d)


def _adaptive_avg(r: _Reader, n: torch.fx.Node) -> None:
    r.add(n, nn.AdaptiveAvgPool2d(_ints(_args(n)[1])), nn.AdaptiveAvgPool2d)


def _mean(r: _Reader, n: torch.fx.Node) -> None:
    dims = sorted(d % 4 for d in _args(n)[1])
    if dims != [2, 3]:
        raise ConvlensError(f"{n.name}: a mean over dims {_args(n)[1]} is not supported")
    r.add(n, nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d)
    if not (len(_args(n)) > 2 and _args(n)[2]):
        last = r.ops[-1]
        last.output = n.name + "_pooled"
        r.ops.append(
            Op(unique(last.name + "_flatten", r.taken), [last.output], n.name, module=nn.Flatten())
        )


def _flatten(r: _Reader, n: torch.fx.Node) -> None:
    start = int(_args(n)[1]) if len(_args(n)) > 1 else 0
    end = int(_args(n)[2]) if len(_args(n)) > 2 else -1
    r.add(n, nn.Flatten(start, end), nn.Flatten)


def _view(r: _Reader, n: torch.fx.Node) -> None:
    src, out = _args(n)[0].meta.get("val"), n.meta.get("val")
    if src is None or out is None or out.dim() != 2 or out.shape[0] != src.shape[0]:
        raise ConvlensError(
            f"{n.name}: a reshape to {_args(n)[1]} is not supported (only flattening)"
        )
    r.add(n, nn.Flatten(), nn.Flatten)


def _alias(r: _Reader, n: torch.fx.Node) -> None:
    r.alias[n.name] = r.value(_args(n)[0])


def _simple(
    make: Callable[[torch.fx.Node], nn.Module], leaf: type[nn.Module]
) -> Callable[[_Reader, torch.fx.Node], None]:
    return lambda r, n: r.add(n, make(n), leaf)


def _hardtanh(n: torch.fx.Node) -> nn.Module:
    lo = float(_args(n)[1]) if len(_args(n)) > 1 else -1.0
    hi = float(_args(n)[2]) if len(_args(n)) > 2 else 1.0
    return nn.ReLU6() if (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)


def _binary(fn: Callable[..., Any]) -> Callable[[_Reader, torch.fx.Node], None]:
    def handle(r: _Reader, n: torch.fx.Node) -> None:
        if not all(isinstance(a, torch.fx.Node) and a.name not in r.tensors for a in _args(n)[:2]):
            raise ConvlensError(f"{n.name}: {fn.__name__} with a constant is not supported")
        r.fn(n, fn, list(_args(n)[:2]))

    return handle


def _cat(r: _Reader, n: torch.fx.Node) -> None:
    dim = int(_args(n)[1]) if len(_args(n)) > 1 else 0
    parts = list(_args(n)[0])
    r.ops.append(Op(n.name, [r.value(p) for p in parts], n.name, fn=_concat, kwargs={"dim": dim}))


def _concat(*xs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.cat(xs, dim=dim)


_HANDLERS: dict[str, Callable[[_Reader, torch.fx.Node], None]] = {
    "conv2d": _conv,
    "convolution": _conv,
    "linear": _linear,
    "batch_norm": _batch_norm,
    "_native_batch_norm_legit_no_training": _batch_norm,
    "max_pool2d": _max_pool,
    "max_pool2d_with_indices": _max_pool,
    "avg_pool2d": _avg_pool,
    "adaptive_avg_pool2d": _adaptive_avg,
    "mean": _mean,
    "flatten": _flatten,
    "view": _view,
    "reshape": _view,
    "_unsafe_view": _view,
    "relu": _simple(lambda n: nn.ReLU(), nn.ReLU),
    "relu_": _simple(lambda n: nn.ReLU(), nn.ReLU),
    "hardtanh": _simple(_hardtanh, nn.Hardtanh),
    "hardtanh_": _simple(_hardtanh, nn.Hardtanh),
    "leaky_relu": _simple(
        lambda n: nn.LeakyReLU(float(_args(n)[1]) if len(_args(n)) > 1 else 0.01), nn.LeakyReLU
    ),
    "sigmoid": _simple(lambda n: nn.Sigmoid(), nn.Sigmoid),
    "tanh": _simple(lambda n: nn.Tanh(), nn.Tanh),
    "silu": _simple(lambda n: nn.SiLU(), nn.SiLU),
    "gelu": _simple(lambda n: nn.GELU(), nn.GELU),
    "hardswish": _simple(lambda n: nn.Hardswish(), nn.Hardswish),
    "dropout": _simple(lambda n: nn.Dropout(float(_args(n)[1])), nn.Dropout),
    "softmax": _simple(lambda n: nn.Softmax(int(_args(n)[1])), nn.Softmax),
    "_softmax": _simple(lambda n: nn.Softmax(int(_args(n)[1])), nn.Softmax),
    "add": _binary(operator.add),
    "add_": _binary(operator.add),
    "mul": _binary(operator.mul),
    "cat": _cat,
    "clone": _alias,
    "detach": _alias,
    "alias": _alias,
    "contiguous": _alias,
    "_assert_tensor_metadata": lambda r, n: None,
}


def program_to_module(ep: torch.export.ExportedProgram) -> tuple[nn.Module, tuple[int, ...]]:
    """Ordinary modules computing ``ep``, and its example input shape ``(B, C, H, W)``."""
    return _Reader(ep).run()


# ------------------------------------------------------------------ formats


def _spec_from(shape: tuple[int, ...], opts: LoadOptions, source: str) -> InputSpec:
    if len(shape) != 4:
        raise ConvlensError(f"{source!r} takes input of shape {shape}; convlens needs (B, C, H, W)")
    return InputSpec(shape[1], shape[2], shape[3])


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
