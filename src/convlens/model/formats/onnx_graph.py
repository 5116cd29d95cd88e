"""The ONNX converter's core: values, constant folding, shape tracking and error reporting.

A graph is walked node by node. Every value is either a **constant** (an initializer, a
``Constant`` node, or anything computed only from constants: exporters' shape arithmetic,
folded here once at load time) kept as a numpy array, or a **runtime** value produced by an
:class:`~convlens.model.formats.opgraph.Op` of the torch network being built. Each runtime
value also has a *meta* tensor (shape and dtype, no storage): every op is run once on meta
tensors while converting, which gives exact shapes for ``Shape``, ``auto_pad`` and
``Resize`` and checks the conversion, so a graph that cannot run fails at load time naming
its node rather than later inside torch.

The batch of an image model is left free: its input's first dimension is the sentinel
:data:`BATCH` while converting. Shape arithmetic carries it to a ``Reshape`` target, where it
becomes ``-1``; any other use of it (a batch-sized constant, arithmetic on the batch) is
refused, since it would fix the batch size silently.

Operators register a handler with :func:`handler`; see ``onnx_ops``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.model.formats.opgraph import Op, assemble, clean_name, unique
from convlens.model.formats.safety import Budget, checked_elements

BATCH = 1_073_741_827  # above 2**30 (no real dimension is), below 2**31 (fits int32 casts)
_HUGE = 2**30  # any shape value this large comes from the batch sentinel

# Operators that only move shape values around (never compute with them): the batch
# sentinel may pass through these and reach a Reshape or Expand target.
PLUMBING = {
    "Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Identity", "Cast",
    "Reshape", "Flatten", "Split", "Transpose", "Expand", "CastLike", "Size",
}  # fmt: skip

Handler = Callable[["Converter", "Node"], None]
HANDLERS: dict[str, Handler] = {}
REFUSED: set[str] = set()  # operators known and refused with a reason (control flow, random)


def handler(*ops: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the converter of ONNX operators ``ops``."""

    def register(fn: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = fn
        return fn

    return register


class Node:
    """An ONNX node with decoded attributes and its position, for handlers and messages."""

    def __init__(self, proto: Any, index: int, opset: int, onnx: Any) -> None:
        self.proto = proto
        self.op = str(proto.op_type)
        self.inputs = [str(i) for i in proto.input]
        self.outputs = [str(o) for o in proto.output]
        self.index = index
        self.opset = opset
        self.raw_name = str(proto.name)
        self.attrs: dict[str, Any] = {}
        for a in proto.attribute:
            if a.type in (onnx.AttributeProto.TENSOR, onnx.AttributeProto.SPARSE_TENSOR):
                self.attrs[a.name] = a.t if a.type == onnx.AttributeProto.TENSOR else a
            elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                self.attrs[a.name] = a
            else:
                self.attrs[a.name] = onnx.helper.get_attribute_value(a)

    def fail(self, why: str) -> ConvlensError:
        return ConvlensError(f"ONNX node {self.index} ({self.raw_name or '?'}, {self.op}): {why}")

    def ints(self, key: str, default: Sequence[int]) -> list[int]:
        return [int(v) for v in self.attrs.get(key, default)]

    def geti(self, key: str, default: int) -> int:
        return int(self.attrs.get(key, default))

    def getf(self, key: str, default: float) -> float:
        return float(self.attrs.get(key, default))

    def gets(self, key: str, default: str) -> str:
        v = self.attrs.get(key, default)
        return v.decode() if isinstance(v, bytes) else str(v)

    def has(self, pos: int) -> bool:
        """Whether optional input ``pos`` is given (ONNX marks an omitted one by ``""``)."""
        return pos < len(self.inputs) and bool(self.inputs[pos])


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def to_torch(a: np.ndarray) -> torch.Tensor:
    """An owned torch tensor of ``a``, dtype kept (numpy's unsigned 16/32/64 as torch's)."""
    return torch.from_numpy(np.array(a, copy=True))


def _tree(x: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(x, list | tuple):
        return type(x)(_tree(v, fn) for v in x)
    return fn(x) if isinstance(x, torch.Tensor) else x


def _meta_module_call(module: nn.Module, args: list[torch.Tensor]) -> Any:
    params = {k: _meta(v) for k, v in module.state_dict(keep_vars=True).items()}
    return torch.func.functional_call(module, params, tuple(args))


@dataclass
class Converted:
    """A converted graph: ``net(*inputs)`` gives ``outputs`` (a tuple when there are several)."""

    net: nn.Module
    inputs: list[str]
    outputs: list[str]
    input_shapes: list[tuple[int, ...]]
    output_shapes: list[tuple[int, ...]]


class Converter:
    """Builds a torch network from an ONNX graph (see the module docstring)."""

    def __init__(
        self,
        graph: Any,
        opset: int,
        onnx: Any,
        inputs: dict[str, torch.Tensor],
        consts: dict[str, np.ndarray],
        batch_free: bool,
    ) -> None:
        self.graph, self.opset, self.onnx = graph, opset, onnx
        self.consts = dict(consts)
        self.meta: dict[str, Any] = {name: _meta(t) for name, t in inputs.items()}
        self.inputs = list(inputs)
        self.batch_free = batch_free
        self.ops: list[Op] = []
        self.alias: dict[str, str] = {}
        self.taken: set[str] = set()
        self.buffers: dict[str, torch.Tensor] = {}
        self.buffer_of: dict[str, str] = {}
        self.budget = Budget()
        self.node: Node | None = None
        self.uses: dict[str, int] = {}  # how many nodes (and graph outputs) read each value
        for proto in graph.node:
            for name in proto.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for out in graph.output:
            self.uses[out.name] = self.uses.get(out.name, 0) + 1

    # ----------------------------------------------------------------- values

    def value(self, name: str) -> str:
        return self.alias.get(name, name)

    def is_const(self, name: str) -> bool:
        return self.value(name) in self.consts

    def const(self, n: Node, pos: int, what: str = "") -> np.ndarray:
        """Input ``pos`` of ``n``, which must be a constant (a weight or a shape)."""
        if not n.has(pos):
            raise n.fail(f"input {pos} {what}is missing".replace("  ", " "))
        name = self.value(n.inputs[pos])
        if name not in self.consts:
            raise n.fail(f"input {pos} ({name}) {what}must be a constant, not computed")
        return self.consts[name]

    def opt_const(self, n: Node, pos: int) -> np.ndarray | None:
        """Optional constant input ``pos`` (``None`` when omitted)."""
        return self.const(n, pos) if n.has(pos) else None

    def shape(self, name: str) -> tuple[int, ...]:
        name = self.value(name)
        if name in self.consts:
            return tuple(self.consts[name].shape)
        return tuple(self.meta[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        name = self.value(name)
        if name in self.consts:
            return torch.from_numpy(np.empty(0, self.consts[name].dtype)).dtype
        return self.meta[name].dtype

    def ref(self, name: str) -> str:
        """The name an Op reads ``name`` by: a runtime value, or a buffer for a constant."""
        name = self.value(name)
        if name not in self.consts:
            if name not in self.meta:
                raise ConvlensError(f"value {name!r} is used before it is computed")
            return name
        if name not in self.buffer_of:
            arr = self.consts[name]
            self.check_batch_free(arr, "a constant used by the network")
            key = f"const_{len(self.buffers)}"
            self.buffers[key] = to_torch(arr)
            self.buffer_of[name] = key
        return self.buffer_of[name]

    def check_batch_free(self, arr: np.ndarray, what: str) -> None:
        if (
            self.batch_free
            and arr.dtype.kind in "iu"
            and arr.size
            and np.abs(arr.astype(np.float64)).max() >= _HUGE
        ):
            assert self.node is not None
            raise self.node.fail(
                f"{what} depends on the batch size; convlens runs any batch size, so this "
                "graph cannot be converted (re-export it with a static batch of 1)"
            )

    def module_name(self, n: Node) -> str:
        """A readable, unique module name: the weight's prefix or the node's path."""
        weight = n.inputs[1] if len(n.inputs) > 1 else ""
        base = ""
        if weight.endswith(".weight") and not weight.startswith("onnx::"):
            base = weight[: -len(".weight")]
        if not base or not all(p.isidentifier() or p.isdigit() for p in base.split(".")):
            raw = n.raw_name.removeprefix("node_")  # the dynamo exporter's prefix
            base = clean_name(raw, f"{n.op.lower()}_{n.index}")
        return unique(base, self.taken)

    # --------------------------------------------------------------- emitting

    def set_const(self, name: str, arr: np.ndarray) -> None:
        assert self.node is not None
        checked_elements(arr.shape, f"ONNX node {self.node.index} output {name!r}")
        self.consts[name] = arr

    def emit(
        self,
        n: Node,
        fn: Callable[..., Any] | nn.Module,
        inputs: Sequence[str],
        outputs: Sequence[str] | None = None,
        fold: bool = True,
        layer: str | None = None,
        **kw: Any,
    ) -> None:
        """``outputs = fn(*inputs, **kw)``: folded when every input is a constant, else an Op.

        ``fn`` is a module (a named layer: hooks see it) or a module-level function. With
        several ``outputs`` it returns a sequence, unpacked by ``getitem`` ops. ``layer``
        names a module that is not the node's own (the padding before a convolution).
        """
        outs = list(outputs) if outputs is not None else [n.outputs[0]]
        names = [self.value(i) for i in inputs]
        if fold and all(i in self.consts for i in names):
            self._fold(n, fn, names, outs, kw)
            return
        metas = [self.meta[i] if i in self.meta else _meta(to_torch(self.consts[i])) for i in names]
        for i in names:
            if i in self.consts:
                self.check_batch_free(self.consts[i], "a constant used by the network")
        try:
            is_module = isinstance(fn, nn.Module)
            result = _meta_module_call(fn, metas) if is_module else fn(*metas, **kw)  # type: ignore[arg-type]
        except ConvlensError:
            raise
        except Exception as e:
            shapes = ", ".join(str(tuple(m.shape)) for m in metas)
            raise n.fail(f"does not compute on inputs of shapes {shapes}: {e}") from None
        refs = [self.ref(i) for i in names]
        if isinstance(fn, nn.Module):
            name = unique(layer, self.taken) if layer else self.module_name(n)
            op = Op(name, refs, outs[0], module=fn)
        else:
            op = Op(outs[0], refs, outs[0], fn=fn, kwargs=kw)
        if len(outs) == 1 and not isinstance(result, list | tuple):
            self.ops.append(op)
            self.meta[outs[0]] = result
            return
        group = f"{outs[0]}#all"
        op.output = group
        self.ops.append(op)
        for k, out in enumerate(outs):
            if out:
                self.ops.append(Op(out, [group], out, fn=item, kwargs={"index": k}))
                self.meta[out] = result[k]

    def _fold(
        self,
        n: Node,
        fn: Callable[..., Any] | nn.Module,
        names: list[str],
        outs: list[str],
        kw: dict[str, Any],
    ) -> None:
        args = [self.consts[i] for i in names]
        if n.op not in PLUMBING:
            for a in args:
                self.check_batch_free(a, f"a value computed by {n.op}")
        metas = [_meta(to_torch(a)) for a in args]
        call: Callable[..., Any] = (
            (lambda *xs, **_: _meta_module_call(fn, list(xs))) if isinstance(fn, nn.Module) else fn
        )
        try:
            shapes = call(*metas, **kw)  # sizes first: nothing is allocated unchecked
            for m in shapes if isinstance(shapes, list | tuple) else [shapes]:
                checked_elements(tuple(m.shape), f"ONNX node {n.index} ({n.op}) output")
            with torch.no_grad():
                result = fn(*[to_torch(a) for a in args], **kw)
        except ConvlensError:
            raise
        except Exception as e:
            raise n.fail(f"cannot be computed on its constant inputs: {e}") from None
        results = list(result) if isinstance(result, list | tuple) else [result]
        for out, r in zip(outs, results, strict=False):
            if out:
                self.set_const(out, r.detach().numpy().copy())

    def module(self, n: Node, module: nn.Module, src: str | None = None, **kw: Any) -> None:
        """A named layer applied to ``src`` (default: the node's first input)."""
        self.emit(n, module, [src or n.inputs[0]], **kw)

    def pad_layer(self, n: Node, module: nn.Module, src: str) -> str:
        """A padding module before ``n``'s own layer, named ``<layer>_pad``; its output."""
        out = n.outputs[0] + "#pad"
        base = clean_name(n.raw_name.removeprefix("node_"), f"{n.op.lower()}_{n.index}")
        weight = n.inputs[1] if len(n.inputs) > 1 else ""
        if weight.endswith(".weight") and not weight.startswith("onnx::"):
            base = weight[: -len(".weight")]
        self.emit(n, module, [src], outputs=[out], fold=False, layer=base + "_pad")
        return out

    # --------------------------------------------------------------------- run

    def convert(self, output_names: list[str]) -> tuple[list[str], list[tuple[int, ...]]]:
        for i, proto in enumerate(self.graph.node):
            n = Node(proto, i, self.opset, self.onnx)
            self.node = n
            if proto.domain not in ("", "ai.onnx"):
                raise n.fail(
                    f"operators of domain {proto.domain!r} are not supported; accepted: the "
                    "standard ONNX domain"
                )
            fn = HANDLERS.get(n.op)
            if fn is None:
                raise n.fail(
                    f"operator {n.op!r} is not supported; accepted: "
                    + ", ".join(sorted(set(HANDLERS) - REFUSED))
                )
            for k, name in enumerate(n.inputs):
                v = self.value(name)
                if name and v not in self.consts and v not in self.meta:
                    raise n.fail(
                        f"input {k} ({name!r}) is not computed by an earlier node; the graph must "
                        "list its nodes in order"
                    )
            try:
                fn(self, n)
            except ConvlensError:
                raise
            except Exception as e:  # a gap in a handler must still name the node
                raise n.fail(f"cannot be converted ({type(e).__name__}: {e})") from None
            for k, out in enumerate(n.outputs):
                if (
                    out
                    and out not in self.consts
                    and out not in self.meta
                    and out not in self.alias
                    and self.uses.get(out, 0)  # an extra output nothing reads is fine
                ):
                    raise n.fail(f"output {k} ({out!r}) is not supported")
        refs = []
        shapes = []
        for name in output_names:
            v = self.value(name)
            if v not in self.consts and v not in self.meta:
                raise ConvlensError(f"the ONNX graph's output {name!r} is never computed")
            refs.append(self.ref(v))
            shapes.append(self.shape(v))
        return refs, shapes

    def build(self, refs: list[str], single: bool) -> nn.Module:
        out: str | list[str] = refs[0] if single else refs
        source: str | list[str] = self.inputs[0] if len(self.inputs) == 1 else self.inputs
        net = assemble(source, self.ops, out, self.buffers)
        return net


def item(seq: Sequence[torch.Tensor], index: int) -> torch.Tensor:
    """One output of a multi-output op (``Split``)."""
    return seq[index]


def batch_free_reshape(n: Node, in_shape: tuple[int, ...], target: list[int]) -> list[int]:
    """The torch reshape target for ``target`` (resolved, batch as :data:`BATCH`).

    The batch becomes ``-1``. A target that drops the batch is accepted only in the form an
    export at batch 1 gives, ``[1, ...]`` with the per-sample size: that is the same reshape
    for any batch.
    """
    if BATCH not in in_shape:
        if any(abs(v) >= _HUGE for v in target):
            raise n.fail("the reshape target depends on the batch size of another tensor")
        return target
    batch_count = sum(1 for v in target if v == BATCH)
    if batch_count == 1 and all(abs(v) < _HUGE or v == BATCH for v in target):
        return [-1 if v == BATCH else v for v in target]
    per_sample = int(np.prod([d for d in in_shape if d != BATCH], dtype=np.int64))
    if batch_count == 0 and target and target[0] == 1:
        rest = int(np.prod(target[1:], dtype=np.int64))
        if rest == per_sample and all(abs(v) < _HUGE for v in target):
            return [-1, *target[1:]]
    raise n.fail(
        f"reshape to {target} (batch shown as {BATCH}) does not keep the batch as one "
        "dimension; convlens runs any batch size"
    )
