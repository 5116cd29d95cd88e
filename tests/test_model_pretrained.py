"""Published ImageNet weights: layout and outputs against torchvision, download, checksum, cache.

The references are torchvision 0.29.1's own modules (torchvision is not a dependency): the
state-dict layouts below are the SHA-256 of ``"".join(f"{name}:{tuple(shape)}\\n" for name,
shape in state_dict.items())`` of ``torchvision.models.<name>()``, and the logits are what
torchvision's networks give for :func:`synthetic_state` weights on :func:`probe_input`. With
torchvision at hand (importable, or a wheel unpacked at ``$CONVLENS_TORCHVISION_PATH``, e.g.
``pip download torchvision==0.29.1 --no-deps`` and unzip) the last tests also compare against
it directly, and ``python tests/test_model_pretrained.py`` prints the tables again.
Downloads go to a local HTTP server.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import math
import os
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from convlens.cli import main
from convlens.errors import ConvlensError
from convlens.io.download import fetch
from convlens.io.image import fit_to_spec
from convlens.io.spec import InputSpec
from convlens.model import load_model
from convlens.model import pretrained as pt
from convlens.model.zoo import ZOO, build, parse_arch

# name -> (state-dict entries, parameters, SHA-256 of the name:shape lines), from torchvision
TORCHVISION_LAYOUT = {
    "alexnet": (16, 61_100_840, "98822a4abada1a7b"),
    "vgg16": (32, 138_357_544, "1b8c0250b40b27a1"),
    "resnet18": (122, 11_689_512, "2358007f9a0816a7"),
    "resnet50": (320, 25_557_032, "01086f984625da1c"),
    "mobilenet_v2": (314, 3_504_872, "a0067dfe2a02fd0d"),
    "mobilenet_v3_small": (244, 2_542_856, "9b4a21b58a50112b"),
}
# A few names and shapes as they read in torchvision's source, for a reader of a failure.
TORCHVISION_SAMPLE_KEYS = {
    "alexnet": {"features.0.weight": (64, 3, 11, 11), "classifier.6.weight": (1000, 4096)},
    "resnet50": {"layer1.0.downsample.0.weight": (256, 64, 1, 1),
                 "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048)},
    "mobilenet_v2": {"features.1.conv.0.0.weight": (32, 1, 3, 3),
                     "features.2.conv.0.0.weight": (96, 16, 1, 1),
                     "features.18.0.weight": (1280, 320, 1, 1),
                     "classifier.1.weight": (1000, 1280)},
    "mobilenet_v3_small": {"features.1.block.1.fc1.weight": (8, 16, 1, 1),
                           "features.4.block.2.fc2.weight": (96, 24, 1, 1),
                           "features.12.0.weight": (576, 96, 1, 1),
                           "classifier.0.weight": (1024, 576),
                           "classifier.3.weight": (1000, 1024)},
}  # fmt: skip
# name -> (first six logits, top-3 classes, max |logit|) of torchvision's network
TORCHVISION_LOGITS = {
    "alexnet": ([1.96395, -0.0213766, 0.250565, 4.19937, -0.303114, -0.958754], [193, 920, 508],
                7.43245),
    "resnet18": ([-27.3344, -18.8536, -26.5576, -8.644, -15.1513, 15.3829], [93, 265, 850],
                 62.7248),
    "resnet50": ([-2792.74, -543.241, 2292.06, -260.686, 1159.76, 1200.86], [984, 233, 81],
                 4160.27),
    "mobilenet_v2": ([-1.29546, -1.03464, -3.23566, -1.52706, 0.588557, -5.95798],
                     [8, 423, 205], 8.6827),
    "mobilenet_v3_small": ([-0.149162, -0.361507, -0.115071, 0.230905, -0.0043705, -0.286025],
                           [51, 454, 403], 0.993264),
}  # fmt: skip


def synthetic_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Deterministic, well-scaled weights for a state dict's names and shapes: He-scaled
    normal kernels, batch-norm scales near 1, small shifts and means, variances in [0.5, 1.5].
    Each tensor has its own seeded generator, so the global RNG plays no part."""
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        g = torch.Generator().manual_seed(1000 + i)
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros((), dtype=torch.long)
        elif name.endswith("running_var"):
            out[name] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1:  # biases, batch-norm scales and shifts, running means
            base = 1.0 if name.endswith("weight") else 0.0
            out[name] = base + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            out[name] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return out


def probe_input() -> torch.Tensor:
    """A fixed 1×3×64×64 input in [0, 1], made without any random numbers."""
    i = torch.arange(3 * 64 * 64, dtype=torch.float32).reshape(1, 3, 64, 64)
    return (torch.sin(i * 0.37) + 1) / 2


def _bare_net(arch: str, device: str = "cpu") -> torch.nn.Module:
    """The zoo's network alone (no Model, no layer graph), on ``device``."""
    name, args = parse_arch(arch)
    with torch.device(device):
        net, _ = ZOO.get(name).make(**args)
    return net


def _layout(net: torch.nn.Module) -> tuple[int, int, str]:
    state = net.state_dict()
    lines = "".join(f"{k}:{tuple(v.shape)}\n" for k, v in state.items())
    params = sum(p.numel() for p in net.parameters())
    return len(state), params, hashlib.sha256(lines.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", list(TORCHVISION_LAYOUT))
def test_state_dict_layout_and_parameter_count_match_torchvision(name: str) -> None:
    pub = pt.PUBLISHED[name]
    net = _bare_net(pub.arch, device="meta")  # shapes only: no memory, no initialization
    assert _layout(net) == TORCHVISION_LAYOUT[name]
    assert pub.num_params == TORCHVISION_LAYOUT[name][1]
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in TORCHVISION_SAMPLE_KEYS.get(name, {}).items():
        assert shapes[key] == shape


@pytest.mark.parametrize("name", list(TORCHVISION_LOGITS))
def test_outputs_match_torchvision_for_the_same_weights(name: str) -> None:
    """Same weights, same input, same logits: the forward passes (strides, batch-norm eps,
    hard swish, squeeze-excitation, residuals) are torchvision's, not only the names."""
    net = _bare_net(pt.PUBLISHED[name].arch).eval()
    net.load_state_dict(synthetic_state({k: tuple(v.shape) for k, v in net.state_dict().items()}))
    with torch.no_grad():
        y = net(probe_input())[0]
    first, top, peak = TORCHVISION_LOGITS[name]
    assert y.abs().max().item() == pytest.approx(peak, rel=1e-4)
    assert y[: len(first)].tolist() == pytest.approx(first, abs=1e-4 * peak)
    assert torch.topk(y, 3).indices.tolist() == top


def test_published_files_and_their_checksum_prefixes() -> None:
    # The URLs torchvision 0.29.1's IMAGENET1K_V1 weights name (torchvision/models/*.py).
    assert {n: p.url(PUBLISHED_BASE) for n, p in pt.PUBLISHED.items()} == {
        "alexnet": f"{PUBLISHED_BASE}/alexnet-owt-7be5be79.pth",
        "vgg16": f"{PUBLISHED_BASE}/vgg16-397923af.pth",
        "resnet18": f"{PUBLISHED_BASE}/resnet18-f37072fd.pth",
        "resnet50": f"{PUBLISHED_BASE}/resnet50-0676ba61.pth",
        "mobilenet_v2": f"{PUBLISHED_BASE}/mobilenet_v2-b0353104.pth",
        "mobilenet_v3_small": f"{PUBLISHED_BASE}/mobilenet_v3_small-047dcff4.pth",
    }
    assert pt.PUBLISHED["alexnet"].sha256_prefix == "7be5be79"
    assert pt.sha256_prefix("resnet50-0676ba61.safetensors") == "0676ba61"
    assert pt.sha256_prefix("weights-final.pth") is None  # not hex
    assert pt.sha256_prefix("resnet-abc.pth") is None  # too short to be a check
    assert pt.PUBLISHER_URL == PUBLISHED_BASE


PUBLISHED_BASE = "https://download.pytorch.org/models"


def test_imagenet_class_names() -> None:
    names = pt.imagenet_classes()
    assert len(names) == 1000 == len(set(names))
    # indices every ImageNet user knows
    assert (names[0], names[1], names[207], names[281], names[999]) == (
        "tench", "goldfish", "golden retriever", "tabby", "toilet tissue",
    )  # fmt: skip


def test_publisher_preprocessing_by_hand() -> None:
    """500×375 → shorter side 256: 341×256 (int(256·500/375)); the 224 crop starts at
    round((341-224)/2) = 58 (half to even, as torchvision rounds), top (256-224)/2 = 16."""
    spec = pt.imagenet_spec()
    assert (spec.resize_size, spec.interpolation, spec.shape) == (256, "bilinear", (3, 224, 224))
    img = Image.effect_noise((500, 375), 64).convert("RGB")
    expected = img.resize((341, 256), Image.Resampling.BILINEAR).crop((58, 16, 282, 240))
    assert fit_to_spec(img, spec).tobytes() == expected.tobytes()
    exact = Image.new("RGB", (224, 224), (1, 2, 3))
    assert fit_to_spec(exact, spec) is not None and fit_to_spec(exact, spec).size == (224, 224)
    # an input-size override larger than 256 still gets covered, not refused
    big = InputSpec.from_dict(spec.to_dict() | {"height": 300, "width": 300})
    assert fit_to_spec(img, big).size == (300, 300)
    assert InputSpec.from_dict(spec.to_dict()) == spec


def _torchvision_models() -> object | None:
    """``torchvision.models`` if it can be had: installed, or unpacked at
    ``$CONVLENS_TORCHVISION_PATH``. Its compiled operators (detection ops) are not needed for
    the classification networks; when they do not load beside this torch, the module that
    registers them is stubbed so that the pure-Python model code still imports."""
    import sys
    import types

    extra = os.environ.get("CONVLENS_TORCHVISION_PATH")
    if extra and extra not in sys.path:
        sys.path.append(extra)
    for attempt in range(2):
        try:
            import torchvision.models

            return torchvision.models
        except ImportError:
            return None
        except RuntimeError:  # "operator torchvision::nms does not exist": compiled ops
            if attempt:
                return None
            for mod in [m for m in sys.modules if m.startswith("torchvision")]:
                del sys.modules[mod]
            stub = types.ModuleType("torchvision._meta_registrations")
            sys.modules["torchvision._meta_registrations"] = stub
    return None


@pytest.fixture(scope="module")
def torchvision_models() -> object:
    models = _torchvision_models()
    if models is None:
        pytest.skip("torchvision not importable; set CONVLENS_TORCHVISION_PATH to compare")
    return models


@pytest.mark.slow  # VGG-16's 138 M weights, twice: about 20 s
@pytest.mark.parametrize("name", list(TORCHVISION_LAYOUT))
def test_against_torchvision_itself(name: str, torchvision_models: object) -> None:
    """Same names, shapes and logits as torchvision's network, for the same weights."""
    theirs = getattr(torchvision_models, name)().eval()
    ours = _bare_net(pt.PUBLISHED[name].arch).eval()
    assert _layout(ours) == _layout(theirs)
    state = synthetic_state({k: tuple(v.shape) for k, v in theirs.state_dict().items()})
    theirs.load_state_dict(state)
    ours.load_state_dict(state)
    x = probe_input() if name != "vgg16" else probe_input()[:, :, :32, :32]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def _print_references() -> None:  # pragma: no cover - regenerates the tables above
    models = _torchvision_models()
    assert models is not None, "torchvision not importable; set CONVLENS_TORCHVISION_PATH"
    for name in TORCHVISION_LAYOUT:
        net = getattr(models, name)().eval()
        print(name, _layout(net))
        if name in TORCHVISION_LOGITS:
            net.load_state_dict(
                synthetic_state({k: tuple(v.shape) for k, v in net.state_dict().items()})
            )
            with torch.no_grad():
                y = net(probe_input())[0]
            first = [float(f"{v:.6g}") for v in y[:6].tolist()]
            peak = float(f"{y.abs().max().item():.6g}")
            print(f"    {first}, {torch.topk(y, 3).indices.tolist()}, {peak}")


if __name__ == "__main__":  # pragma: no cover
    _print_references()


# --------------------------------------------------------------------------- downloads


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclasses.dataclass
class Served:
    url: str
    root: Path
    requests: list[str]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    """A file server on 127.0.0.1 that records the paths asked for."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(_Quiet):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{httpd.server_address[1]}", root, requests)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models" / "torchvision"


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclasses.dataclass
class Weights:
    state: dict[str, torch.Tensor]
    data: bytes
    file_name: str  # mobilenet_v3_small-<its own SHA-256 prefix>.pth


@pytest.fixture(scope="module")
def v3_weights() -> Weights:
    """A randomly initialized MobileNetV3-Small saved as torchvision saves its weights."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in build("mobilenet_v3_small").net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    return Weights(state, data, f"mobilenet_v3_small-{hashlib.sha256(data).hexdigest()[:8]}.pth")


@pytest.fixture
def published(v3_weights: Weights, monkeypatch: pytest.MonkeyPatch) -> pt.PublishedWeights:
    """The table entry for mobilenet_v3_small, pointing at the generated file's name."""
    entry = dataclasses.replace(pt.PUBLISHED["mobilenet_v3_small"], file_name=v3_weights.file_name)
    monkeypatch.setitem(pt.PUBLISHED, "mobilenet_v3_small", entry)
    return entry


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in state)


def test_download_checked_cached_and_described(
    server: Served,
    cache: Path,
    v3_weights: Weights,
    published: pt.PublishedWeights,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (server.root / v3_weights.file_name).write_bytes(v3_weights.data)
    monkeypatch.setenv("CONVLENS_WEIGHTS_URL", server.url)
    model = load_model("mobilenet_v3_small", weights="imagenet")
    assert _same_weights(model.net, v3_weights.state) and not model.training
    assert server.requests == [f"/{v3_weights.file_name}"]
    assert [p.name for p in cache.iterdir()] == [v3_weights.file_name]  # no temporary left
    assert model.classes == list(pt.imagenet_classes()) and model.spec == pt.imagenet_spec()
    assert model.arch == {"name": "mobilenet_v3_small", "args": {}}
    # Offline now: the cached file is used and nothing is asked for.
    monkeypatch.setenv("CONVLENS_WEIGHTS_URL", _closed_port_url())
    again = load_model("mobilenet_v3_small", weights="imagenet")
    assert _same_weights(again.net, v3_weights.state) and len(server.requests) == 1


def test_wrong_checksum_is_refused_and_nothing_cached(
    server: Served,
    cache: Path,
    v3_weights: Weights,
    published: pt.PublishedWeights,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tampered = bytearray(v3_weights.data)
    tampered[-100] ^= 1
    (server.root / v3_weights.file_name).write_bytes(bytes(tampered))
    monkeypatch.setenv("CONVLENS_WEIGHTS_URL", server.url)
    with pytest.raises(
        ConvlensError, match=f"expected one starting with {published.sha256_prefix}"
    ):
        load_model("mobilenet_v3_small", weights="imagenet")
    assert not cache.exists() or not any(cache.iterdir())


def test_offline_is_one_line_that_says_how_to_use_a_local_file(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVLENS_WEIGHTS_URL", _closed_port_url())
    with pytest.raises(ConvlensError) as info:
        load_model("resnet18", weights="imagenet")
    message = str(info.value)
    assert "\n" not in message and "resnet18-f37072fd.pth" in message
    assert "cannot download http://127.0.0.1:" in message
    assert "--weights /path/to/resnet18-f37072fd.pth" in message
    assert not cache.exists() or not any(cache.iterdir())


def test_architecture_that_does_not_fit_is_refused_before_any_download(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVLENS_WEIGHTS_URL", _closed_port_url())
    with pytest.raises(ConvlensError, match=r"fit alexnet:variant=owt.*variant=2012"):
        load_model("alexnet:variant=2012", weights="imagenet")
    with pytest.raises(ConvlensError, match=r"num_classes=10 changes the network"):
        load_model("resnet18:num_classes=10", weights="imagenet")
    with pytest.raises(ConvlensError, match="no published ImageNet weights for 'tiny-vgg'"):
        load_model("tiny-vgg", weights="imagenet")
    with pytest.raises(ConvlensError, match="applies to zoo architectures"):
        load_model("demo", weights="imagenet")


def test_local_file_is_checked_against_the_prefix_in_its_name(
    tmp_path: Path, cache: Path, v3_weights: Weights, published: pt.PublishedWeights
) -> None:
    good = tmp_path / v3_weights.file_name
    good.write_bytes(v3_weights.data)
    model = load_model("mobilenet_v3_small", weights=str(good))
    assert _same_weights(model.net, v3_weights.state)
    assert model.classes[0] == "tench" and model.spec.resize_size == 256
    assert not cache.exists()  # a local file is read where it is
    # the same bytes under another name: recognised by content as the published file
    renamed = tmp_path / "mine.pth"
    renamed.write_bytes(v3_weights.data)
    assert load_model("mobilenet_v3_small", weights=renamed).classes[1] == "goldfish"
    lying = tmp_path / "mobilenet_v3_small-00000000.pth"
    lying.write_bytes(v3_weights.data)
    with pytest.raises(ConvlensError, match="its name says it starts with 00000000"):
        load_model("mobilenet_v3_small", weights=str(lying))
    with pytest.raises(ConvlensError, match="does not exist"):
        load_model("mobilenet_v3_small", weights=str(tmp_path / "missing.pth"))


def test_local_weights_of_other_origin_and_safetensors(tmp_path: Path) -> None:
    """A state dict that is not the published one loads too, without the ImageNet extras."""
    torch.manual_seed(1)
    state = build("resnet18:num_classes=3").net.state_dict()
    path = tmp_path / "finetuned.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = load_model("resnet18:num_classes=3", weights=path)
    assert _same_weights(model.net, state) and model.classes == ["class 0", "class 1", "class 2"]
    assert model.spec.resize_size is None
    with pytest.raises(ConvlensError, match=r"do not fit .*resnet18.*shape mismatch at fc.weight"):
        load_model("resnet18", weights=path)
    with pytest.raises(ConvlensError, match="neither a published set"):
        load_model("resnet18", weights="imagenet21k")


class _MakesFolder:
    """Unpickling this calls ``os.mkdir(path)``: code run by reading a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _MakesFolder(tmp_path / "ran")}, path)
    with pytest.raises(ConvlensError, match="nothing is unpickled"):
        load_model("resnet18", weights=path)
    assert not (tmp_path / "ran").exists()
    # the payload is live: a plain unpickling would have run it
    torch.load(path, weights_only=False)
    assert (tmp_path / "ran").is_dir()
    ints = tmp_path / "ints.pth"
    torch.save({"fc.weight": torch.zeros(2, 2, dtype=torch.int64)}, ints)
    with pytest.raises(ConvlensError, match=r"non-float weights at fc\.weight"):
        load_model("resnet18", weights=ints)


def test_archive_that_unpacks_over_the_budget_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVLENS_MAX_MODEL_MB", "1")
    big, bomb = tmp_path / "big.pth", tmp_path / "bomb.pth"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big/data.pkl", bytes(range(256)) * 8192)  # 2 MiB in a few KiB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/data.pkl", b"\0" * (2 << 20))  # 1023-fold
    assert big.stat().st_size < 1 << 20 and bomb.stat().st_size < 1 << 20
    with pytest.raises(ConvlensError, match="unpacks to 2097152 bytes, over the model budget"):
        load_model("resnet18", weights=big)
    with pytest.raises(ConvlensError, match="refused as a zip bomb"):
        load_model("resnet18", weights=bomb)


def test_fetch_prefix_needs_eight_digits(tmp_path: Path) -> None:
    with pytest.raises(ConvlensError, match="at least 8 hex digits"):
        fetch("http://127.0.0.1:1/x", tmp_path / "x", "abc", prefix=True)


def test_cli_weights_flag(
    tmp_path: Path,
    v3_weights: Weights,
    published: pt.PublishedWeights,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / v3_weights.file_name
    path.write_bytes(v3_weights.data)
    assert main(["summary", "mobilenet_v3_small", "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2,542,856" in out or "2542856" in out
    assert main(["summary", "demo", "--weights", "imagenet"]) == 2
    assert "applies to zoo architectures" in capsys.readouterr().err
