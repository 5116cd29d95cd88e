"""ONNX's own backend node tests: every one converts and matches its expected outputs, or is
refused with a ConvlensError. Zero crashes, zero wrong results.

The test data (model.onnx + test_data_set_0/*.pb per operator case, written by ONNX's
reference implementation) shipped inside the ``onnx`` wheel until 1.17; newer wheels drop it.
It is read straight from a downloaded 1.17 wheel, never from the network at test time::

    pip download --no-deps onnx==1.17.0 -d tests/.cache

(or point ``CONVLENS_ONNX_TEST_WHEEL`` at the wheel). Without it these tests skip.
Each case runs twice: with integer/bool inputs bound as constants (shape and index
arguments, as in a CNN graph) and every float input live; and with only the first input
live (the others become weights, as a model's initializers are). ``python
tests/test_onnx_conformance.py`` prints the counts by operator.
"""

from __future__ import annotations

import glob
import os
import re
import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convlens.errors import ConvlensError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from convlens.model.formats.onnx_format import convert_graph  # noqa: E402

NODE = "onnx/backend/test/data/node/"
LIGHT = "onnx/backend/test/data/light/"
HERE = Path(__file__).parent


def find_wheel() -> Path | None:
    """The onnx 1.17 wheel holding the backend test data, if downloaded."""
    env = os.environ.get("CONVLENS_ONNX_TEST_WHEEL")
    if env and Path(env).is_file():
        return Path(env)
    folders = [HERE / ".cache", Path(os.environ.get("CONVLENS_TEST_CACHE", HERE / ".cache"))]
    for folder in folders:
        hits = sorted(glob.glob(str(folder / "onnx-1.1[5-7].*.whl")))
        if hits:
            return Path(hits[-1])
    return None


@pytest.fixture(scope="session")
def wheel() -> zipfile.ZipFile:
    path = find_wheel()
    if path is None:
        pytest.skip("no onnx<=1.17 wheel with backend test data (see module docstring)")
    return zipfile.ZipFile(path)


_MEMBERS: dict[int, dict[str, list[str]]] = {}


def _members(zf: zipfile.ZipFile, folder: str) -> list[str]:
    """The archive's member names under ``folder`` (indexed once per archive)."""
    index = _MEMBERS.get(id(zf))
    if index is None:
        index = _MEMBERS[id(zf)] = {}
        for m in zf.namelist():
            index.setdefault(m.rsplit("/", 1)[0] + "/", []).append(m)
    return index.get(folder, [])


def _tensor_files(zf: zipfile.ZipFile, folder: str, kind: str) -> list[Any]:
    pattern = re.compile(re.escape(folder) + kind + r"_\d+\.pb")
    names = [m for m in _members(zf, folder) if pattern.fullmatch(m)]
    names.sort(key=lambda m: int(m.rsplit("_", 1)[1][:-3]))
    out = []
    for m in names:
        t = onnx.TensorProto()
        t.ParseFromString(zf.read(m))
        out.append(t)
    return out


def _array(t: Any) -> np.ndarray | None:
    try:
        a = np.asarray(numpy_helper.to_array(t))
    except Exception:
        return None
    return a if a.dtype.kind in "biuf" and a.dtype.itemsize <= 8 else None


def _close(got: Any, want: np.ndarray, op: str) -> str | None:
    """Why ``got`` differs from ``want``, or None when they match."""
    if not isinstance(got, torch.Tensor):
        return f"not a tensor: {type(got).__name__}"
    g = got.detach().numpy()
    if g.shape != want.shape:
        return f"shape {g.shape} != {want.shape}"
    if g.dtype != want.dtype:
        return f"dtype {g.dtype} != {want.dtype}"
    if want.dtype.kind not in "f":
        return None if np.array_equal(g, want) else "values differ"
    tol = 1e-3 if want.dtype == np.float16 else 1e-5
    # Pow and Exp amplify float32 rounding of their inputs: relative tolerance only matters
    # there, for outputs in the hundreds.
    rtol = 1e-5
    if np.allclose(g, want, rtol=rtol, atol=tol, equal_nan=True):
        return None
    return f"max |diff| {np.nanmax(np.abs(g.astype(np.float64) - want)):.3g}"


def run_case(zf: zipfile.ZipFile, name: str) -> list[tuple[str, str, str]]:
    """``[(variant, outcome, detail)]`` for one node test; outcome is match, refused,
    crash or wrong."""
    folder = f"{NODE}{name}/"
    model = onnx.load_model_from_string(zf.read(folder + "model.onnx"))
    inputs = _tensor_files(zf, folder + "test_data_set_0/", "input")
    wants = _tensor_files(zf, folder + "test_data_set_0/", "output")
    graph_inputs = [i.name for i in model.graph.input]
    arrays = [_array(t) for t in inputs]
    variants: list[tuple[str, set[int]]] = [
        ("live", {i for i, a in enumerate(arrays) if a is not None and a.dtype.kind == "f"}),
    ]
    if len(arrays) > 1:
        variants.append(("weights", {0}))
    results = []
    for label, live in variants:
        results.append((label, *_run_variant(model, graph_inputs, arrays, wants, live, name)))
    return results


def _run_variant(
    model: Any,
    names: list[str],
    arrays: list[np.ndarray | None],
    wants: list[Any],
    live: set[int],
    case: str,
) -> tuple[str, str]:
    constants = {
        names[i]: a
        for i, a in enumerate(arrays)
        if i not in live and a is not None and i < len(names)
    }
    try:
        converted = convert_graph(model, constants=constants)
    except ConvlensError as e:
        return "refused", str(e)
    except Exception as e:  # a crash: the converter let a non-ConvlensError through
        return "crash", f"convert: {type(e).__name__}: {e}"
    feed = []
    for nm in converted.inputs:
        a = arrays[names.index(nm)] if nm in names else None
        if a is None:
            return "crash", f"input {nm} has no data"
        feed.append(torch.from_numpy(np.array(a, copy=True)))
    try:
        with torch.no_grad():
            out = converted.net.eval()(*feed)
    except Exception as e:
        return "crash", f"forward: {type(e).__name__}: {e}"
    outs = list(out) if isinstance(out, tuple) else [out]
    want_arrays = [_array(t) for t in wants]
    if len(outs) != len(want_arrays):
        return "wrong", f"{len(outs)} outputs, expected {len(want_arrays)}"
    for k, (g, w) in enumerate(zip(outs, want_arrays, strict=True)):
        if w is None:
            return "wrong", f"output {k} is not numeric in the reference"
        why = _close(g, w, case)
        if why:
            return "wrong", f"output {k}: {why}"
    return "match", ""


def _op_of(zf: zipfile.ZipFile, name: str) -> str:
    model = onnx.load_model_from_string(zf.read(f"{NODE}{name}/model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    return ops[0] if len(ops) == 1 else (ops[-1] if ops else "?")


def all_cases(zf: zipfile.ZipFile) -> list[str]:
    return sorted(
        {
            m[len(NODE) :].split("/")[0]
            for m in zf.namelist()
            if m.startswith(NODE) and m.endswith("/model.onnx")
        }
    )


Outcome = tuple[str, str, str, str]  # (case, variant, outcome, detail)


@pytest.fixture(scope="session")
def outcomes(wheel: zipfile.ZipFile) -> list[tuple[str, Outcome]]:
    """``(operator, (case, variant, outcome, detail))`` for every node test, run once."""
    out: list[tuple[str, Outcome]] = []
    for name in all_cases(wheel):
        op = _op_of(wheel, name)
        out.extend((op, (name, *r)) for r in run_case(wheel, name))
    return out


@pytest.mark.slow
def test_node_tests_convert_and_match_or_are_refused(outcomes: list[tuple[str, Outcome]]) -> None:
    counts = Counter(r[2] for _, r in outcomes)
    bad = [f"{c} [{v}] {o}: {d[:300]}" for _, (c, v, o, d) in outcomes if o in ("crash", "wrong")]
    assert counts["match"] > 1000, counts
    assert not bad, f"{len(bad)} failures ({dict(counts)}):\n" + "\n".join(bad)


# Operators of the CNN set that must convert (not be refused) in at least one case each.
REQUIRED = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Max",
    "Min",
    "Mean",
    "Pow",
    "Sqrt",
    "Neg",
    "Abs",
    "Reciprocal",
    "Exp",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "PRelu",
    "Elu",
    "Selu",
    "Softplus",
    "Softsign",
    "Gelu",
    "Mish",
    "ThresholdedRelu",
    "Celu",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "LRN",
    "Pad",
    "ConvTranspose",
    "Resize",
    "Upsample",
    "Gemm",
    "Flatten",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceMax",
    "ReduceSum",
    "Reshape",
    "Transpose",
    "Slice",
    "Split",
    "Concat",
    "Squeeze",
    "Unsqueeze",
    "Gather",
    "Shape",
    "ConstantOfShape",
    "Constant",
    "Expand",
    "Cast",
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "MatMul",
]


@pytest.mark.slow
def test_every_cnn_operator_converts_somewhere(outcomes: list[tuple[str, Outcome]]) -> None:
    converted = {op for op, r in outcomes if r[2] == "match"}
    assert sorted(set(REQUIRED) - converted) == []


# AlexNet, ZFNet-512 and VGG-19 are left out: random weights for their 100-million-weight
# dense layers take minutes (with the fills they convert and match exactly).
@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    ["squeezenet", "shufflenet", "inception_v1", "inception_v2", "resnet50", "densenet121"],
)
def test_light_zoo_models_match_onnxruntime(wheel: zipfile.ZipFile, model: str) -> None:
    """ONNX's 'light' zoo graphs against onnxruntime. Their weights were replaced by
    ConstantOfShape fills (which make the output uniform), so the fills are replaced by
    random weights first: He-scaled normals for kernels, [0.5, 1.5) for vectors (batch-norm
    variances must stay positive)."""
    proto = _with_random_weights(
        onnx.load_model_from_string(wheel.read(f"{LIGHT}light_{model}.onnx"))
    )
    data = proto.SerializeToString()
    converted = convert_graph(proto)
    shape = converted.input_shapes[0]
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = converted.net.eval()(torch.from_numpy(x)).numpy()
    assert want.std() > 1e-4 * np.abs(want).max()  # not a uniform output
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _with_random_weights(proto: Any) -> Any:
    """``proto`` with every ConstantOfShape of a constant shape made a random initializer."""
    rng = np.random.default_rng(0)
    shapes = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            shapes[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    keep = []
    for n in proto.graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in shapes:
            dims = [int(d) for d in shapes[n.input[0]].reshape(-1)]
            if len(dims) >= 2:
                fan_in = int(np.prod(dims[1:]))
                w = rng.normal(0, np.sqrt(2 / max(fan_in, 1)), dims)
            else:
                w = rng.uniform(0.5, 1.5, dims)
            proto.graph.initializer.append(
                numpy_helper.from_array(w.astype(np.float32), n.output[0])
            )
        else:
            keep.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto


def main() -> None:
    path = find_wheel()
    if path is None:
        raise SystemExit("no onnx<=1.17 wheel found; see the module docstring")
    zf = zipfile.ZipFile(path)
    by_op: dict[str, Counter[str]] = defaultdict(Counter)
    total: Counter[str] = Counter()
    for name in all_cases(zf):
        op = _op_of(zf, name)
        for variant, outcome, detail in run_case(zf, name):
            by_op[op][outcome] += 1
            total[outcome] += 1
            if outcome in ("crash", "wrong") or os.environ.get("VERBOSE"):
                print(f"{name} [{variant}] {outcome}: {detail[:240]}")
    for op in sorted(by_op):
        c = by_op[op]
        print(f"{op:28s} match {c['match']:4d}  refused {c['refused']:4d}  "
              f"crash {c['crash']:3d}  wrong {c['wrong']:3d}")  # fmt: skip
    print("TOTAL", dict(total))


def test_the_harness_catches_a_wrong_conversion(
    wheel: zipfile.ZipFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converter that computes the wrong thing is reported as wrong, not as a match."""
    from convlens.model.formats import onnx_ops

    assert [o for _, o, _ in run_case(wheel, "test_neg")] == ["match"]
    monkeypatch.setitem(onnx_ops._UNARY, "Neg", torch.abs)
    assert [o for _, o, _ in run_case(wheel, "test_neg")] == ["wrong"]


if __name__ == "__main__":
    main()
