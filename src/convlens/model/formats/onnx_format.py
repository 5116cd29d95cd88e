"""ONNX models (``.onnx``), converted to ordinary torch modules.

Why not onnx2torch: it imports torchvision at import time, and torchvision builds are pinned
to one torch release, so it breaks beside the torch that convlens runs on. Converting here
also gives well-named modules (``nn.Conv2d`` named after the exporter's
``/layer1/layer1.0/conv1/Conv`` path, or after its weight ``conv1.weight``) that every
convlens view can hook.

The file is read from a regular file with a size bound and parsed with the ``onnx`` package
(protobuf only: loading cannot run code); every tensor's declared size is checked against its
data and the model budget before it is decoded, and tensors stored outside the file
(``data_location: EXTERNAL``) are refused: they would make convlens read arbitrary local
files. The operators and what is refused are listed in ``docs/models.md`` (ONNX); the
converter core is ``onnx_graph`` and the operators ``onnx_ops``. ``onnx`` comes with the
``formats`` extra.

>>> m = load_model("resnet.onnx", input_spec={"mean": [0.485, 0.456, 0.406],
...                                          "std": [0.229, 0.224, 0.225]})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats import onnx_ops, onnx_shape_ops  # noqa: F401  (registers handlers)
from convlens.model.formats.base import make_model, parse_class_list
from convlens.model.formats.onnx_graph import BATCH, Converted, Converter
from convlens.model.formats.opgraph import Op, drop_final_softmax
from convlens.model.formats.safety import Budget, checked_elements, model_budget_bytes, read_bounded
from convlens.model.load import FORMATS, LoadOptions, ModelFormat

MIN_OPSET = 7
_PROTO_SLACK = 64 << 20  # graph structure on top of the weights' bytes


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ConvlensError(
            "reading ONNX files needs onnx: pip install 'convlens[formats]'"
        ) from None
    return onnx


def detect(source: str) -> bool:
    p = Path(source)
    return p.suffix.lower() == ".onnx" and p.is_file()


# Which repeated field holds a tensor's values when it has no raw_data.
_TYPED_FIELD = {1: "float_data", 11: "double_data", 7: "int64_data", 12: "uint64_data",
                13: "uint64_data"}  # fmt: skip


def tensor_to_array(t: Any, what: str, budget: Budget) -> np.ndarray:
    """A tensor proto's values, after checking its storage, size and declared shape.

    Refused: external data (a path to another file), non-numeric types, a shape over the
    budget, and a data length that disagrees with the shape.
    """
    onnx = _onnx()
    name = f"{what} {t.name!r}" if t.name else what
    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        raise ConvlensError(
            f"{name} is stored in an external file; refused (it could read any local file). "
            "Accepted: weights inside the .onnx file"
        )
    dtype = onnx_ops.DTYPES.get(int(t.data_type))
    if dtype is None:
        type_name = (
            onnx.TensorProto.DataType.Name(t.data_type)
            if t.data_type in (onnx.TensorProto.DataType.values())
            else str(t.data_type)
        )
        raise ConvlensError(f"{name} has type {type_name}; accepted: numeric tensors")
    count = checked_elements(tuple(int(d) for d in t.dims), name)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    budget.take(count * itemsize, name)
    if t.HasField("raw_data"):
        if len(t.raw_data) != count * itemsize:
            raise ConvlensError(
                f"{name} declares shape {list(t.dims)} ({count * itemsize} bytes) but holds "
                f"{len(t.raw_data)} bytes; the file is damaged"
            )
    else:
        field = _TYPED_FIELD.get(int(t.data_type), "int32_data")
        held = len(getattr(t, field))
        if held != count:
            raise ConvlensError(
                f"{name} declares shape {list(t.dims)} ({count} values) but holds {held}; "
                "the file is damaged"
            )
    try:
        return np.asarray(onnx.numpy_helper.to_array(t))
    except Exception as e:
        raise ConvlensError(f"{name} cannot be decoded: {e}") from None


def model_opset(proto: Any) -> int:
    """The standard-domain opset, checked to lie in what this converter knows."""
    onnx = _onnx()
    versions = [int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    newest = int(onnx.defs.onnx_opset_version())
    if not versions:
        raise ConvlensError("the ONNX model imports no standard opset")
    opset = versions[0]
    if not MIN_OPSET <= opset <= newest:
        raise ConvlensError(
            f"the ONNX model uses opset {opset}; accepted: opsets {MIN_OPSET} to {newest}"
        )
    return opset


def _declared_shape(info: Any) -> tuple[int, ...]:
    """An input's declared shape; ``-1`` for a symbolic or missing dimension."""
    t = info.type
    if t.WhichOneof("value") != "tensor_type":
        raise ConvlensError(f"ONNX graph input {info.name!r} is not a tensor; refused")
    if not t.tensor_type.HasField("shape"):
        raise ConvlensError(f"ONNX graph input {info.name!r} has no declared shape")
    return tuple(
        int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.tensor_type.shape.dim
    )


def convert_graph(
    proto: Any,
    *,
    input_shapes: dict[str, Sequence[int]] | None = None,
    constants: dict[str, np.ndarray] | None = None,
    batch_free: bool = False,
) -> Converted:
    """Torch modules computing an ONNX model: ``net(*inputs)`` gives its outputs.

    ``input_shapes`` overrides declared input shapes (all must end up known); ``constants``
    binds graph inputs to fixed values (they fold like initializers). With ``batch_free``, the
    first dimension of every input is the batch, left free (see ``onnx_graph``).
    """
    onnx = _onnx()
    opset = model_opset(proto)
    graph = proto.graph
    if len(graph.sparse_initializer):
        raise ConvlensError("sparse initializers are not supported")
    budget = Budget()
    consts: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        consts[t.name] = tensor_to_array(t, "ONNX initializer", budget)
    declared = {str(i.name): int(i.type.tensor_type.elem_type) for i in graph.input}
    for name, value in (constants or {}).items():
        consts[name] = _bound_constant(name, value, declared.get(name))
    inputs: dict[str, torch.Tensor] = {}
    shapes_in: list[tuple[int, ...]] = []
    for info in graph.input:
        if info.name in consts:
            continue
        elem = int(info.type.tensor_type.elem_type)
        dtype = onnx_ops.DTYPES.get(elem)
        shape = tuple((input_shapes or {}).get(info.name, _declared_shape(info)))
        if dtype is None:
            raise ConvlensError(f"ONNX graph input {info.name!r} has element type {elem}; refused")
        if batch_free and shape:
            shape = (BATCH, *shape[1:])
        if any(d < 0 for d in shape):
            raise ConvlensError(
                f"ONNX graph input {info.name!r} has shape {shape} with unknown dimensions; "
                "give the image size with --input-size"
            )
        checked_elements([d for d in shape if d != BATCH], f"ONNX graph input {info.name!r}")
        inputs[info.name] = torch.empty(shape, dtype=dtype, device="meta")
        shapes_in.append(shape)
    conv = Converter(graph, opset, onnx, inputs, consts, batch_free)
    outputs = [str(o.name) for o in graph.output]
    refs, out_shapes = conv.convert(outputs)
    if batch_free:
        refs, out_shapes = _as_class_scores(conv, refs, out_shapes)
    net = conv.build(refs, single=len(refs) == 1)
    shapes_in = [tuple(conv.meta[name].shape) for name in inputs]  # NHWC inputs became NCHW
    return Converted(net, list(inputs), outputs, shapes_in, out_shapes)


def _bound_constant(name: str, value: Any, elem: int | None) -> np.ndarray:
    """A value bound to graph input ``name``, checked against its declared element type."""
    arr = np.asarray(value)
    dtype = onnx_ops.DTYPES.get(elem) if elem is not None else None
    if dtype is None or torch.empty(0, dtype=dtype).numpy().dtype != arr.dtype:
        raise ConvlensError(
            f"ONNX graph input {name!r} of element type {elem} cannot be bound to a {arr.dtype} "
            "constant"
        )
    return arr


def _as_class_scores(
    conv: Converter, refs: list[str], shapes: list[tuple[int, ...]]
) -> tuple[list[str], list[tuple[int, ...]]]:
    """An image classifier's output as logits: the final softmax split off, and an
    ``(N, C, 1, 1)`` output (SqueezeNet's) flattened to ``(N, C)``."""
    if len(refs) != 1:
        return refs, shapes
    ref, shape = refs[0], shapes[0]
    last = conv.ops[-1] if conv.ops else None
    vector = len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1))
    if last is not None and isinstance(last.module, nn.Softmax) and last.module.dim == 1 and vector:
        ref, _ = drop_final_softmax(conv.ops, ref)
    if len(shape) == 4 and shape[2:] == (1, 1):
        conv.ops.append(Op(ref + "#scores", [ref], ref + "#scores", fn=torch.flatten,
                           kwargs={"start_dim": 1}))  # fmt: skip
        ref, shape = ref + "#scores", shape[:2]
    return [ref], [shape]


def read_onnx(source: str | Path) -> Any:
    """The ModelProto in a regular file of bounded size (weights budget + graph slack)."""
    onnx = _onnx()
    data = read_bounded(source, model_budget_bytes() + _PROTO_SLACK, "ONNX model")
    try:
        return onnx.load_model_from_string(data)
    except Exception as e:
        raise ConvlensError(f"cannot read {str(source)!r} as an ONNX model: {e}") from None


def _image_input(proto: Any) -> tuple[str, tuple[int, ...], bool]:
    """The one image input, its declared shape, and whether it is NHWC (transposed first)."""
    init = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ConvlensError(f"the ONNX model has {len(inputs)} inputs; convlens needs one image")
    if len(proto.graph.output) != 1:
        raise ConvlensError(
            f"the ONNX model has {len(proto.graph.output)} outputs; convlens needs one"
        )
    first = proto.graph.node[0] if len(proto.graph.node) else None
    nhwc = (
        first is not None
        and first.op_type == "Transpose"
        and list(first.input[:1]) == [inputs[0].name]
        and [a.ints for a in first.attribute if a.name == "perm"] == [[0, 3, 1, 2]]
    )
    return str(inputs[0].name), _declared_shape(inputs[0]), nhwc


def convert_onnx(
    proto: Any, size: tuple[int, int] | None = None
) -> tuple[nn.Module, tuple[int, ...]]:
    """An image classifier's torch network and its input's declared shape (NCHW; ``-1`` for
    an unknown dimension). ``size`` gives ``(height, width)`` when the file leaves them open."""
    name, shape, nhwc = _image_input(proto)
    if len(shape) == 4 and size is not None:
        h, w = size
        shape = (shape[0], h, w, shape[3]) if nhwc else (shape[0], shape[1], h, w)
    elif len(shape) != 4:
        raise ConvlensError(f"the ONNX model's input has shape {shape}; convlens needs N×C×H×W")
    converted = convert_graph(proto, input_shapes={name: shape}, batch_free=True)
    declared = (shape[0], shape[3], shape[1], shape[2]) if nhwc else shape
    return converted.net, declared


def _metadata_classes(proto: Any) -> list[str] | None:
    """Class names in ``metadata_props``: ``classes``, ``class_names`` or ``labels``."""
    props = {p.key: p.value for p in proto.metadata_props}
    for key in ("classes", "class_names", "labels"):
        if key in props:
            return parse_class_list(props[key])
    return None


def _size_override(given: dict[str, Any]) -> tuple[int, int] | None:
    if "size" in given:
        return int(given["size"]), int(given["size"])
    if {"height", "width"} <= set(given):
        return int(given["height"]), int(given["width"])
    return None


def load(source: str, opts: LoadOptions) -> Model:
    proto = read_onnx(source)
    net, shape = convert_onnx(proto, _size_override(opts.input_spec))
    spec = InputSpec(shape[1], shape[2], shape[3])
    return make_model(
        net,
        spec,
        source,
        opts.classes,
        name=Path(source).stem,
        input_overrides=opts.input_spec,
        file_classes=_metadata_classes(proto),
    )


FORMATS.add("onnx", ModelFormat(detect, load, "an ONNX model (.onnx) of CNN operators"))
