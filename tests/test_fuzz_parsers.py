"""Fuzzing the parsers that read attacker-controlled bytes: the image decoder and every model
reader. The only acceptable outcomes are a valid result or a :class:`ConvlensError`.

Seeds come from the formats' real writers (Pillow for images; Keras, torch.onnx.export,
torch.export.save, safetensors, and TensorFlow.js's converter output for CNN Explainer) and
are mutated at the byte level (flips, truncation, insertion, splices) and at the structure
level (a JSON value or an ONNX field replaced by a hostile one: NaN, 2**63, -1, a string, a
deep list).

``CONVLENS_FUZZ=long`` (``make fuzz``) runs thousands of examples; the default short mode
runs a few per target, derandomized, so CI stays fast and repeatable. Failures found by the
long mode are kept below as regression tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.image import DecodeLimits, decode_image
from convlens.model import load_model

LONG = os.environ.get("CONVLENS_FUZZ", "short") == "long"
EXAMPLES = int(os.environ.get("CONVLENS_FUZZ_EXAMPLES", 2000 if LONG else 12))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG,  # CI: the same inputs every run; long mode explores
    suppress_health_check=list(HealthCheck),
    database=None,
)
CACHE = Path(os.environ.get("CONVLENS_TEST_CACHE", Path(__file__).parent / ".cache")) / "fuzz"
CNN_EXPLAINER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"

# ----------------------------------------------------------------------------- mutations

HOSTILE_VALUES = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-3, 10**9), max_size=5),
    st.builds(dict),  # fresh objects: a shared one mutated later would make draws flaky
    st.builds(lambda: [[[[[[[[[[[[]]]]]]]]]]]]),
)


@st.composite
def mutated_bytes(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few random edits: flips, overwrites, truncation, insertion, splices."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        n = len(data)
        if n == 0:
            break
        i = draw(st.integers(0, n - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        else:  # duplicate a chunk elsewhere
            j = draw(st.integers(0, n - 1))
            data[j:j] = data[i : i + draw(st.integers(1, 64))]
    return bytes(data)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:64]):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with 1-3 values (anywhere in the tree) replaced by hostile ones, or deleted."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(HOSTILE_VALUES)
    return doc


def _origin(e: BaseException) -> str:
    """Where in convlens an exception was raised: ``path/in/convlens.py:function``."""
    tb, where = e.__traceback__, "outside convlens"
    while tb is not None:
        code = tb.tb_frame.f_code
        if "/convlens/" in code.co_filename:
            where = f"{code.co_filename.split('/convlens/')[-1]}:{code.co_name}"
        tb = tb.tb_next
    return where


# Known reader bugs, found by this fuzzer, in code owned by others: (exception type, where).
# Each has an xfail(strict=True) regression test below; when a fix lands, that test passes,
# fails as XPASS, and the entry here is removed. Anything not listed fails the fuzz test.
KNOWN: dict[tuple[str, str], str] = {}
COLLECT = os.environ.get("CONVLENS_FUZZ_COLLECT")  # a file: record failures, do not raise


def expect_clean(action: Callable[[], Any], *, known_ok: bool = True) -> Any:
    """Run ``action``: a result or a ConvlensError; anything else is a bug (re-raised), except
    a listed known bug while ``known_ok`` (its own regression test holds it)."""
    try:
        return action()
    except ConvlensError:
        return None
    except Exception as e:
        key = (type(e).__name__, _origin(e))
        if COLLECT:
            with open(COLLECT, "a") as f:
                f.write(json.dumps([*key, str(e)[:200]]) + "\n")
            return None
        if known_ok and (key in KNOWN or ("*", key[1]) in KNOWN):
            return None
        raise


# ----------------------------------------------------------------------------- image decoder


def _picture() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((9, 12, 3)) * 255).astype(np.uint8), mode="RGB")


def _encode(fmt: str) -> bytes:
    buf = io.BytesIO()
    img = _picture()
    if fmt == "GIF":
        frames = [img.convert("P"), img.rotate(90).convert("P")]
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


IMAGE_SEEDS = {fmt: _encode(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")}
SMALL_LIMITS = DecodeLimits(max_bytes=1 << 20, max_pixels=1 << 20)


def _check_image(data: bytes) -> None:
    img = expect_clean(lambda: decode_image(data, SMALL_LIMITS))
    if img is not None:
        assert img.mode in ("L", "RGB")
        assert img.width * img.height <= SMALL_LIMITS.max_pixels
        np.asarray(img)  # the pixels are really there


@pytest.mark.parametrize("fmt", sorted(IMAGE_SEEDS))
@FUZZ
@given(data=st.data())
def test_fuzz_image_decoder(fmt: str, data: st.DataObject) -> None:
    _check_image(data.draw(mutated_bytes(IMAGE_SEEDS[fmt])))


def _png_with_size(width: int, height: int) -> bytes:
    """The seed PNG with its IHDR claiming another size (CRC fixed, so Pillow believes it)."""
    png = bytearray(IMAGE_SEEDS["PNG"])
    ihdr = png[12:29]  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


@FUZZ
@given(width=st.integers(0, 2**32 - 1), height=st.integers(0, 2**32 - 1))
def test_fuzz_png_dimensions_are_budgeted(width: int, height: int) -> None:
    """A header claiming billions of pixels is refused before any pixel memory is taken."""
    _check_image(_png_with_size(width, height))


def test_decoding_hostile_images_stays_within_memory() -> None:
    """Peak memory after decoding every seed's worst claims grows by far less than they ask."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for w, h in ((2**31 - 1, 2**31 - 1), (100_000, 100_000), (1, 2**30), (65_535, 65_535)):
        _check_image(_png_with_size(w, h))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, grown_mib


# ----------------------------------------------------------------------------- model seeds


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


def _write_seed(name: str, write: Callable[[Path], None]) -> Path:
    """A seed file from its real writer, made once into the test cache and reused."""
    path = CACHE / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")  # writers check the suffix
        write(tmp)
        tmp.replace(path)
    return path


def _onnx(path: Path) -> None:
    pytest.importorskip("onnx")
    torch.onnx.export(_small_cnn(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      input_names=["input"])  # fmt: skip


def _pt2(path: Path) -> None:
    net = _small_cnn()
    ep = torch.export.export(net, (torch.zeros(1, 1, 8, 8),))
    torch.export.save(ep, str(path))


def _keras_model() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _keras(path: Path) -> None:
    _keras_model().save(path)


def _safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file(load_model(TINY).net.state_dict(), str(path))


TINY = "tiny-vgg:in_channels=1,input_size=8,width=2,num_classes=3,blocks=1"


@pytest.fixture(scope="module")
def seeds() -> dict[str, Path]:
    out = {"onnx": _write_seed("small.onnx", _onnx), "pt2": _write_seed("small.pt2", _pt2),
           "safetensors": _write_seed("tiny.safetensors", _safetensors)}  # fmt: skip
    with contextlib.suppress(pytest.skip.Exception):
        out["keras"] = _write_seed("small.keras", _keras)
    return out


def _load(path: Path, **opts: Any) -> None:
    """Load like the CLI does; a model that loads must also run on a blank input."""
    model = load_model(str(path), **opts)
    with torch.no_grad():
        out = model(torch.zeros(1, *model.spec.shape))
    assert out.shape[0] == 1


def _fuzz_file(tmp: Path, name: str, data: bytes, *, known_ok: bool = True, **opts: Any) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / name
    path.write_bytes(data)
    expect_clean(lambda: _load(path, **opts), known_ok=known_ok)


def _zip_with(seed: Path, member: str, data: bytes) -> bytes:
    """``seed``'s zip archive with ``member`` replaced by ``data`` (all else byte-identical)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(seed) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data if info.filename == member else src.read(info.filename))
    return buf.getvalue()


# ----------------------------------------------------------------------------- model readers


@FUZZ
@given(data=st.data())
def test_fuzz_onnx_bytes(
    seeds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    blob = data.draw(mutated_bytes(seeds["onnx"].read_bytes()))
    _fuzz_file(tmp_path_factory.mktemp("onnx"), "m.onnx", blob)


@FUZZ
@given(data=st.data())
def test_fuzz_onnx_fields(
    seeds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Well-formed protobuf with hostile dims, attributes and shapes."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load_from_string(seeds["onnx"].read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(["dims", "attr", "input_dim"]))
        value = data.draw(st.sampled_from([0, -1, 2**31, 2**62, 7, 1]))
        if where == "dims" and proto.graph.initializer:
            init = data.draw(st.sampled_from(list(proto.graph.initializer)))
            if init.dims:
                init.dims[data.draw(st.integers(0, len(init.dims) - 1))] = value
        elif where == "attr":
            attrs = [a for n in proto.graph.node for a in n.attribute if a.ints]
            if attrs:
                attr = data.draw(st.sampled_from(attrs))
                attr.ints[data.draw(st.integers(0, len(attr.ints) - 1))] = value
        else:
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            dims[data.draw(st.integers(0, len(dims) - 1))].dim_value = value
    _fuzz_file(tmp_path_factory.mktemp("onnxf"), "m.onnx", proto.SerializeToString())


@FUZZ
@given(data=st.data())
def test_fuzz_torch_export_members(
    seeds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """A .pt2 archive with one member mutated (JSON program, weights, version files)."""
    with zipfile.ZipFile(seeds["pt2"]) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        member = data.draw(st.sampled_from(names))
        original = zf.read(member)
    if member.endswith(".json") and data.draw(st.booleans()):
        try:
            doc = json.loads(original)
        except ValueError:
            doc = None
        blob = json.dumps(data.draw(mutated_json(doc))).encode() if doc is not None else b""
    else:
        blob = data.draw(mutated_bytes(original or b"\0"))
    _fuzz_file(tmp_path_factory.mktemp("pt2"), "m.pt2", _zip_with(seeds["pt2"], member, blob))


@FUZZ
@given(data=st.data())
def test_fuzz_pt2_bytes(
    seeds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    blob = data.draw(mutated_bytes(seeds["pt2"].read_bytes()))
    _fuzz_file(tmp_path_factory.mktemp("pt2b"), "m.pt2", blob)


def _safetensors_parts(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


@FUZZ
@given(data=st.data())
def test_fuzz_safetensors_header(
    seeds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Hostile dtypes, shapes and offsets in the JSON header, or a lying header length."""
    header, body = _safetensors_parts(seeds["safetensors"].read_bytes())
    if data.draw(st.integers(0, 5)) == 0:
        text = json.dumps(header).encode()
        n = data.draw(st.sampled_from([0, 1, len(text) - 1, len(text) + 1, 2**63, 2**64 - 1]))
        blob = struct.pack("<Q", n) + text + body
    else:
        text = json.dumps(data.draw(mutated_json(header))).encode()
        blob = struct.pack("<Q", len(text)) + text + body
    _fuzz_file(tmp_path_factory.mktemp("st"), "w.safetensors", blob, arch=TINY)


@FUZZ
@given(data=st.data())
def test_fuzz_keras_config(
    seeds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """A .keras archive from Keras itself with hostile values in its config.json."""
    if "keras" not in seeds:
        pytest.skip("keras is not installed")
    with zipfile.ZipFile(seeds["keras"]) as zf:
        config = json.loads(zf.read("config.json"))
    text = json.dumps(data.draw(mutated_json(config))).encode()
    blob = _zip_with(seeds["keras"], "config.json", text)
    _fuzz_file(tmp_path_factory.mktemp("keras"), "m.keras", blob)


@FUZZ
@given(data=st.data())
def test_fuzz_keras_bytes(
    seeds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """The weights member (HDF5) or the whole archive mutated at the byte level."""
    if "keras" not in seeds:
        pytest.skip("keras is not installed")
    seed = seeds["keras"]
    if data.draw(st.booleans()):
        with zipfile.ZipFile(seed) as zf:
            weights = zf.read("model.weights.h5")
        blob = _zip_with(seed, "model.weights.h5", data.draw(mutated_bytes(weights)))
    else:
        blob = data.draw(mutated_bytes(seed.read_bytes()))
    _fuzz_file(tmp_path_factory.mktemp("kerasb"), "m.keras", blob)


@pytest.fixture(scope="module")
def tfjs_seed() -> Path:
    if not (CNN_EXPLAINER / "model.json").is_file():
        pytest.skip(f"CNN Explainer fixture not found at {CNN_EXPLAINER}")
    return CNN_EXPLAINER


@FUZZ
@given(data=st.data())
def test_fuzz_tfjs_model_json(
    tfjs_seed: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """TensorFlow.js's converter output (CNN Explainer) with hostile values in model.json."""
    folder = tmp_path_factory.mktemp("tfjs")
    for shard in tfjs_seed.glob("*.bin"):
        os.symlink(shard, folder / shard.name)
    doc = json.loads((tfjs_seed / "model.json").read_text())
    if data.draw(st.integers(0, 3)) == 0:
        blob = data.draw(mutated_bytes(json.dumps(doc).encode()))
    else:
        blob = json.dumps(data.draw(mutated_json(doc))).encode()
    _fuzz_file(folder, "model.json", blob)


# ----------------------------------------------------------------------------- regressions
# Inputs the long mode found; each must stay a clean outcome.


# ----------------------------------------------------------------------------- regressions
# What the long mode found in readers owned by the format engineers, as plain tests that
# must pass once the reader is fixed (strict: a fix makes them XPASS, which fails, so the
# mark and the KNOWN entry are removed together).


def _bug(reason: str, *raises: type[BaseException]) -> pytest.MarkDecorator:
    """A known bug: the test must fail with one of ``raises`` (a fix makes it XPASS)."""
    return pytest.mark.xfail(strict=True, reason=reason, raises=raises)


def _onnx_with(seed: Path, change: Callable[[Any], None]) -> bytes:
    onnx = pytest.importorskip("onnx")
    proto = onnx.load_from_string(seed.read_bytes())
    change(proto)
    return bytes(proto.SerializeToString())


def test_onnx_initializer_dims(seeds: dict[str, Path], tmp_path: Path) -> None:
    blob = _onnx_with(seeds["onnx"], lambda m: m.graph.initializer[0].dims.__setitem__(0, 0))
    _fuzz_file(tmp_path, "m.onnx", blob, known_ok=False)


def _set_conv_attr(name: str, value: int) -> Callable[[Any], None]:
    def change(proto: Any) -> None:
        for attr in proto.graph.node[0].attribute:
            if attr.name == name:
                attr.ints[0] = value

    return change


@pytest.mark.parametrize("value", [2**31, 2**62])
def test_onnx_conv_attribute(value: int, seeds: dict[str, Path], tmp_path: Path) -> None:
    blob = _onnx_with(seeds["onnx"], _set_conv_attr("kernel_shape", value))
    _fuzz_file(tmp_path, "m.onnx", blob, known_ok=False)


def _pads_as_one_int(proto: Any) -> None:
    onnx = pytest.importorskip("onnx")
    for attr in proto.graph.node[0].attribute:
        if attr.name == "pads":
            attr.type = onnx.AttributeProto.INT  # a single int where a list is expected
            attr.i = 1


def test_onnx_attribute_of_another_type(seeds: dict[str, Path], tmp_path: Path) -> None:
    _fuzz_file(tmp_path, "m.onnx", _onnx_with(seeds["onnx"], _pads_as_one_int), known_ok=False)


def _rename_output(proto: Any) -> None:
    proto.graph.node[2].output[0] = "renamed"


def _rename_input(proto: Any) -> None:
    proto.graph.input[0].name = "x"


@pytest.mark.parametrize("change", [_rename_output, _rename_input])
def test_onnx_dangling_tensor_name(
    change: Callable[[Any], None], seeds: dict[str, Path], tmp_path: Path
) -> None:
    _fuzz_file(tmp_path, "m.onnx", _onnx_with(seeds["onnx"], change), known_ok=False)


def _keras_config(seeds: dict[str, Path]) -> dict[str, Any]:
    if "keras" not in seeds:
        pytest.skip("keras is not installed")
    with zipfile.ZipFile(seeds["keras"]) as zf:
        return dict(json.loads(zf.read("config.json")))


KERAS_CONFIG_BUGS: dict[str, Callable[[list[Any]], None]] = {
    "layer-is-a-number": lambda layers: layers.__setitem__(1, 5),
    "layer-config-is-a-number": lambda layers: layers[1].__setitem__("config", 5),
    "input-config-is-a-string": lambda layers: layers[0].__setitem__("config", "x"),
    "dilation-0": lambda layers: layers[1]["config"].__setitem__("dilation_rate", [1, 0]),
    "groups-2-on-1-channel": lambda layers: layers[1]["config"].__setitem__("groups", 2),
    "filters-an-object": lambda layers: layers[1]["config"].__setitem__("filters", {}),
    "filters-2**40": lambda layers: layers[1]["config"].__setitem__("filters", 2**40),
    "kernel-2**31": lambda layers: layers[1]["config"].__setitem__("kernel_size", [2**31, 3]),
    "input-2**40": lambda layers: layers[0]["config"].__setitem__(
        "batch_shape", [None, 2**40, 8, 1]
    ),
    "kernel-a-string": lambda layers: layers[1]["config"].__setitem__("kernel_size", ["", 3]),
    "dense-units-null": lambda layers: layers[4]["config"].__setitem__("units", None),
    "no-layers-list": lambda layers: None,  # the list itself is removed (see the test)
    "input-shape-a-number": lambda layers: layers[0]["config"].__setitem__("batch_shape", 5),
    "input-shape-a-word": lambda layers: layers[0]["config"].__setitem__(
        "batch_shape", [None, "a", 8, 1]
    ),
}


@pytest.mark.parametrize("bug", sorted(KERAS_CONFIG_BUGS))
def test_keras_hostile_config(bug: str, seeds: dict[str, Path], tmp_path: Path) -> None:
    config = _keras_config(seeds)
    if bug == "no-layers-list":
        del config["config"]["layers"]
    else:
        KERAS_CONFIG_BUGS[bug](config["config"]["layers"])
    blob = _zip_with(seeds["keras"], "config.json", json.dumps(config).encode())
    _fuzz_file(tmp_path, "m.keras", blob, known_ok=False)


def test_keras_corrupt_weights(seeds: dict[str, Path], tmp_path: Path) -> None:
    _keras_config(seeds)
    with zipfile.ZipFile(seeds["keras"]) as zf:
        weights = zf.read("model.weights.h5")
    blob = _zip_with(seeds["keras"], "model.weights.h5", weights[: len(weights) // 2])
    _fuzz_file(tmp_path, "m.keras", blob, known_ok=False)


def test_pt2_bad_member_crc(seeds: dict[str, Path], tmp_path: Path) -> None:
    blob = bytearray(seeds["pt2"].read_bytes())
    with zipfile.ZipFile(seeds["pt2"]) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".json") and i.file_size)
    # The member's data starts after its 30-byte local header, name and extra field.
    name_len, extra_len = struct.unpack(
        "<HH", blob[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len
    blob[start] ^= 0x01
    _fuzz_file(tmp_path, "m.pt2", bytes(blob), known_ok=False)


TFJS_MANIFEST_BUGS: dict[str, Callable[[list[Any]], None]] = {
    "path-null": lambda manifest: manifest[0]["paths"].__setitem__(0, None),
    "group-a-number": lambda manifest: manifest.__setitem__(0, 5),
}


@pytest.mark.parametrize("bug", sorted(TFJS_MANIFEST_BUGS))
def test_tfjs_weight_path_not_a_string(bug: str, tfjs_seed: Path, tmp_path: Path) -> None:
    for shard in tfjs_seed.glob("*.bin"):
        os.symlink(shard, tmp_path / shard.name)
    doc = json.loads((tfjs_seed / "model.json").read_text())
    TFJS_MANIFEST_BUGS[bug](doc["weightsManifest"])
    _fuzz_file(tmp_path, "model.json", json.dumps(doc).encode(), known_ok=False)


def _central_directory(blob: bytes | bytearray) -> int:
    """Offset of the archive's first central-directory record (from the end record, so a zip
    stored inside a member, as .pt2 archives hold, is not mistaken for it)."""
    end = bytes(blob).rindex(b"PK\x05\x06")
    return int(struct.unpack("<I", blob[end + 16 : end + 20])[0])


def test_zip_bad_name(seeds: dict[str, Path], tmp_path: Path) -> None:
    blob = bytearray(seeds["pt2"].read_bytes())
    entry = _central_directory(blob)
    flags = struct.unpack("<H", blob[entry + 8 : entry + 10])[0] | 0x800  # "name is UTF-8"
    blob[entry + 8 : entry + 10] = struct.pack("<H", flags)
    blob[entry + 46 + 1] = 0x80  # a lone continuation byte in the name
    _fuzz_file(tmp_path, "m.pt2", bytes(blob), known_ok=False)


def test_keras_bad_central_directory(seeds: dict[str, Path], tmp_path: Path) -> None:
    _keras_config(seeds)
    blob = bytearray(seeds["keras"].read_bytes())
    blob[_central_directory(blob) + 3] = 0x03  # PK\x01\x02 -> PK\x01\x03
    _fuzz_file(tmp_path, "m.keras", bytes(blob), known_ok=False)
