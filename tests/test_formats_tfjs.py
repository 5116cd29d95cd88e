"""TensorFlow.js layers models: CNN Explainer's Tiny VGG against a numpy Keras reference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.model import Model, load_model
from convlens.model.load import detect_format
from tfjs_reference import (
    FIXTURES,
    JS,
    cache_dir,
    node_ready,
    reference,
    run_tfjs,
    sample_inputs,
    why_no_node,
)

CLASSES = [
    "lifeboat", "ladybug", "pizza", "bell pepper", "school bus",
    "koala", "espresso", "red panda", "orange", "sport car",
]  # fmt: skip


# ------------------------------------------------------------------ numpy reference (Keras)


def np_weights(folder: Path) -> dict[str, np.ndarray]:
    doc = json.loads((folder / "model.json").read_text())
    out: dict[str, np.ndarray] = {}
    for group in doc["weightsManifest"]:
        buf = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            n = int(np.prod(w["shape"]))
            out[w["name"]] = np.frombuffer(buf, "<f4", n, offset).reshape(w["shape"])
            offset += 4 * n
    return out


def np_conv_valid(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Keras Conv2D, padding valid, stride 1: x (N, H, W, C), k (kh, kw, C, F)."""
    kh, kw, _, f = k.shape
    n, h, w, _ = x.shape
    out = np.zeros((n, h - kh + 1, w - kw + 1, f), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += x[:, i : i + h - kh + 1, j : j + w - kw + 1, :] @ k[i, j]
    return out + b


def np_maxpool2(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_tiny_vgg(x: np.ndarray, wts: dict[str, np.ndarray]) -> np.ndarray:
    """Keras's forward pass of CNN Explainer's Tiny VGG: NHWC in [0, 1] → probabilities."""
    h = x.astype(np.float64)
    for block in (1, 2):
        for c in (1, 2):
            name = f"conv_{block}_{c}"
            h = np.maximum(np_conv_valid(h, wts[f"{name}/kernel"], wts[f"{name}/bias"]), 0)
        h = np_maxpool2(h)
    h = h.reshape(h.shape[0], -1)  # Keras Flatten: (h, w, c) order
    logits = h @ wts["output/kernel"] + wts["output/bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sample_pixels(folder: Path) -> tuple[list[Path], np.ndarray]:
    paths = sorted((folder / "images").glob("*.jpeg"))
    imgs = np.stack(
        [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in paths]
    )
    return paths, imgs


# ------------------------------------------------------------------ tests


FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"


@pytest.fixture(scope="module")
def explainer() -> Model:
    if not (FIXTURE / "model.json").is_file():
        pytest.skip("CNN Explainer fixture not found")
    return load_model(FIXTURE / "model.json")


def test_detects_tfjs(cnn_explainer_dir: Path) -> None:
    assert detect_format(str(cnn_explainer_dir / "model.json")) == "tfjs"
    assert detect_format(str(cnn_explainer_dir)) == "tfjs"


def test_cnn_explainer_contract(explainer: Model) -> None:
    assert explainer.spec.shape == (3, 64, 64)
    assert explainer.spec.mean == (0.0, 0.0, 0.0) and explainer.spec.std == (1.0, 1.0, 1.0)
    assert explainer.classes == CLASSES  # recognised by checksum as the published model
    assert explainer.outputs == "logits"
    names = [lay.name for lay in explainer.graph if lay.name != "input"]
    assert names[:5] == ["conv_1_1", "relu_1_1", "conv_1_2", "relu_1_2", "max_pool_1"]
    assert names[-2:] == ["flatten", "output"]
    assert explainer.graph.total_params == 19_920
    assert len(explainer.samples) == 20
    labels = {s.path.name: s.label for s in explainer.samples}
    by_name = {name: label for name, label in labels.items() if label is not None}
    assert by_name == labels  # every sample is labelled
    assert CLASSES[by_name["boat_1.jpeg"]] == "lifeboat"
    assert CLASSES[by_name["panda_1.jpeg"]] == "red panda"
    assert CLASSES[by_name["car_1.jpeg"]] == "sport car"


def test_cnn_explainer_matches_numpy_keras(explainer: Model, cnn_explainer_dir: Path) -> None:
    _, imgs = sample_pixels(cnn_explainer_dir)
    want = np_tiny_vgg(imgs, np_weights(cnn_explainer_dir))
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()  # NHWC → NCHW
    got = explainer.probabilities(x).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The model's own image loading gives the same pixels for these 64×64 files.
    x2 = torch.cat([explainer.load_image(s.path) for s in explainer.samples])
    np.testing.assert_allclose(explainer.probabilities(x2).double().numpy(), want, atol=1e-5)
    # And most samples are classified correctly (the page shows a few mistakes).
    labels = np.array([s.label for s in explainer.samples])
    assert (want.argmax(1) == labels).mean() >= 0.6


def test_classes_from_sidecar_and_flag(tmp_path: Path, cnn_explainer_dir: Path) -> None:
    for name in ("model.json", "group1-shard1of1.bin"):
        (tmp_path / name).write_bytes((cnn_explainer_dir / name).read_bytes())
    doc = json.loads((tmp_path / "model.json").read_text())
    doc["modelTopology"]["model_config"]["config"]["name"] = "renamed"  # not the published file
    (tmp_path / "model.json").write_text(json.dumps(doc))
    assert load_model(tmp_path / "model.json").classes[0] == "class 0"
    doc["userDefinedMetadata"] = {"classes": [f"m{i}" for i in range(10)]}
    (tmp_path / "model.json").write_text(json.dumps(doc))
    assert load_model(tmp_path / "model.json").classes[9] == "m9"
    side = [f"c{i}" for i in range(10)]
    (tmp_path / "model.convlens.json").write_text(json.dumps({"classes": side}))
    assert load_model(tmp_path / "model.json").classes == side
    flag = [f"f{i}" for i in range(10)]
    assert load_model(tmp_path / "model.json", classes=flag).classes == flag


def test_truncated_shard_is_a_clear_error(tmp_path: Path, cnn_explainer_dir: Path) -> None:
    (tmp_path / "model.json").write_bytes((cnn_explainer_dir / "model.json").read_bytes())
    data = (cnn_explainer_dir / "group1-shard1of1.bin").read_bytes()
    (tmp_path / "group1-shard1of1.bin").write_bytes(data[:1000])
    with pytest.raises(ConvlensError, match="end before weight"):
        load_model(tmp_path / "model.json")


def test_unsupported_layer_names_type_and_position(tmp_path: Path, cnn_explainer_dir: Path) -> None:
    doc = json.loads((cnn_explainer_dir / "model.json").read_text())
    doc["modelTopology"]["model_config"]["config"]["layers"][4]["class_name"] = "LSTM"
    (tmp_path / "model.json").write_text(json.dumps(doc))
    (tmp_path / "group1-shard1of1.bin").write_bytes(
        (cnn_explainer_dir / "group1-shard1of1.bin").read_bytes()
    )
    with pytest.raises(ConvlensError, match=r"layer 4 \('max_pool_1', LSTM\).*'LSTM'"):
        load_model(tmp_path / "model.json")


def test_quantized_and_sharded_weights(tmp_path: Path, cnn_explainer_dir: Path) -> None:
    """uint8-quantized kernels split over two shards dequantize as q · scale + min."""
    doc = json.loads((cnn_explainer_dir / "model.json").read_text())
    wts = np_weights(cnn_explainer_dir)
    entries, chunks = [], []
    for w in doc["weightsManifest"][0]["weights"]:
        arr = wts[w["name"]]
        if w["name"].endswith("kernel"):
            lo, hi = float(arr.min()), float(arr.max())
            scale = (hi - lo) / 255
            q = np.round((arr - lo) / scale).astype(np.uint8)
            wts[w["name"]] = q.astype(np.float64) * scale + lo  # what the model should hold
            quant = {"dtype": "uint8", "scale": scale, "min": lo}
            entries.append({**w, "quantization": quant})
            chunks.append(q.tobytes())
        else:
            entries.append(w)
            chunks.append(arr.astype("<f4").tobytes())
    data = b"".join(chunks)
    (tmp_path / "a.bin").write_bytes(data[:1000])
    (tmp_path / "b.bin").write_bytes(data[1000:])
    doc["weightsManifest"] = [{"paths": ["a.bin", "b.bin"], "weights": entries}]
    (tmp_path / "model.json").write_text(json.dumps(doc))
    model = load_model(tmp_path / "model.json")
    _, imgs = sample_pixels(cnn_explainer_dir)
    want = np_tiny_vgg(imgs[:4], {k: np.asarray(v) for k, v in wts.items()})
    got = model.probabilities(torch.from_numpy(imgs[:4]).permute(0, 3, 1, 2).contiguous())
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-5, rtol=0)


def test_shard_outside_the_folder_is_refused(tmp_path: Path, cnn_explainer_dir: Path) -> None:
    doc = json.loads((cnn_explainer_dir / "model.json").read_text())
    doc["weightsManifest"][0]["paths"] = ["../secret.bin"]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ConvlensError, match="outside the model folder"):
        load_model(tmp_path / "m" / "model.json")


# ------------------------------------------------------------------ layers models by TF.js

# name → whether the model ends in a softmax
LAYERS_FIXTURES = {
    "layers-sequential": True,
    "layers-residual": False,
    "layers-inception": True,
    "layers-mobilenet-block": True,
}


@pytest.mark.parametrize("name", sorted(LAYERS_FIXTURES))
def test_layers_models_written_by_tfjs_match_tfjs(name: str) -> None:
    """Models built and saved by TF.js itself (tests/js/make_layers_models.js)."""
    assert detect_format(str(FIXTURES / name)) == "tfjs"
    model = load_model(FIXTURES / name)
    c, h, w = model.spec.shape
    x, want, source = reference(FIXTURES / name, (h, w, c))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        got = model.probabilities(xt) if LAYERS_FIXTURES[name] else model.net(xt)
    diff = float(np.abs(got.double().numpy() - want).max())
    print(f"{name}: max |Δ| = {diff:.2e} vs {source}")
    assert diff < 1e-4, (name, diff, source)
    assert want.std() > 1e-3


# ------------------------------------------------------------------ hostile files


def copy_model(name: str, dest: Path) -> Path:
    folder = dest / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


def edit_json(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((folder / "model.json").read_text())
    edit(doc)
    (folder / "model.json").write_text(json.dumps(doc))


def refused(folder: Path, match: str, **kw: Any) -> str:
    """Loading fails with a one-line ConvlensError matching ``match``, quickly and small."""
    tracemalloc.start()
    try:
        with pytest.raises(ConvlensError, match=match) as e:
            load_model(folder, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak} bytes allocated before refusing"
    assert "\n" not in str(e.value) and type(e.value).__name__ == "ConvlensError"
    return str(e.value)


BOTH = ["layers-sequential", "graph-raw-ops"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", BOTH)
def test_fifo_shard_does_not_hang(tmp_path: Path, name: str) -> None:
    folder = copy_model(name, tmp_path)
    shard = folder / "group1-shard1of1.bin"
    shard.unlink()
    os.mkfifo(shard)
    refused(folder, "not a regular file")


@pytest.mark.timeout(30)
def test_fifo_model_json_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.json")
    with pytest.raises(ConvlensError, match="not a regular file"):
        load_model(tmp_path / "model.json", format="tfjs")
    with pytest.raises(ConvlensError, match="not a regular file"):
        load_model(tmp_path / "model.json", format="tfjs-graph")
    with pytest.raises(ConvlensError):  # detection skips it instead of opening it
        load_model(tmp_path)


@pytest.mark.parametrize("name", BOTH)
def test_deeply_nested_json_is_one_line(tmp_path: Path, name: str) -> None:
    folder = copy_model(name, tmp_path)
    (folder / "model.json").write_text('{"modelTopology": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(folder, "nests deeper than", format="tfjs")


@pytest.mark.parametrize("name", BOTH)
def test_huge_declared_weight_fails_before_reading(tmp_path: Path, name: str) -> None:
    folder = copy_model(name, tmp_path)
    edit_json(folder, lambda d: d["weightsManifest"][0]["weights"][0].update(shape=[10**6, 10**6]))
    refused(folder, r"declares shape \(1000000, 1000000\)")


def test_model_budget_counts_all_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLENS_MAX_MODEL_MB", "0.5")
    refused(FIXTURES / "graph-mobilenet-v2", "over the budget of 524288 bytes")


@pytest.mark.parametrize("name", BOTH)
def test_shard_sizes_checked_before_concatenation(tmp_path: Path, name: str) -> None:
    folder = copy_model(name, tmp_path)
    with (folder / "group1-shard1of1.bin").open("ab") as f:
        f.write(b"\0" * 8)
    refused(folder, "model.json declares")


@pytest.mark.parametrize("path", ["../secret.bin", "/etc/hostname", "a\\..\\b.bin", ""])
def test_shard_paths_stay_in_the_folder(tmp_path: Path, path: str) -> None:
    folder = copy_model("graph-raw-ops", tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 10192)
    edit_json(folder, lambda d: d["weightsManifest"][0].update(paths=[path]))
    refused(folder, "outside the model folder|is refused")


def test_shard_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = copy_model("graph-raw-ops", tmp_path)
    shard = folder / "group1-shard1of1.bin"
    target = tmp_path / "elsewhere.bin"
    shard.rename(target)
    shard.symlink_to(target)
    refused(folder, "outside the model folder")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dtype": "complex64"}, "dtype 'complex64'; accepted"),
        ({"dtype": "string"}, "dtype 'string'; accepted"),
        ({"quantization": {"dtype": "int4"}}, "quantized as 'int4'"),
        ({"quantization": {"dtype": "uint8", "min": 0.0}}, "without a finite 'scale'"),
        ({"quantization": {"dtype": "uint8", "min": 0.0, "scale": float("nan")}}, "finite"),
        ({"quantization": "uint8"}, "quantized as 'uint8'"),
        ({"shape": [3, -1]}, "accepted: non-negative integers"),
        ({"shape": "big"}, "accepted: a list"),
    ],
)
def test_bad_dtypes_and_quantization_are_refused(
    tmp_path: Path, change: dict[str, Any], match: str
) -> None:
    folder = copy_model("graph-raw-ops", tmp_path)
    edit_json(folder, lambda d: d["weightsManifest"][0]["weights"][0].update(change))
    refused(folder, match)


def test_dense_with_a_million_units_fails_before_allocating(tmp_path: Path) -> None:
    """The Keras converter would allocate nn.Linear(n, 10**6) from the config: checked first."""
    folder = copy_model("layers-sequential", tmp_path)

    def edit(doc: dict[str, Any]) -> None:
        layers = doc["modelTopology"]["config"]["layers"]
        next(lay for lay in layers if lay["class_name"] == "Dense")["config"]["units"] = 10**6

    edit_json(folder, edit)
    msg = refused(folder, r"units 1000000 does not match its kernel's shape \(90, 6\)")
    assert "('fc', Dense)" in msg


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("filters", 10**7, "filters 10000000 does not match"),
        ("kernel_size", [3000, 3000], "kernel_size"),
        ("strides", [10**6, 1], "strides"),
    ],
)
def test_conv_config_sizes_checked(tmp_path: Path, key: str, value: Any, match: str) -> None:
    folder = copy_model("layers-sequential", tmp_path)
    edit_json(
        folder, lambda d: d["modelTopology"]["config"]["layers"][0]["config"].update({key: value})
    )
    refused(folder, match)


def test_huge_input_shape_is_refused(tmp_path: Path) -> None:
    folder = copy_model("layers-sequential", tmp_path)
    cfg = lambda d: d["modelTopology"]["config"]["layers"][0]["config"]  # noqa: E731
    edit_json(folder, lambda d: cfg(d).update(batch_input_shape=[None, 10**5, 10**5, 3]))
    refused(folder, "over 8192 a side|over the budget")
    folder = copy_model("graph-raw-ops", tmp_path / "g")

    def edit(doc: dict[str, Any]) -> None:
        node = next(n for n in doc["modelTopology"]["node"] if n["op"] == "Placeholder")
        node["attr"]["shape"]["shape"]["dim"][1]["size"] = "100000"

    edit_json(folder, edit)
    refused(folder, "over 8192 pixels a side")


def test_graph_const_without_value_and_huge_pad(tmp_path: Path) -> None:
    folder = copy_model("graph-raw-ops", tmp_path)
    edit_json(
        folder,
        lambda d: (
            d["modelTopology"]["node"].append({"name": "ghost", "op": "Const", "attr": {}})
            or next(n for n in d["modelTopology"]["node"] if n["op"] == "Selu")["input"].append(
                "^ghost"
            )
        ),
    )
    # a control input only: not needed for the output, so it is never looked up
    load_model(folder)
    edit_json(
        folder,
        lambda d: next(n for n in d["modelTopology"]["node"] if n["op"] == "Selu").update(
            op="AddV2", input=["PartitionedCall/BiasAdd", "ghost"]
        ),
    )
    refused(folder, r"\('ghost', Const\): the weights manifest holds no value")


@pytest.mark.parametrize(
    "text", ["[1, 2, 3]", "not json", b"\xff\xfe{}", '{"modelTopology": 3}', "{}"]
)
def test_malformed_model_json_is_one_line(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(path, "model.json|JSON|UTF-8", format="tfjs")


# ------------------------------------------------------------------ published layers model


@pytest.fixture(scope="module")
def nsfwjs_mobilenet() -> Path:
    """nsfwjs 4.4.0's MobileNetV2 (Keras 2.2.4 via tfjs-converter, uint8-quantized), unwrapped
    from the npm package's JS bundles by its own loaders into the test cache."""
    if not node_ready():
        pytest.skip(why_no_node())
    if not (JS / "node_modules" / "nsfwjs" / "package.json").is_file():
        pytest.skip(f"nsfwjs is not installed (run `npm ci --prefix {JS}`)")
    out = cache_dir() / "nsfwjs-mobilenet_v2"
    if not (out / "model.json").is_file():
        subprocess.run(
            ["node", str(JS / "extract_nsfwjs.js"), "mobilenet_v2", str(out)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return out


@pytest.mark.slow
def test_published_nsfwjs_mobilenet_matches_tfjs(nsfwjs_mobilenet: Path) -> None:
    model = load_model(nsfwjs_mobilenet)
    assert model.classes == ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"]
    assert model.spec.shape == (3, 224, 224)
    x = sample_inputs("nsfwjs", (224, 224, 3))[:1]  # nsfwjs feeds pixels / 255
    want = run_tfjs(nsfwjs_mobilenet, x)
    with torch.no_grad():
        got = model.probabilities(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    diff = float(np.abs(got.double().numpy() - want).max())
    print(f"nsfwjs mobilenet_v2: max |Δ| = {diff:.2e} vs TF.js in node")
    assert diff < 1e-4


# ------------------------------------------------------------------ mutated files

WEIRD: list[Any] = [
    None, -5, 1.5, "x", [], {}, [1, "a"], True, 10**7, [10**6, 10**6],
    {"list": 3}, {"list": {"i": ["a"]}}, {"s": 3}, {"i": "q"},
]  # fmt: skip


def mutations(doc: dict[str, Any], count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` copies of ``doc`` with one value somewhere replaced by an odd one."""
    import copy
    import random

    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...], depth: int) -> None:
        if depth > 7:
            return
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            paths.append((*path, key))
            if isinstance(value, dict | list) and len(value) < 40:
                walk(value, (*path, key), depth + 1)

    walk(doc, (), 0)
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        path, value = rng.choice(paths), rng.choice(WEIRD)
        mutated = copy.deepcopy(doc)
        target = mutated
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        out.append((f"{'/'.join(map(str, path))} = {value!r}", mutated))
    return out


@pytest.mark.parametrize(
    "name", ["graph-raw-ops", pytest.param("layers-residual", marks=pytest.mark.slow)]
)
def test_mutated_model_json_gives_convlens_errors_only(tmp_path: Path, name: str) -> None:
    """A value of the wrong type anywhere gives a ConvlensError or a model, never a traceback."""
    folder = copy_model(name, tmp_path)
    doc = json.loads((folder / "model.json").read_text())
    count = 60 if name.startswith("graph") else 25  # the Keras converter is slower
    for where, mutated in mutations(doc, count, seed=len(name)):
        (folder / "model.json").write_text(json.dumps(mutated))
        try:
            load_model(folder)
        except ConvlensError as e:
            assert "\n" not in str(e), where
        except Exception as e:  # pragma: no cover - the failure message names the mutation
            raise AssertionError(f"{where}: {type(e).__name__}: {e}") from e
