"""Assemble converted operations into a torch network that ``torch.fx`` can trace.

The ONNX and ``torch.export`` readers both turn a file's operator graph into a list of
:class:`Op`: a named ``nn.Module`` (a conv, a pool, a linear layer, ...) or a plain function
(addition, concatenation), each reading named values and writing one. :func:`assemble` makes
a chain into an ``nn.Sequential`` (the friendliest shape for the layer graph) and anything
else (residual additions, concatenations) into an ``fx.GraphModule`` that runs the
operations in order, with the modules at their qualified names (``layer1.0.conv1``).

>>> from torch import nn
>>> net = assemble("x", [Op("fc", ["x"], "y", module=nn.Linear(2, 3))], "y")
>>> type(net).__name__
'Sequential'
"""

from __future__ import annotations

import keyword
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch.fx
from torch import nn


@dataclass
class Op:
    """One operation: ``output = module(*inputs)`` or ``output = fn(*inputs, **kwargs)``."""

    name: str
    inputs: list[str]
    output: str
    module: nn.Module | None = None
    fn: Callable[..., Any] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    node_name: str | None = None  # a function op's fx node name (a Keras merge layer's name)


def clean_name(raw: str, fallback: str) -> str:
    """A module name from a node path: ``/layer1/layer1.0/conv1/Conv`` → ``layer1.0.conv1``.

    >>> clean_name("/layer1/layer1.0/conv1/Conv", "conv")
    'layer1.0.conv1'
    >>> clean_name("/features/features.4/block/block.3/Conv", "conv")
    'features.4.block.3'
    """
    parts = [p for p in re.split(r"[/:]", raw) if p]
    if len(parts) > 1:
        parts = parts[:-1]  # ONNX exporters end the path with the op type
    name = ""
    for part in parts:  # each segment is either a qualified name or relative to the last
        if not name or part.startswith(name + "."):
            name = part
        elif "." in part and part.split(".")[0] == name.rsplit(".", 1)[-1]:
            name = f"{name}.{part.split('.', 1)[1]}"  # /block/block.3: block's child 3
        else:
            name = f"{name}.{part}"
    name = re.sub(r"[^0-9A-Za-z_.]", "_", name).strip(".")
    if not name or any(not seg for seg in name.split(".")):
        return fallback
    return name


def unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name#2`` style suffixes (``name_2``) if already used."""
    out, k = name, 2
    while out in taken or any(t.startswith(out + ".") or out.startswith(t + ".") for t in taken):
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def _is_chain(source: str, ops: list[Op], output: str) -> bool:
    prev = source
    for op in ops:
        if op.module is None or op.inputs != [prev] or "." in op.name:
            return False
        prev = op.output
    return prev == output


def drop_final_softmax(ops: list[Op], output: str) -> tuple[str, bool]:
    """Remove a softmax that produces the network's output; return the new output name.

    Explanation methods want logits, and ``Model.probabilities`` applies the softmax, so a
    file whose graph ends in a softmax gives the same probabilities either way.
    """
    if ops and isinstance(ops[-1].module, nn.Softmax) and ops[-1].output == output:
        last = ops.pop()
        return last.inputs[0], True
    return output, False


def safe_target(name: str) -> str:
    """A module path that generated Python code can spell: keyword segments get a ``_``.

    A file may name a layer ``def`` or ``None`` (Keras allows any string); ``torch.fx`` writes
    ``self.def(x)`` into the code it generates, which does not parse.

    >>> safe_target("block.def.conv")
    'block.def_.conv'
    """
    return ".".join(f"{seg}_" if keyword.iskeyword(seg) else seg for seg in name.split("."))


def assemble(
    source: str | list[str],
    ops: list[Op],
    output: str | list[str],
    consts: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """An ``nn.Sequential`` for a chain of modules, else an ``fx.GraphModule`` over ``ops``.

    ``source`` names the network's input (or inputs, in ``forward``'s order) and ``output``
    its result (a list gives a tuple). Op inputs found in ``consts`` are read from buffers of
    the module, named after their key, which must be a Python identifier.
    """
    consts = consts or {}
    ops = [replace(op, name=safe_target(op.name)) if op.module is not None else op for op in ops]
    sources = [source] if isinstance(source, str) else list(source)
    simple = isinstance(output, str) and len(sources) == 1 and not consts
    if simple and _is_chain(sources[0], ops, output):  # type: ignore[arg-type]
        return nn.Sequential(OrderedDict((op.name, op.module) for op in ops))  # type: ignore[misc]
    graph = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    for i, name in enumerate(sources):
        env[name] = graph.placeholder("x" if i == 0 else f"x_{i}")
    modules: dict[str, Any] = {}

    def read(name: str) -> torch.fx.Node:
        if name not in env and name in consts:
            modules[name] = consts[name]
            env[name] = graph.get_attr(name)
        return env[name]

    for op in ops:
        args = tuple(read(i) for i in op.inputs)
        if op.module is not None:
            modules[op.name] = op.module
            env[op.output] = graph.call_module(op.name, args)
        else:
            assert op.fn is not None
            if op.node_name:  # the graph's namespace makes it a unique identifier
                node = graph.create_node("call_function", op.fn, args, op.kwargs, op.node_name)
                env[op.output] = node
            else:
                env[op.output] = graph.call_function(op.fn, args, op.kwargs)
    if isinstance(output, str):
        graph.output(read(output))
    else:
        graph.output(tuple(read(o) for o in output))
    return torch.fx.GraphModule(modules, graph, class_name="ConvertedNet")
