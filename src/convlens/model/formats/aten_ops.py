"""ATen graph → ordinary modules: one converter per operator, registered once.

An ``ExportedProgram`` (from a ``.pt2`` archive, or converted from TorchScript) is a graph of
ATen calls. Each call becomes an :class:`~convlens.model.formats.opgraph.Op`: a layer module
(``aten.conv2d`` → ``nn.Conv2d`` holding the program's weights, ``aten.hardswish`` →
``nn.Hardswish``) where torch has one, else a plain function (``cat``, ``permute``, an
addition of two computed values). Arguments are bound by name against the operator's own
schema, defaults included, so an argument that changes the result is either honoured or the
operation is refused with its name, node and position; nothing is dropped silently.

The batch dimension is free: the program was traced at one batch size, but convlens runs any.
So reshapes keep the leading dimension and rebuild the rest from the traced shape, and an
operation that mixes the batch into other dimensions (a permute moving dim 0, a concat or
split along it) is refused.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.model.formats.opgraph import Op, assemble, drop_final_softmax, unique

Handler = Callable[["Reader", torch.fx.Node, dict[str, Any]], None]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str) -> Callable[[Handler], Handler]:
    """Register a converter for the ATen operators ``names`` (overloads share it)."""

    def register(fn: Handler) -> Handler:
        for name in names:
            if name in HANDLERS:
                raise RuntimeError(f"two converters for aten.{name}")
            HANDLERS[name] = fn
        return fn

    return register


def aten_name(target: Any) -> str:
    """``aten.conv2d.default`` → ``conv2d``; other targets as their string."""
    parts = str(target).split(".")
    return parts[1] if parts[0] == "aten" and len(parts) > 1 else str(target)


def bind(node: torch.fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, with the schema's defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args) and not arg.kwarg_only:
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    # Overloads name their first tensor ``self`` or ``input``; converters may use either.
    if "self" in out and "input" not in out:
        out["input"] = out["self"]
    elif "input" in out and "self" not in out:
        out["self"] = out["input"]
    return out


_RESERVED = set(dir(nn.Module)) | {"self"}


def safe_name(raw: str) -> str:
    """A module path from a file's names: identifier (or index) segments, none reserved.

    Names come from the file (``nn_module_stack``, node names), so one could be ``forward``
    or ``__class__`` (which would shadow a Module attribute when assigned) or carry code.

    >>> safe_name("layer1.0.conv1"), safe_name("forward"), safe_name("a b.__class__")
    ('layer1.0.conv1', 'forward_', 'a_b.__class___')
    """
    parts = []
    for seg in str(raw)[:200].split("."):
        seg = re.sub(r"[^0-9A-Za-z_]", "_", seg) or "_"
        if not seg.isdigit() and seg[0].isdigit():
            seg = "_" + seg
        if seg in _RESERVED or seg.startswith("__"):
            seg += "_"
        parts.append(seg)
    return ".".join(parts)


def _static(dim: Any) -> int:
    """A dimension as an int, ``-1`` when it is symbolic (a dynamic batch)."""
    try:
        return int(dim)
    except (TypeError, ValueError, RuntimeError):
        return -1


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    vals = [int(x) for x in v]
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(_static(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


# ------------------------------------------------------------------ functions the graph calls


def binary(
    a: Any, b: Any, *, op: str, alpha: float = 1, rounding_mode: str | None = None
) -> torch.Tensor:
    """``a (op) b`` for add/sub (``a ± alpha·b``), mul and div (with its rounding mode)."""
    if op == "add":
        return torch.add(a, b, alpha=alpha)
    if op == "sub":
        return torch.sub(a, b, alpha=alpha)
    if op == "mul":
        return torch.mul(a, b)
    return torch.div(a, b, rounding_mode=rounding_mode)


def unary(x: torch.Tensor, op: str = "neg") -> torch.Tensor:
    """One of ``reciprocal, neg, abs, exp, sqrt, rsqrt`` by name."""
    fn: Callable[[torch.Tensor], torch.Tensor] = getattr(torch, op)
    return fn(x)


def slice_dim(
    x: torch.Tensor, dim: int = 1, start: int = 0, end: int = 2**63 - 1, step: int = 1
) -> torch.Tensor:
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, end, step)
    return x[tuple(index)]


def select(x: torch.Tensor, dim: int = 1, index: int = 0) -> torch.Tensor:
    return x.select(dim, index)


def concat(*xs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.cat(xs, dim=dim)


def reshape_rest(x: torch.Tensor, rest: tuple[int, ...] = ()) -> torch.Tensor:
    """Keep the batch dimension, reshape the others to ``rest``."""
    return x.reshape(x.shape[0], *rest)


def permute(x: torch.Tensor, dims: tuple[int, ...] = ()) -> torch.Tensor:
    return x.permute(dims)


def transpose(x: torch.Tensor, dim0: int = 1, dim1: int = 2) -> torch.Tensor:
    return x.transpose(dim0, dim1)


def chunk(x: torch.Tensor, chunks: int = 2, dim: int = 1) -> tuple[torch.Tensor, ...]:
    return torch.chunk(x, chunks, dim)


def split(x: torch.Tensor, sizes: int | list[int] = 1, dim: int = 1) -> tuple[torch.Tensor, ...]:
    return torch.split(x, sizes, dim)


def item(xs: Sequence[torch.Tensor], index: int = 0) -> torch.Tensor:
    return xs[index]


def mean(x: torch.Tensor, dim: tuple[int, ...] = (), keepdim: bool = False) -> torch.Tensor:
    return x.mean(dim, keepdim=keepdim)


def clamp(x: torch.Tensor, min: float | None = None, max: float | None = None) -> torch.Tensor:
    return torch.clamp(x, min, max)


def pad(
    x: torch.Tensor, pad: tuple[int, ...] = (), mode: str = "constant", value: float = 0.0
) -> torch.Tensor:
    return F.pad(x, pad, mode=mode, value=value if mode == "constant" else None)


def squeeze(x: torch.Tensor, dim: tuple[int, ...] = ()) -> torch.Tensor:
    return x.squeeze(dim)


def unsqueeze(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return x.unsqueeze(dim)


class WithConstant(nn.Module):
    """``x (op) c`` or ``c (op) x`` with a constant tensor of the program (a buffer here)."""

    def __init__(
        self, op: str, constant: torch.Tensor, constant_first: bool, **kwargs: Any
    ) -> None:
        super().__init__()
        self.op, self.constant_first, self.kwargs = op, constant_first, kwargs
        self.register_buffer("constant", constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.constant
        a, b = (c, x) if self.constant_first else (x, c)
        return binary(a, b, op=self.op, **self.kwargs)

    def extra_repr(self) -> str:
        shape = tuple(self.get_buffer("constant").shape)
        return f"op={self.op}, constant_shape={shape}"


# ------------------------------------------------------------------ the reader


class Reader:
    """Walks an ``ExportedProgram``'s graph, producing :class:`Op` s."""

    def __init__(self, ep: torch.export.ExportedProgram) -> None:
        sig = ep.graph_signature
        self.fqn: dict[str, str] = {
            **sig.inputs_to_parameters,
            **sig.inputs_to_buffers,
            **sig.inputs_to_lifted_tensor_constants,
        }
        self.tensors: dict[str, torch.Tensor] = {}
        for node_name, fqn in self.fqn.items():
            t = ep.state_dict.get(fqn, ep.constants.get(fqn))
            if isinstance(t, torch.Tensor):
                self.tensors[node_name] = t.detach().clone()
        self.user_inputs = list(sig.user_inputs)
        self.ops: list[Op] = []
        self.alias: dict[str, str] = {}
        self.produced: set[str] = set(self.user_inputs)
        self.sequences: set[str] = set()  # values that are tuples (chunk, split)
        self.first_only: set[str] = set()  # tuples whose later items convlens does not build
        self.taken: set[str] = set()
        self.ep = ep
        self.node: torch.fx.Node | None = None
        self.position = 0

    # -- values

    def refuse(self, why: str) -> ConvlensError:
        n = self.node
        where = f"operation {self.position} ({n.name}: {n.target})" if n is not None else "graph"
        return ConvlensError(f"{where}: {why}")

    def value(self, arg: Any) -> str:
        if not isinstance(arg, torch.fx.Node):
            raise self.refuse(f"expected a computed tensor, got the constant {arg!r}")
        name = self.alias.get(arg.name, arg.name)
        if name in self.tensors:
            raise self.refuse(f"the weight {self.fqn.get(name, name)!r} is used as an input here")
        if name not in self.produced:
            raise self.refuse(f"it uses {arg.name}, which convlens could not build")
        return name

    def is_const(self, arg: Any) -> bool:
        return isinstance(arg, torch.fx.Node) and self.alias.get(arg.name, arg.name) in self.tensors

    def tensor(self, arg: Any, what: str = "weight") -> torch.Tensor | None:
        if arg is None:
            return None
        if self.is_const(arg):
            return self.tensors[self.alias.get(arg.name, arg.name)]
        raise self.refuse(f"its {what} is computed in the graph; accepted: a stored tensor")

    def batch_dim(self, dim: Any, ndim: int, what: str) -> int:
        d = int(dim) % ndim if ndim else int(dim)
        if d == 0:
            raise self.refuse(f"it {what} along the batch dimension, which convlens keeps free")
        return d

    # -- emitting ops

    def name_for(self, node: torch.fx.Node, leaf: type[nn.Module] | None, weight: Any) -> str:
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
            base = f"{fqn}.{node.name}" if fqn else node.name
        base = base.replace("L['self'].", "").strip(".") or node.name
        return unique(safe_name(base), self.taken)

    def module(
        self,
        node: torch.fx.Node,
        module: nn.Module,
        source: Any,
        leaf: type[nn.Module] | None = None,
        weight: Any = None,
    ) -> None:
        name = self.name_for(node, leaf or type(module), weight)
        self.ops.append(Op(name, [self.value(source)], node.name, module=module))
        self.produced.add(node.name)

    def fn(self, node: torch.fx.Node, fn: Callable[..., Any], inputs: list[Any], **kw: Any) -> None:
        self.ops.append(Op(node.name, [self.value(a) for a in inputs], node.name, fn=fn, kwargs=kw))
        self.produced.add(node.name)

    def same(self, node: torch.fx.Node, source: Any) -> None:
        """``node`` is its input (an identity: clone, contiguous, eval-mode dropout)."""
        if self.is_const(source):
            self.alias[node.name] = self.alias.get(source.name, source.name)
        else:
            self.alias[node.name] = self.value(source)

    # -- the walk

    def run(self) -> tuple[nn.Module, tuple[int, ...]]:
        shape: tuple[int, ...] = ()
        output = ""
        for i, node in enumerate(self.ep.graph.nodes):
            self.node, self.position = node, i
            if node.op == "placeholder":
                if node.name in self.user_inputs:
                    shape = _shape(node) or ()
                continue
            if node.op == "output":
                outs = node.args[0]
                if not isinstance(outs, list | tuple) or len(outs) != 1:
                    n = len(outs) if isinstance(outs, list | tuple) else 0
                    raise self.refuse(f"the program has {n} outputs; convlens needs one")
                output = self.value(outs[0])
                continue
            if node.target is operator.getitem:
                self._getitem(node)
                continue
            name = aten_name(node.target)
            if name.endswith("_") and not name.startswith("_"):
                self._check_in_place(node)
            elif self._fold(node):
                continue
            handler = HANDLERS.get(name)
            if handler is None or node.op != "call_function":
                raise self.refuse(
                    "this operator is not supported; accepted: "
                    + ", ".join(sorted(HANDLERS))
                    + ". Rewrite that part of the model with these operators before exporting"
                )
            try:
                handler(self, node, bind(node))
            except ConvlensError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as e:
                # arguments of a kind the operator's schema allows but a layer cannot take
                # (an integer weight, say): one line, with the operation's position
                text = str(e).strip().splitlines()[0][:200] if str(e).strip() else repr(e)
                raise self.refuse(f"its arguments cannot be converted ({text})") from None
        if len(self.user_inputs) != 1:
            raise ConvlensError(
                f"the program takes {len(self.user_inputs)} inputs; convlens needs one image"
            )
        self.node = None
        output, _ = drop_final_softmax(self.ops, output)
        return assemble(self.user_inputs[0], self.ops, output), shape

    def _check_in_place(self, node: torch.fx.Node) -> None:
        """Refuse an in-place op whose input (or a view of it) is read after the change.

        Converted, ``relu_`` makes a new value; any later reader of the old one would see the
        unchanged tensor where PyTorch saw the changed one.
        """
        order = {n: i for i, n in enumerate(self.ep.graph.nodes)}
        here = order[node]
        chain: list[torch.fx.Node] = []
        src = node.args[0] if node.args else None
        while isinstance(src, torch.fx.Node) and src not in chain:
            chain.append(src)
            is_view = src.target is operator.getitem or aten_name(src.target) in _VIEWS
            src = src.args[0] if is_view and src.args else None
        for base in chain:
            for user in base.users:
                if user is not node and order.get(user, -1) > here and user not in chain:
                    raise self.refuse(
                        f"{user.name} reads {base.name} after this operation changed it in place"
                    )

    def _fold(self, node: torch.fx.Node) -> bool:
        """Compute an operation whose tensor inputs are all stored constants, once, now.

        ``self.gamma.view(1, -1, 1, 1)``, ``torch.tensor(2.0) * 3``: the result is another
        constant. Its declared size is checked first, and random operators are never folded.
        """
        if not isinstance(node.target, torch._ops.OpOverload) or node.target.namespace != "aten":
            return False
        if any(w in str(node.target) for w in _RANDOM):
            return False
        nodes = [
            x for x in _flat([*node.args, *node.kwargs.values()]) if isinstance(x, torch.fx.Node)
        ]
        if not all(self.is_const(x) for x in nodes):
            return False
        if not nodes and aten_name(node.target) not in _FACTORIES:
            return False
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or any(_static(d) < 0 for d in val.shape):
            return False
        from convlens.model.formats.safety import checked_elements

        checked_elements(tuple(int(d) for d in val.shape), f"constant {node.name}")

        def real(x: Any) -> Any:
            if isinstance(x, torch.fx.Node):
                return self.tensors[self.alias.get(x.name, x.name)]
            if isinstance(x, list | tuple):
                return type(x)(real(v) for v in x)
            return x

        try:
            with torch.no_grad():
                out = node.target(
                    *real(list(node.args)), **{k: real(v) for k, v in node.kwargs.items()}
                )
        except (RuntimeError, TypeError, ValueError):
            return False  # not computable here (another device, say): the handler decides
        if not isinstance(out, torch.Tensor):
            return False
        self.tensors[node.name] = out.detach().clone()
        return True

    def _getitem(self, node: torch.fx.Node) -> None:
        src, index = node.args[0], node.args[1]
        name = src.name if isinstance(src, torch.fx.Node) else ""
        if name in self.first_only:
            if index != 0 and not node.users:
                return  # an unused saved statistic or index
            if index != 0:
                raise self.refuse(f"it uses output {index} of {name}; convlens builds output 0")
            self.alias[node.name] = self.alias.get(name, name)
        elif name in self.sequences:
            self.fn(node, item, [src], index=int(index))  # type: ignore[arg-type]
        else:
            raise self.refuse(f"it indexes {name or src!r}, which is not a tuple convlens builds")


_VIEWS = {"view", "_unsafe_view", "reshape", "transpose", "permute", "slice", "select",
          "squeeze", "unsqueeze", "alias", "detach", "expand", "contiguous", "flatten",
          "chunk", "split", "split_with_sizes", "unsafe_split", "as_strided"}  # fmt: skip
_FACTORIES = {"ones", "zeros", "full", "arange", "scalar_tensor", "eye", "linspace"}
_RANDOM = ("rand", "bernoulli", "dropout", "normal", "uniform", "multinomial", "empty")


def _flat(xs: Any) -> list[Any]:
    out: list[Any] = []
    stack = [xs]
    while stack:
        x = stack.pop()
        if isinstance(x, list | tuple):
            stack.extend(x)
        else:
            out.append(x)
    return out


# ------------------------------------------------------------------ layers with weights


@handles("conv2d", "convolution", "conv_transpose2d", "_convolution")
def _conv(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    op = aten_name(n.target)
    transposed = op == "conv_transpose2d" or bool(a.get("transposed"))
    weight = r.tensor(a["weight"])
    bias = r.tensor(a.get("bias"), "bias")
    assert weight is not None
    if weight.dim() != 4:
        raise r.refuse(f"a {weight.dim() - 2}-D convolution; accepted: 2-D")
    groups = int(a.get("groups") or 1)
    stride, dil = _pair(a.get("stride") or 1), _pair(a.get("dilation") or 1)
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    padding: Any = a.get("padding") if a.get("padding") is not None else 0
    padding = padding if isinstance(padding, str) else _pair(padding)
    conv: nn.Conv2d | nn.ConvTranspose2d
    if transposed:
        out_pad = _pair(a.get("output_padding") or 0)
        if isinstance(padding, str):
            raise r.refuse(f"a transposed convolution with padding {padding!r}")
        conv = nn.ConvTranspose2d(
            weight.shape[0], weight.shape[1] * groups, kernel, stride, padding, out_pad,
            groups, bias is not None, dil,
        )  # fmt: skip
    else:
        if any(int(p) for p in _pair(a.get("output_padding") or 0)):
            raise r.refuse("output_padding on a forward convolution")
        conv = nn.Conv2d(
            weight.shape[1] * groups, weight.shape[0], kernel, stride, padding, dil, groups,
            bias is not None,
        )  # fmt: skip
    conv.weight.data = weight
    if bias is not None:
        conv.bias.data = bias  # type: ignore[union-attr]
    r.module(n, conv, a["input"], weight=a["weight"])


@handles("linear")
def _linear(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    w, b = r.tensor(a["weight"]), r.tensor(a.get("bias"), "bias")
    assert w is not None
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    lin.weight.data = w
    if b is not None:
        lin.bias.data = b
    r.module(n, lin, a["input"], weight=a["weight"])


@handles("batch_norm", "_native_batch_norm_legit_no_training")
def _batch_norm(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    if a.get("training"):
        raise r.refuse("batch norm in training mode; export the model after model.eval()")
    mean_, var = r.tensor(a["running_mean"], "running mean"), r.tensor(a["running_var"], "var")
    if mean_ is None or var is None:
        raise r.refuse("batch norm without running statistics")
    w, b = r.tensor(a.get("weight")), r.tensor(a.get("bias"), "bias")
    ndim = len(_shape(a["input"]) or (0, 0, 0, 0))
    kind: type[nn.BatchNorm1d | nn.BatchNorm2d] = nn.BatchNorm2d if ndim == 4 else nn.BatchNorm1d
    bn = kind(mean_.shape[0], eps=float(a["eps"]), affine=w is not None or b is not None)
    if bn.affine:
        bn.weight.data = w if w is not None else torch.ones_like(mean_)
        bn.bias.data = b if b is not None else torch.zeros_like(mean_)
    bn.running_mean.data, bn.running_var.data = mean_, var  # type: ignore[union-attr]
    if aten_name(n.target) == "_native_batch_norm_legit_no_training":
        r.first_only.add(n.name)  # (output, saved mean, saved invstd)
    r.module(n, bn, a["input"], weight=a.get("weight") or a["running_mean"])


@handles("layer_norm")
def _layer_norm(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    shape = [int(s) for s in a["normalized_shape"]]
    w, b = r.tensor(a.get("weight")), r.tensor(a.get("bias"), "bias")
    ln = nn.LayerNorm(
        shape, eps=float(a["eps"]), elementwise_affine=w is not None, bias=b is not None
    )
    if w is not None:
        ln.weight.data = w
    if b is not None:
        ln.bias.data = b
    r.module(n, ln, a["input"], weight=a.get("weight"))


@handles("prelu", "_prelu_kernel")
def _prelu(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    w = r.tensor(a["weight"])
    assert w is not None
    per_channel = w.dim() == 1 or (w.dim() >= 2 and w.shape[1] == w.numel())
    if w.numel() > 1 and not per_channel:
        raise r.refuse(f"a PReLU weight of shape {tuple(w.shape)}; accepted: one value per channel")
    act = nn.PReLU(w.numel())
    act.weight.data = w.reshape(-1).clone()
    r.module(n, act, a["self"], weight=a["weight"])


# ------------------------------------------------------------------ pooling and resizing


@handles("max_pool2d", "max_pool2d_with_indices")
def _max_pool(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    k = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) if a.get("stride") else k
    pool = nn.MaxPool2d(
        k, stride, _pair(a["padding"]), _pair(a["dilation"]), ceil_mode=bool(a["ceil_mode"])
    )
    if aten_name(n.target) == "max_pool2d_with_indices":
        r.first_only.add(n.name)
    r.module(n, pool, a["self"])


@handles("avg_pool2d")
def _avg_pool(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    k = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) if a.get("stride") else k
    pool = nn.AvgPool2d(
        k, stride, _pair(a["padding"]), bool(a["ceil_mode"]), bool(a["count_include_pad"]),
        a.get("divisor_override"),
    )  # fmt: skip
    r.module(n, pool, a["self"])


@handles("adaptive_avg_pool2d", "_adaptive_avg_pool2d")
def _adaptive_avg(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    r.module(n, nn.AdaptiveAvgPool2d(_pair(a["output_size"])), a["self"])


@handles("adaptive_max_pool2d")
def _adaptive_max(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    r.first_only.add(n.name)  # (values, indices)
    r.module(n, nn.AdaptiveMaxPool2d(_pair(a["output_size"])), a["self"])


@handles("mean")
def _mean(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    src = _shape(a["self"]) or ()
    if a.get("dtype") is not None:
        raise r.refuse(f"a mean computed in {a['dtype']}")
    dims = a.get("dim")
    if not dims:
        raise r.refuse("a mean over every dimension, the batch included")
    ndim = len(src)
    norm = sorted({r.batch_dim(d, ndim, "averages") for d in dims})
    if ndim == 4 and norm == [2, 3]:  # global average pooling, seen as a layer
        r.module(n, nn.AdaptiveAvgPool2d(1), a["self"])
        if not a.get("keepdim"):
            pooled = r.ops[-1]
            pooled.output = n.name + "_pooled"
            flat = unique(pooled.name + "_flatten", r.taken)
            r.ops.append(Op(flat, [pooled.output], n.name, module=nn.Flatten()))
        return
    r.fn(n, mean, [a["self"]], dim=tuple(norm), keepdim=bool(a.get("keepdim")))


_UPSAMPLE_MODES = {
    "upsample_nearest2d": "nearest",
    "_upsample_nearest_exact2d": "nearest-exact",
    "upsample_bilinear2d": "bilinear",
    "upsample_bicubic2d": "bicubic",
}


@handles(*_UPSAMPLE_MODES)
def _upsample(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    mode = _UPSAMPLE_MODES[aten_name(n.target)]
    size = a.get("output_size")
    scales = a.get("scale_factors")
    if scales is None:
        scales = [a.get("scales_h"), a.get("scales_w")]
    # ATen ignores a missing or non-positive scale (TorchScript writes -1.0 for "none").
    scales = [None if v is None or float(v) <= 0 else float(v) for v in scales]
    if scales == [None, None]:
        scales = None
    elif None in scales:
        raise r.refuse("an upsampling with only one scale factor given")
    align = a.get("align_corners") if mode in ("bilinear", "bicubic") else None
    if size is not None and scales is None:
        up = nn.Upsample(size=_pair(size), mode=mode, align_corners=align)
    elif scales is not None:
        # nn.Upsample(scale_factor=s) makes floor(in × s) pixels and samples with s itself:
        # exactly the ATen call, which also gets a size only when it equals floor(in × s).
        sh, sw = (float(s) for s in scales)
        up = nn.Upsample(scale_factor=(sh, sw), mode=mode, align_corners=align)
        src = _shape(a["input"]) or ()
        known = size is not None and len(src) == 4 and min(src[2:]) > 0
        if known and (int(src[2] * sh), int(src[3] * sw)) != _pair(size):
            raise r.refuse("an upsampling whose size and scale factors disagree")
    else:
        raise r.refuse("an upsampling with neither a size nor scale factors")
    r.module(n, up, a["input"])


# ------------------------------------------------------------------ activations


def _act(make: Callable[[dict[str, Any]], nn.Module], *names: str, src: str = "self") -> None:
    def convert(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
        r.module(n, make(a), a[src])

    handles(*names)(convert)


def _hardtanh(a: dict[str, Any]) -> nn.Module:
    lo, hi = float(a["min_val"]), float(a["max_val"])
    return nn.ReLU6() if (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)


@handles("elu", "elu_")
def _elu(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    alpha, scale, in_scale = (float(a[k]) for k in ("alpha", "scale", "input_scale"))
    if (scale, in_scale) != (1.0, 1.0):
        raise r.refuse(f"an ELU with scale {scale} and input_scale {in_scale}; accepted: 1 and 1")
    r.module(n, nn.ELU(alpha), a["self"])


def _gelu(a: dict[str, Any]) -> nn.Module:
    return nn.GELU(approximate=str(a.get("approximate") or "none"))


def _softmax(kind: type[nn.Softmax | nn.LogSoftmax]) -> Handler:
    def convert(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
        if a.get("dtype") is not None or a.get("half_to_float"):
            raise r.refuse("a softmax computed in another dtype")
        ndim = len(_shape(a["self"]) or (0, 0))
        r.module(n, kind(r.batch_dim(a["dim"], ndim, "normalises")), a["self"])

    return convert


_act(lambda a: nn.ReLU(), "relu", "relu_")
_act(lambda a: nn.ReLU6(), "relu6", "relu6_")
_act(_hardtanh, "hardtanh", "hardtanh_")
_act(lambda a: nn.Hardswish(), "hardswish", "hardswish_")
_act(lambda a: nn.Hardsigmoid(), "hardsigmoid", "hardsigmoid_")
_act(lambda a: nn.SiLU(), "silu", "silu_")
_act(lambda a: nn.Sigmoid(), "sigmoid", "sigmoid_")
_act(lambda a: nn.Tanh(), "tanh", "tanh_")
_act(lambda a: nn.Mish(), "mish", "mish_")
_act(_gelu, "gelu", "gelu_")
_act(lambda a: nn.SELU(), "selu", "selu_")
_act(lambda a: nn.LeakyReLU(float(a["negative_slope"])), "leaky_relu", "leaky_relu_")
_act(lambda a: nn.Softplus(float(a["beta"]), float(a["threshold"])), "softplus")
handles("softmax", "_softmax")(_softmax(nn.Softmax))
handles("log_softmax", "_log_softmax")(_softmax(nn.LogSoftmax))


@handles("clamp", "clamp_", "clip", "clamp_min", "clamp_max")
def _clamp(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    lo, hi = a.get("min"), a.get("max")
    if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
        raise r.refuse("a clamp with tensor bounds; accepted: numbers")
    if lo is not None and hi is not None:
        pair = (float(lo), float(hi))
        r.module(n, nn.ReLU6() if pair == (0.0, 6.0) else nn.Hardtanh(*pair), a["self"])
    elif lo is not None and hi is None and float(lo) == 0.0:
        r.module(n, nn.ReLU(), a["self"])
    else:
        r.fn(n, clamp, [a["self"]], min=lo, max=hi)


@handles("dropout", "dropout_", "feature_dropout", "alpha_dropout")
def _dropout(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    if a.get("train"):
        raise r.refuse("dropout in training mode; export the model after model.eval()")
    r.module(n, nn.Dropout(float(a["p"])), a["input"] if "input" in a else a["self"])


# ------------------------------------------------------------------ arithmetic


_ARITH = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "rsub": "sub",
          "mul": "mul", "mul_": "mul", "div": "div", "div_": "div"}  # fmt: skip


@handles(*_ARITH)
def _arith(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    name = aten_name(n.target)
    op = _ARITH[name]
    x, y = a["self"], a["other"]
    if name == "rsub":  # rsub(self, other, alpha) = other - alpha * self
        x, y = y, x
    kw: dict[str, Any] = {}
    if op in ("add", "sub"):
        alpha = a.get("alpha")
        if alpha is not None and alpha != 1:
            if isinstance(alpha, torch.fx.Node):
                raise r.refuse("an alpha computed in the graph")
            kw["alpha"] = alpha
    if op == "div" and a.get("rounding_mode") is not None:
        kw["rounding_mode"] = str(a["rounding_mode"])
    x_node = isinstance(x, torch.fx.Node) and not r.is_const(x)
    y_node = isinstance(y, torch.fx.Node) and not r.is_const(y)
    if x_node and y_node:
        r.fn(n, binary, [x, y], op=op, **kw)
    elif x_node or y_node:
        other = y if x_node else x
        src = x if x_node else y
        if r.is_const(other):
            c = r.tensor(other)
            assert c is not None
            name_ = r.name_for(n, None, None)
            mod = WithConstant(op, c.clone(), constant_first=not x_node, **kw)
            r.ops.append(Op(name_, [r.value(src)], n.name, module=mod))
            r.produced.add(n.name)
        elif isinstance(other, int | float | bool):
            fn_kw = dict(kw)
            r.fn(n, _scalar_binary, [src], op=op, scalar=other, scalar_first=not x_node, **fn_kw)
        else:
            raise r.refuse(f"an operand {other!r}; accepted: tensors and numbers")
    else:
        raise r.refuse("arithmetic on constants only (fold it into the weights before exporting)")


def _scalar_binary(
    x: torch.Tensor, *, op: str, scalar: float, scalar_first: bool, **kw: Any
) -> torch.Tensor:
    """``x (op) scalar`` or ``scalar (op) x``; torch's functions want the tensor first."""
    if not scalar_first:
        return binary(x, scalar, op=op, **kw)
    s = torch.as_tensor(scalar, dtype=x.dtype if x.is_floating_point() else None, device=x.device)
    return binary(s, x, op=op, **kw)


# ------------------------------------------------------------------ shapes


@handles("view", "reshape", "_unsafe_view", "view_copy")
def _view(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    src, out = _shape(a["self"]), _shape(n)
    if src is None or out is None or not src or not out:
        raise r.refuse("a reshape whose shapes the program does not record")
    if out[0] != src[0]:
        raise r.refuse(
            f"a reshape from {src} to {out} changes the batch dimension, which convlens keeps free"
        )
    rest = out[1:]
    if any(d < 0 for d in rest):
        raise r.refuse(f"a reshape to the symbolic shape {out}")
    if len(out) == 2 and len(src) > 2:
        r.module(n, nn.Flatten(), a["self"])
    else:
        r.fn(n, reshape_rest, [a["self"]], rest=rest)


@handles("flatten")
def _flatten(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    ndim = len(_shape(a["self"]) or ())
    start, end = int(a.get("start_dim", 0)), int(a.get("end_dim", -1))
    start, end = (start % ndim, end % ndim) if ndim else (start, end)
    if start == 0 and end > 0:
        raise r.refuse("a flatten that merges the batch dimension")
    if start == end:
        r.same(n, a["self"])
        return
    r.module(n, nn.Flatten(start, end), a["self"])


@handles("permute")
def _permute(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    ndim = len(_shape(a["self"]) or ())
    dims = tuple(int(d) % ndim for d in a["dims"])
    if dims[0] != 0:
        raise r.refuse(f"a permute {dims} that moves the batch dimension")
    r.fn(n, permute, [a["self"]], dims=dims)


@handles("transpose")
def _transpose(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    ndim = len(_shape(a["self"]) or ())
    d0 = r.batch_dim(a["dim0"], ndim, "transposes")
    d1 = r.batch_dim(a["dim1"], ndim, "transposes")
    r.fn(n, transpose, [a["self"]], dim0=d0, dim1=d1)


@handles("squeeze", "unsqueeze")
def _squeeze(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    src = _shape(a["self"]) or ()
    if aten_name(n.target) == "unsqueeze":
        d = int(a["dim"]) % (len(src) + 1)
        if d == 0:
            raise r.refuse("an unsqueeze in front of the batch dimension")
        r.fn(n, unsqueeze, [a["self"]], dim=d)
        return
    dims = a.get("dim")
    if dims is None:
        raise r.refuse("a squeeze of every size-1 dimension (the batch may be 1)")
    dims = [dims] if isinstance(dims, int) else list(dims)
    norm = tuple(r.batch_dim(d, len(src), "squeezes") for d in dims)
    r.fn(n, squeeze, [a["self"]], dim=norm)


@handles("slice")
def _slice(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    src = _shape(a["self"]) or ()
    dim, start, end, step = int(a["dim"]), a.get("start"), a.get("end"), int(a.get("step") or 1)
    if any(isinstance(v, torch.fx.Node) for v in (start, end)):
        raise r.refuse("a slice with computed bounds")
    start_, end_ = int(start or 0), (2**63 - 1 if end is None else int(end))
    if src and dim % len(src) == 0:  # x[:, ...] slices the batch fully: the same tensor
        if start_ == 0 and step == 1 and end_ >= 2**62:
            r.same(n, a["self"])
            return
        raise r.refuse("a slice of the batch dimension")
    r.fn(n, slice_dim, [a["self"]], dim=dim % len(src), start=start_, end=end_, step=step)


@handles("select")
def _select(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    ndim = len(_shape(a["self"]) or ())
    dim = r.batch_dim(a["dim"], ndim, "selects")
    r.fn(n, select, [a["self"]], dim=dim, index=int(a["index"]))


@handles("reciprocal", "neg", "abs", "exp", "sqrt", "rsqrt")
def _unary(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    r.fn(n, unary, [a["self"]], op=aten_name(n.target))


@handles("cat", "concat", "concatenate")
def _cat(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    parts = list(a["tensors"])
    ndim = len(_shape(n) or ())
    dim = r.batch_dim(a.get("dim", 0), ndim, "concatenates")
    r.fn(n, concat, parts, dim=dim)


@handles("chunk")
def _chunk(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    ndim = len(_shape(a["self"]) or ())
    dim = r.batch_dim(a.get("dim", 0), ndim, "splits")
    r.fn(n, chunk, [a["self"]], chunks=int(a["chunks"]), dim=dim)
    r.sequences.add(n.name)


@handles("split", "split_with_sizes", "unsafe_split")
def _split(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    ndim = len(_shape(a["self"]) or ())
    dim = r.batch_dim(a.get("dim", 0), ndim, "splits")
    raw: Any = a.get("split_size") if "split_size" in a else a.get("split_sizes")
    sizes = int(raw) if isinstance(raw, int) else [int(s) for s in raw]
    r.fn(n, split, [a["self"]], sizes=sizes, dim=dim)
    r.sequences.add(n.name)


_PAD_MODULES = {"constant": nn.ConstantPad2d, "reflect": nn.ReflectionPad2d,
                "replicate": nn.ReplicationPad2d, "circular": nn.CircularPad2d}  # fmt: skip


@handles("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d")
def _pad(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    name = aten_name(n.target)
    mode = {"reflection_pad2d": "reflect", "replication_pad2d": "replicate"}.get(
        name, str(a.get("mode") or "constant")
    )
    amounts = tuple(int(p) for p in (a["pad"] if "pad" in a else a["padding"]))
    value = float(a.get("value") or 0.0)
    ndim = len(_shape(a["self"]) or ())
    if mode not in _PAD_MODULES:
        raise r.refuse(f"padding mode {mode!r}; accepted: {', '.join(_PAD_MODULES)}")
    if len(amounts) // 2 >= ndim:
        raise r.refuse("padding of the batch dimension")
    if ndim == 4 and len(amounts) == 4:
        module: nn.Module = (
            nn.ConstantPad2d(amounts, value) if mode == "constant" else _PAD_MODULES[mode](amounts)
        )
        if mode == "constant" and value == 0.0:
            module = nn.ZeroPad2d(amounts)
        r.module(n, module, a["self"])
    else:
        r.fn(n, pad, [a["self"]], pad=amounts, mode=mode, value=value)


@handles("clone", "detach", "detach_", "alias", "contiguous", "lift_fresh_copy", "lift_fresh")
def _identity(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    """Copies and memory layouts: the same values."""
    r.same(n, n.args[0])


@handles("_assert_tensor_metadata", "sym_size", "_assert_scalar", "sym_constrain_range_for_size")
def _no_value(r: Reader, n: torch.fx.Node, a: dict[str, Any]) -> None:
    """Checks and symbolic sizes: no tensor. A later op that uses one is refused by ``value``."""


def program_to_module(ep: torch.export.ExportedProgram) -> tuple[nn.Module, tuple[int, ...]]:
    """Ordinary modules computing ``ep`` (in eval mode), and its example input shape."""
    net, shape = Reader(ep).run()
    return net.eval(), shape
