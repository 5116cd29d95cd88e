"""The web API (docs/web-api.md): every route, bad uploads, and a concurrent burst on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.model import Model, build
from convlens.trace import decode_tensor
from convlens.web import ServerConfig, create_app
from convlens.web.server import is_loopback
from web_harness import free_port

LOCAL = "http://127.0.0.1"  # the server answers only requests addressed to this machine


with warnings.catch_warnings():  # Starlette prefers the httpx2 package; httpx works
    warnings.simplefilter("ignore")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient


def conv_of(model: Model, name: str) -> torch.nn.Conv2d:
    """The network's convolution ``name``, read straight from the module tree."""
    conv = model.net.get_submodule(name)
    assert isinstance(conv, torch.nn.Conv2d)
    return conv


def png(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def data_url_image(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def halves(w: int, h: int) -> Image.Image:
    """Left half red, right half blue: orientation is easy to read back."""
    img = Image.new("RGB", (w, h), (255, 0, 0))
    img.paste((0, 0, 255), (w // 2, 0, w, h))
    return img


@pytest.fixture(scope="module")
def model() -> Model:
    return build("tiny-vgg:in_channels=3,input_size=32", seed=0).eval()


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("web")
    folder = root / "images"
    folder.mkdir()
    halves(48, 40).save(folder / "a_halves.png")
    Image.new("L", (20, 30), 100).save(folder / "b_gray.png")
    (folder / "notes.txt").write_text("not an image")
    secret = root / "secret.png"
    Image.new("RGB", (8, 8), (0, 255, 0)).save(secret)
    (folder / "c_link.png").symlink_to(secret)  # leads outside the folder: never listed
    return folder


@pytest.fixture(scope="module")
def client(model: Model, images_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(model, images_dir=images_dir), base_url=LOCAL) as c:
        yield c


def upload(client: TestClient, data: bytes) -> httpx.Response:
    return client.post("/api/v1/images", files={"file": ("../../etc/passwd", data)})


# ----------------------------------------------------------------------------- /model, samples


def test_model_document(client: TestClient, model: Model) -> None:
    doc = client.get("/api/v1/model").json()
    assert doc["graph"] == model.graph.to_dict()
    assert doc["classes"] == model.classes and doc["outputs"] == "logits"
    assert doc["input_spec"] == model.spec.to_dict()
    names = [s["name"] for s in doc["samples"]]
    assert names == ["a_halves.png", "b_gray.png"]  # no .txt, no link leaving the folder
    assert doc["samples"][0] == {
        "id": "sample-0",
        "name": "a_halves.png",
        "label": None,
        "label_name": None,
        "url": "/api/v1/samples/sample-0.png",
    }
    assert set(doc["capabilities"]) == {"methods", "scan", "featurevis"}
    assert doc["limits"]["max_upload_bytes"] == ServerConfig().max_upload_bytes


def test_model_samples_come_first_with_their_labels(model: Model, images_dir: Path) -> None:
    from convlens.model import Sample

    labelled = Model(
        model.net,
        model.spec,
        [f"c{i}" for i in range(10)],
        samples=[Sample(images_dir / "b_gray.png", label=7)],
    )
    with TestClient(create_app(labelled, images_dir=images_dir), base_url=LOCAL) as c:
        samples = c.get("/api/v1/model").json()["samples"]
        assert [(s["id"], s["name"], s["label"], s["label_name"]) for s in samples] == [
            ("sample-0", "b_gray.png", 7, "c7"),
            ("sample-1", "a_halves.png", None, None),
            ("sample-2", "b_gray.png", None, None),
        ]


def test_sample_png_is_the_file(client: TestClient, images_dir: Path) -> None:
    r = client.get("/api/v1/samples/sample-0.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    np.testing.assert_array_equal(got, np.asarray(Image.open(images_dir / "a_halves.png")))


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/samples/sample-9.png",
        "/api/v1/samples/c_link.png",
        "/api/v1/samples/..%2F..%2Fsecret.png",
        "/api/v1/samples/%2E%2E/secret.png",
        "/..%2Fsecret.png",
        "/static/..%2F..%2Fserver.py",
        "/api/v1/nothing-here",
    ],
)
def test_no_request_reads_outside_what_was_given(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert "error" in r.json()


def test_a_bug_is_still_answered_in_json(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("convlens.web.api.weights_document", broken)
    with TestClient(create_app(model), raise_server_exceptions=False, base_url=LOCAL) as c:
        r = c.get("/api/v1/weights/conv_1_1")
    assert r.status_code == 500 and "RuntimeError: boom" in r.json()["error"]


def test_front_end_and_openapi(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "<html" in r.text.lower()
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for route in ("/model", "/samples/{sample_id}.png", "/images", "/trace", "/explain"):
        assert f"/api/v1{route}" in paths
    assert "/api/v1/weights/{layer}" in paths and "/api/v1/units/{layer}/{channel}" in paths
    assert "multipart/form-data" in paths["/api/v1/images"]["post"]["requestBody"]["content"]
    trace_200 = paths["/api/v1/trace"]["get"]["responses"]["200"]["content"]["application/json"]
    assert trace_200["schema"]["$ref"].endswith("/Trace")


def test_trace_matches_its_documented_schema(client: TestClient) -> None:
    from convlens.web.schemas import Trace

    doc = client.get("/api/v1/trace", params={"image": "sample-0"}).json()
    assert Trace.model_validate(doc).model_dump(mode="json") == doc  # no field undocumented


# ----------------------------------------------------------------------------- uploads


def test_upload_is_multipart_only(client: TestClient) -> None:
    data = png(halves(64, 32))
    for content_type in ("application/octet-stream", "text/plain", "image/png", None):
        headers = {"content-type": content_type} if content_type else {}
        r = client.post("/api/v1/images", content=data, headers=headers)
        assert r.status_code == 415 and "multipart/form-data" in r.json()["error"], r.text
    for _ in range(2):
        r = upload(client, data)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["image_id"].startswith("upload-")
        assert (doc["width"], doc["height"]) == (64, 32)
        assert data_url_image(doc["original"]).size == (64, 32)
        processed = data_url_image(doc["processed"])
        # shorter-side-crop: 64x32 -> 64x32 scaled to cover 32x32 -> centre crop 32x32
        assert processed.size == (32, 32) and processed.mode == "RGB"
        arr = np.asarray(processed).astype(int)
        assert arr[16, 2, 0] > 200 and arr[16, 29, 2] > 200  # red left, blue right


def test_exif_orientation_is_respected(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    doc = upload(client, jpeg(halves(40, 20), exif=exif)).json()
    assert (doc["width"], doc["height"]) == (20, 40)
    arr = np.asarray(data_url_image(doc["original"])).astype(int)
    assert arr[5, 10, 0] > 200 and arr[35, 10, 2] > 200  # red now on top, blue below


def _cmyk() -> bytes:
    return jpeg(Image.new("CMYK", (16, 16), (0, 255, 255, 0)))  # full magenta+yellow = red


def _sixteen_bit() -> bytes:
    data = png(Image.new("I;16", (16, 16), 65535 // 2))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")  # really a 16-bit file
    return data


def _palette() -> bytes:
    return png(halves(16, 16).convert("P", palette=Image.Palette.ADAPTIVE, colors=4))


def _alpha() -> bytes:
    img = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent: shown over white
    return png(img)


def _gray() -> bytes:
    return png(Image.new("L", (16, 16), 77))


def _animated() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "centre"),
    [
        (_cmyk, (255, 0, 0)),
        (_sixteen_bit, (128, 128, 128)),
        (_palette, None),
        (_alpha, (255, 255, 255)),
        (_gray, (77, 77, 77)),
        (_animated, (255, 0, 0)),  # the first frame
    ],
)
def test_any_mode_is_converted_to_the_models_channels(
    client: TestClient, make: Callable[[], bytes], centre: tuple[int, int, int] | None
) -> None:
    r = upload(client, make())
    assert r.status_code == 200, r.text
    processed = data_url_image(r.json()["processed"])
    assert processed.mode == "RGB" and processed.size == (32, 32)
    if centre is not None:
        got = np.asarray(processed)[16, 16].astype(int)
        assert np.abs(got - np.array(centre)).max() <= 12, got


def _bomb_header() -> bytes:
    """A valid PNG whose header claims 100000×100000 pixels (pixels never sent)."""
    small = png(Image.new("L", (1, 1)))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return small[:8] + patched + small[8 + 25 :]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"%PDF-1.4 this is not an image at all", 415, "not a readable image"),
        (png(halves(64, 64))[:120], 400, "truncated"),
        (_bomb_header(), 413, "bomb"),
    ],
)
def test_bad_uploads_get_clear_4xx(
    client: TestClient, data: bytes, status: int, words: str
) -> None:
    r = upload(client, data)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_upload_limits(model: Model) -> None:
    config = ServerConfig(max_upload_bytes=2000, max_upload_pixels=50 * 50)
    with TestClient(create_app(model, config=config), base_url=LOCAL) as c:
        noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
        big = png(noisy)
        assert len(big) > 2000
        r = upload(c, big)
        assert r.status_code == 413 and "limit" in r.json()["error"]
        r = c.post("/api/v1/explain", json={"image_id": "x" * 2_000_000, "method": "saliency"})
        assert r.status_code == 413 and "limit" in r.json()["error"]  # JSON bodies too
        r = upload(c, png(Image.new("L", (60, 60))))  # small file, too many pixels
        assert r.status_code == 413 and "pixels" in r.json()["error"]
        assert upload(c, png(Image.new("L", (50, 50)))).status_code == 200


def test_uploads_never_touch_the_disk(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 MB multipart upload (Starlette's own parser would spool it to a temporary file)
    goes through with every way of making a temporary file disabled."""
    import tempfile

    import starlette.formparsers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload tried to write a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    noise = np.random.default_rng(1).integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    data = png(Image.fromarray(noise))
    assert len(data) > 2_000_000
    r = upload(client, data)
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (1000, 700)


def test_multipart_without_the_file_field(client: TestClient) -> None:
    r = client.post("/api/v1/images", files={"image": ("x.png", png(Image.new("L", (4, 4))))})
    assert r.status_code == 400 and "'file'" in r.json()["error"]


def test_upload_store_is_bounded(model: Model) -> None:
    with TestClient(create_app(model, config=ServerConfig(store_capacity=2)), base_url=LOCAL) as c:
        ids = [upload(c, png(Image.new("L", (8, 8), v))).json()["image_id"] for v in (1, 2, 3)]
        assert c.get("/api/v1/trace", params={"image": ids[0]}).status_code == 404
        assert c.get("/api/v1/trace", params={"image": ids[2]}).status_code == 200
        # least recently USED goes first: reading ids[1] keeps it past the next upload
        assert c.get("/api/v1/trace", params={"image": ids[1], "layers": "output"}).is_success
        upload(c, png(Image.new("L", (8, 8), 4)))
        assert c.get("/api/v1/trace", params={"image": ids[1]}).status_code == 200
        assert c.get("/api/v1/trace", params={"image": ids[2]}).status_code == 404


def test_lru_cache_under_threads() -> None:
    from convlens.web.cache import LRUCache

    cache: LRUCache[int, int] = LRUCache(50)

    def writer(base: int) -> None:
        for i in range(2000):
            cache.put(base + i % 100, i)
            cache.get(base + (i * 7) % 100)

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50 == len(set(cache.keys()))
    with pytest.raises(ValueError):
        LRUCache(0)


# ----------------------------------------------------------------------------- /trace


def test_trace_of_an_upload_matches_the_model(client: TestClient, model: Model) -> None:
    up = upload(client, png(halves(50, 50))).json()
    doc = client.get("/api/v1/trace", params={"image": up["image_id"]}).json()
    x = torch.from_numpy(np.asarray(data_url_image(up["processed"]), dtype=np.float32) / 255)
    x = x.permute(2, 0, 1).unsqueeze(0)  # (H, W, C) -> (1, C, H, W)
    np.testing.assert_allclose(decode_tensor(doc["input"]["tensor"]), x[0].numpy(), atol=1e-6)
    with torch.no_grad():
        logits = model(x)[0]
        conv = conv_of(model, "conv_1_1")(model.normalize(x))[0]
    np.testing.assert_allclose(doc["logits"], logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        decode_tensor(doc["activations"]["conv_1_1"]), conv.numpy(), rtol=1e-4, atol=1e-5
    )
    assert doc["predicted"] == int(logits.argmax())
    assert list(doc["activations"]) == model.graph.names()


def test_trace_params(client: TestClient) -> None:
    q = {"image": "sample-1", "max_channels": 2, "max_size": 8, "layers": "conv_1_1,output"}
    doc = client.get("/api/v1/trace", params=q).json()
    assert list(doc["activations"]) == ["conv_1_1", "output"]
    assert doc["activations"]["conv_1_1"]["shape"] == [2, 8, 8]
    assert len(doc["stats"]["conv_1_1"]["channel_max"]) == 10
    assert doc["caps"]["conv_1_1"] == {
        "channels": 2,
        "of_channels": 10,
        "size": [8, 8],
        "of_size": [30, 30],
    }


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"image": "upload-0000"}, 404),
        ({"image": "sample-99"}, 404),
        ({"image": "../secret.png"}, 404),
        ({}, 422),
        ({"image": "sample-0", "max_channels": 0}, 422),
        ({"image": "sample-0", "layers": "conv_9"}, 404),
    ],
)
def test_trace_errors(client: TestClient, query: dict[str, object], status: int) -> None:
    r = client.get("/api/v1/trace", params=query)
    assert r.status_code == status and r.json()["error"]


# ----------------------------------------------------------------------------- weights, units


def test_weights(client: TestClient, model: Model) -> None:
    doc = client.get("/api/v1/weights/conv_2_1").json()
    conv = conv_of(model, "conv_2_1")
    assert conv.bias is not None
    np.testing.assert_array_equal(decode_tensor(doc["weight"]), conv.weight.detach().numpy())
    np.testing.assert_array_equal(decode_tensor(doc["bias"]), conv.bias.detach().numpy())
    lin = client.get("/api/v1/weights/output").json()
    head = model.net.get_submodule("output")
    assert isinstance(head, torch.nn.Linear)
    assert lin["weight"]["shape"] == list(head.weight.shape)
    assert client.get("/api/v1/weights/relu_1_1").status_code == 400
    assert client.get("/api/v1/weights/conv_7").status_code == 404


def test_dotted_layer_names_in_urls(small_resnet: Model) -> None:
    with TestClient(create_app(small_resnet), base_url=LOCAL) as c:
        r = c.get("/api/v1/weights/layer1.0.conv1")
        assert r.status_code == 200 and r.json()["bias"] is None
        unit = c.get("/api/v1/units/layer1.0.conv1/2?featurevis=false").json()
        w = conv_of(small_resnet, "layer1.0.conv1").weight[2]
        np.testing.assert_array_equal(decode_tensor(unit["kernel"]), w.detach().numpy())


class TwiceNet(torch.nn.Module):
    """One ReLU module called twice: its second call is the layer "relu#2"."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.relu = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x))
        return self.fc(self.relu(h - 0.1).mean(dim=(2, 3)))


def test_hash_in_layer_names(images_dir: Path) -> None:
    from convlens.io.spec import InputSpec

    torch.manual_seed(0)
    twice = Model(TwiceNet().eval(), InputSpec(3, 16, 16), name="twice")
    assert "relu#2" in twice.graph
    with TestClient(create_app(twice, images_dir=images_dir), base_url=LOCAL) as c:
        unit = c.get("/api/v1/units/relu%232/1?featurevis=false").json()  # '#' sent as %23
        assert unit["layer"] == "relu#2" and unit["kernel"] is None
        doc = c.get("/api/v1/trace", params={"image": "sample-0", "layers": "relu,relu#2"}).json()
        first = decode_tensor(doc["activations"]["relu"])
        np.testing.assert_allclose(
            decode_tensor(doc["activations"]["relu#2"]), np.maximum(first - 0.1, 0), atol=1e-6
        )


def test_units(client: TestClient, model: Model) -> None:
    doc = client.get("/api/v1/units/conv_1_2/4?featurevis=false").json()
    assert doc["layer"] == "conv_1_2" and doc["channel"] == 4
    np.testing.assert_array_equal(
        decode_tensor(doc["kernel"]), conv_of(model, "conv_1_2").weight[4].detach().numpy()
    )
    assert doc["top_patches"] is None  # no --scan given
    assert client.get("/api/v1/units/relu_1_2/4?featurevis=false").json()["kernel"] is None
    assert client.get("/api/v1/units/conv_1_2/10").status_code == 400
    assert client.get("/api/v1/units/conv_1_2/x").status_code == 422
    assert client.get("/api/v1/units/conv_9/1").status_code == 404


def test_unit_feature_visualization_is_rendered_once(model: Model) -> None:
    with TestClient(
        create_app(model, config=ServerConfig(featurevis_steps=1)), base_url=LOCAL
    ) as c:
        assert c.get("/api/v1/model").json()["capabilities"]["featurevis"] is True
        first = c.get("/api/v1/units/conv_2_1/1").json()["featurevis"]
        img = data_url_image(first)
        assert img.size == (128, 128)  # 32x32 upscaled x4, nearest neighbour
        assert c.get("/api/v1/units/conv_2_1/1").json()["featurevis"] == first  # cached
        assert c.get("/api/v1/units/input/0").json()["featurevis"] is None


@pytest.fixture(scope="module")
def scanned(model: Model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A class-folder data set of 6 noise images and a scan of two layers over it."""
    from convlens import analysis
    from convlens.data import open_dataset

    root = tmp_path_factory.mktemp("scan")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "data" / cls / f"{i}.png")
    dataset = open_dataset(root / "data", "train")
    analysis.scan(model, dataset, ["conv_1_1", "conv_2_2"], k=4, out=root / "scan", progress=False)
    return root / "scan", root / "data"


def test_unit_top_patches_from_a_scan(model: Model, scanned: tuple[Path, Path]) -> None:
    from convlens.data import open_dataset

    scan_dir, data_dir = scanned
    app = create_app(model, scan_dir=scan_dir, scan_data=str(data_dir))
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/v1/model").json()["capabilities"]["scan"] is True
        doc = c.get("/api/v1/units/conv_1_1/2?featurevis=false").json()
        assert len(doc["top_patches"]) == len(doc["top_hits"]) == 4
        # the best hit is the channel's largest activation over the data set, found by hand
        images, _ = open_dataset(data_dir, "train").get(list(range(6)))
        with torch.no_grad():
            acts = conv_of(model, "conv_1_1")(model.normalize(images))[:, 2]  # (N, 30, 30)
        best = doc["top_hits"][0]
        assert best["value"] == pytest.approx(float(acts.max()), rel=1e-5)
        assert float(acts[best["image"], best["row"], best["col"]]) == pytest.approx(best["value"])
        # its patch is the 3x3 receptive field at (row, col), upscaled x22 to 66 px
        patch = np.asarray(data_url_image(doc["top_patches"][0]))
        crop = images[
            best["image"], :, best["row"] : best["row"] + 3, best["col"] : best["col"] + 3
        ]
        expected = (crop.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(patch[::22, ::22], expected)
        assert c.get("/api/v1/units/conv_1_2/0?featurevis=false").json()["top_patches"] is None


def test_scan_problems(model: Model, scanned: tuple[Path, Path], tmp_path: Path) -> None:
    scan_dir, _ = scanned
    with TestClient(
        create_app(model, scan_dir=scan_dir), base_url=LOCAL
    ) as c:  # folder data set not given
        assert c.get("/api/v1/model").json()["capabilities"]["scan"] is False
        assert c.get("/api/v1/units/conv_1_1/0?featurevis=false").json()["top_patches"] is None
    other = build("tiny-vgg:in_channels=3,input_size=32", seed=1)
    with pytest.raises(ConvlensError, match="other weights"):
        create_app(other, scan_dir=scan_dir)
    with pytest.raises(ConvlensError, match="no scan"):
        create_app(model, scan_dir=tmp_path)


# ----------------------------------------------------------------------------- /explain


def test_explain_catalogue(client: TestClient) -> None:
    methods = client.get("/api/v1/model").json()["capabilities"]["methods"]
    assert len(methods) >= 10  # the methods package always ships with convlens
    by_name = {m["name"]: m for m in methods}
    assert by_name["saliency"]["params"]["reduce"]["default"] == "max-abs"
    assert by_name["grad-cam"]["needs_layer"] is True
    assert "layer" not in by_name["grad-cam"]["params"]  # chosen by the request's own field


def test_explain_saliency_equals_autograd(client: TestClient, model: Model) -> None:
    r = client.post(
        "/api/v1/explain", json={"image_id": "sample-0", "method": "saliency", "target": 3}
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    x = decode_tensor(client.get("/api/v1/trace?image=sample-0").json()["input"]["tensor"])
    xt = torch.from_numpy(x).unsqueeze(0).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xt)[0, 3], xt)
    expected = grad[0].abs().amax(dim=0)  # max over channels of |dS/dx| (Simonyan et al.)
    np.testing.assert_allclose(decode_tensor(doc["map"]), expected.numpy(), rtol=1e-4, atol=1e-7)
    assert (doc["method"], doc["target"], doc["signed"]) == ("saliency", 3, False)
    assert doc["target_name"] == model.classes[3]
    assert data_url_image(doc["overlay"]).size == (32, 32)


def test_explain_defaults_to_predicted_class_and_last_layer(
    client: TestClient, model: Model
) -> None:
    r = client.post("/api/v1/explain", json={"image_id": "sample-1", "method": "grad-cam"})
    doc = r.json()
    predicted = client.get("/api/v1/trace?image=sample-1&layers=output").json()["predicted"]
    assert doc["target"] == predicted
    assert doc["layer"] == model.graph.last_spatial().name
    assert doc["map"]["shape"] == [32, 32]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"image_id": "nope", "method": "saliency"}, 404, "nope"),
        ({"method": "saliency"}, 422, "image_id"),
        ({"image_id": "sample-0", "method": "no-such-method"}, 400, "no-such-method"),
        ({"image_id": "sample-0", "method": "grad-cam", "layer": "conv_9"}, 400, "conv_9"),
        ({"image_id": "sample-0", "method": "saliency", "target": 99}, 400, "out of range"),
        ({"image_id": "sample-0", "method": "saliency", "target": "koala"}, 400, "koala"),
        ({"image_id": "sample-0", "method": "saliency", "params": {"bogus": 1}}, 400, "bogus"),
    ],
)
def test_explain_bad_requests(
    client: TestClient, body: dict[str, object], status: int, words: str
) -> None:
    r = client.post("/api/v1/explain", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


# ----------------------------------------------------------------------------- concurrency


@pytest.fixture(scope="module")
def live_url(model: Model, images_dir: Path) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(model, images_dir=images_dir), "127.0.0.1", port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_burst_of_50_concurrent_requests(live_url: str) -> None:
    """Concurrent requests never see each other's hooks or results: traces, unit lookups and
    hooked explanations (different images, targets, layers) mixed in one burst over loopback
    each equal the answer to the same request made alone."""
    api = f"{live_url}/api/v1"
    up = httpx.post(f"{api}/images", files={"file": ("a", png(halves(30, 60)))})
    images = ["sample-0", "sample-1", up.json()["image_id"]]
    requests: list[tuple[str, str, dict[str, object] | None]] = [
        ("GET", f"{api}/trace?image={i}", None) for i in images
    ]
    requests += [("GET", f"{api}/units/conv_1_1/{c}?featurevis=false", None) for c in (0, 5)]
    requests += [
        ("POST", f"{api}/explain", {"image_id": i, "method": m, "target": t, "layer": lay})
        for i, m, t, lay in (
            ("sample-0", "grad-cam", 1, "conv_2_2"),
            ("sample-1", "grad-cam", 7, "conv_1_2"),
            (images[2], "saliency", 4, None),
        )
    ]

    def comparable(r: httpx.Response) -> object:
        assert r.status_code == 200, r.text
        doc = r.json()
        doc.pop("seconds", None)  # an explanation's timing is the one thing that may differ
        return doc

    with httpx.Client(timeout=60) as client:
        alone = [comparable(client.request(m, u, json=b)) for m, u, b in requests]

    async def burst() -> list[tuple[int, httpx.Response]]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=120, limits=limits) as ac:
            chosen = [k % len(requests) for k in range(50)]
            calls = [
                ac.request(requests[k][0], requests[k][1], json=requests[k][2]) for k in chosen
            ]
            answers = await asyncio.gather(*calls)
            return list(zip(chosen, answers, strict=True))

    results = asyncio.run(burst())
    assert len(results) == 50
    for k, r in results:
        assert comparable(r) == alone[k], requests[k]


def test_read_write_lock() -> None:
    from convlens.web.state import ReadWriteLock

    lock = ReadWriteLock()
    both_in = threading.Barrier(2, timeout=10)
    events: list[str] = []

    def reader(name: str) -> None:
        with lock.read():
            both_in.wait()  # passes only if two readers are inside together
            events.append(name)

    readers = [threading.Thread(target=reader, args=(n,)) for n in ("r1", "r2")]
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout=10)
    assert sorted(events) == ["r1", "r2"]

    events.clear()
    inside = threading.Event()

    def writer() -> None:
        with lock.write():
            inside.set()
            time.sleep(0.2)
            events.append("writer done")

    def late_reader() -> None:
        inside.wait(timeout=10)
        with lock.read():
            events.append("reader in")

    threads = [threading.Thread(target=writer), threading.Thread(target=late_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert events == ["writer done", "reader in"]  # a reader never overlaps the writer


def test_loopback_detection() -> None:
    from convlens.web.server import browser_url

    assert browser_url("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert browser_url("::1", 8765) == "http://[::1]:8765/"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Replace the blocking ``serve`` with a recorder."""
    calls: list[dict[str, object]] = []

    def fake_serve(
        app: object, host: str, port: int, *, open_browser: bool = False, sock: object = None
    ) -> None:
        calls.append({"app": app, "host": host, "port": port, "open_browser": open_browser})
        assert isinstance(sock, socket.socket) and sock.getsockname()[1] == port

    monkeypatch.setattr("convlens.web.serve", fake_serve)
    return calls


def test_cli_serve_defaults_to_loopback(served: list[dict[str, object]], images_dir: Path) -> None:
    from convlens.cli import main

    args = ["serve", "-m", "tiny-vgg:input_size=32", "--images", str(images_dir), "--no-browser"]
    assert main(args) == 0
    (call,) = served
    assert (call["host"], call["port"], call["open_browser"]) == ("127.0.0.1", 8765, False)
    app = call["app"]
    assert isinstance(app, FastAPI)
    with TestClient(app, base_url=LOCAL) as c:
        assert len(c.get("/api/v1/model").json()["samples"]) == 2


def test_cli_serve_bad_options(served: list[dict[str, object]], tmp_path: Path) -> None:
    from convlens.cli import main

    assert main(["serve", "-m", "tiny-vgg", "--images", str(tmp_path / "none")]) == 2
    assert main(["serve", "-m", "tiny-vgg", "--port", "70000"]) == 2
    assert main(["serve", "-m", "tiny-vgg", "--max-upload-mb", "-1"]) == 2
    assert served == []


def test_cli_demo_serves_and_opens_the_browser(
    served: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    from convlens.cli import main

    assert main(["demo", "-m", "tiny-vgg:input_size=32"]) == 0
    assert served[0]["open_browser"] is True
    assert "conv_1_1" in capsys.readouterr().out  # the summary is still printed
    assert main(["demo", "-m", "tiny-vgg:input_size=32", "--no-browser"]) == 0
    assert served[1]["open_browser"] is False


def test_cli_demo_without_the_web_extra(
    served: list[dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from convlens.cli import main

    monkeypatch.setattr("convlens.cli.demo.web_available", lambda: False)
    assert main(["demo", "-m", "tiny-vgg:input_size=32"]) == 0
    out = capsys.readouterr().out
    assert "conv_1_1" in out and "convlens[web]" in out
    assert served == []


def test_serving_beyond_loopback_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model: Model
) -> None:
    import uvicorn

    import convlens.web.server as server
    from convlens.web.server import serve

    runs: list[tuple[str, int]] = []
    # No real bind to 0.0.0.0 in a test: an unbound socket stands in for the listener.
    monkeypatch.setattr(server, "listen_socket", lambda host, port: socket.socket())
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    monkeypatch.setattr(
        uvicorn.Server,
        "run",
        lambda self, sockets: runs.append((self.config.host, self.config.port)),
    )
    serve(create_app(model), "127.0.0.1", 9001)
    assert "warning" not in capsys.readouterr().out
    serve(create_app(model), "0.0.0.0", 9002)
    assert "warning" in capsys.readouterr().out
    assert runs == [("127.0.0.1", 9001), ("0.0.0.0", 9002)]


@pytest.mark.slow
def test_convlens_serve_end_to_end(images_dir: Path) -> None:
    """The real command in its own process: it binds loopback and answers."""
    import subprocess
    import sys

    port = free_port()
    args = [sys.executable, "-m", "convlens", "serve", "-m", "tiny-vgg:input_size=32"]
    args += ["--images", str(images_dir), "--port", str(port), "--no-browser"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/model", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "convlens serve did not start"
                time.sleep(0.2)
        assert r.status_code == 200 and len(r.json()["samples"]) == 2
        trace = httpx.get(f"http://127.0.0.1:{port}/api/v1/trace?image=sample-1", timeout=30)
        assert trace.json()["image_id"] == "sample-1"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"http://127.0.0.1:{port}/" in out


def test_no_route_function_is_over_60_lines() -> None:
    """Routes do HTTP work only; the documents are built in convlens.trace."""
    import ast
    import inspect

    from convlens.web import api

    tree = ast.parse(inspect.getsource(api))
    routes = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(
            isinstance(d, ast.Call)
            and isinstance(d.func, ast.Attribute)
            and d.func.attr in ("get", "post", "api_route")
            for d in node.decorator_list
        )
    ]
    assert len(routes) >= 8
    lengths = {r.name: (r.end_lineno or r.lineno) - r.lineno + 1 for r in routes}
    assert max(lengths.values()) <= 60, lengths


def test_quantized_trace_and_exact_channel(client: TestClient) -> None:
    plain = client.get("/api/v1/trace", params={"image": "sample-0"})
    exact = plain.json()
    r = client.get("/api/v1/trace", params={"image": "sample-0", "encoding": "uint8"})
    assert r.status_code == 200 and len(r.content) < 0.5 * len(plain.content)
    small = r.json()
    conv = decode_tensor(exact["activations"]["conv_1_1"])  # (10, 30, 30), uncapped here
    approx = decode_tensor(small["activations"]["conv_1_1"])
    step = np.asarray(small["activations"]["conv_1_1"]["scale"])[:, None, None]
    assert (np.abs(approx - conv) <= step / 2 + 1e-6).all()
    assert small["logits"] == exact["logits"]
    doc = client.get("/api/v1/activations/conv_1_1/3", params={"image": "sample-0"}).json()
    np.testing.assert_array_equal(decode_tensor(doc["map"]), conv[3])
    assert (doc["layer"], doc["channel"], doc["image_id"]) == ("conv_1_1", 3, "sample-0")
    bad = {
        "/api/v1/activations/conv_1_1/99?image=sample-0": 400,
        "/api/v1/activations/output/0?image=sample-0": 400,  # a vector has no maps
        "/api/v1/activations/conv_9/0?image=sample-0": 404,
        "/api/v1/activations/conv_1_1/0?image=nope": 404,
        "/api/v1/activations/conv_1_1/x?image=sample-0": 422,
        "/api/v1/trace?image=sample-0&encoding=int4": 422,
    }
    for url, status in bad.items():
        assert client.get(url).status_code == status, url
