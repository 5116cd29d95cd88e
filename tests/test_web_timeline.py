"""The web explainer's training timeline: the API against the run's own files, its errors,
and the slider in a real headless Chromium (Playwright, Debian's chromium)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.model import Model, build, load_model
from convlens.train import TrainConfig, train
from convlens.train.timeline import filter_grid
from convlens.train.watch import Watch, frame_file, read_frame, read_index, timeline_dir

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from convlens.web.server import create_app
from web_harness import CHROMIUM, LiveServer, free_port, launch_chromium

ARCH = "tiny-vgg:in_channels=1,input_size=16,width=4,num_classes=4"
CLASSES = ["dark", "left", "right", "top"]
LOCAL = "http://127.0.0.1"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "web"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 16, 16, generator=g) * 0.3
    y = torch.arange(48) % 4
    x[y == 1, :, :, :8] += 0.6
    x[y == 2, :, :, 8:] += 0.6
    x[y == 3, :, :8, :] += 0.6
    from convlens.data import TensorImages

    data = TensorImages(x.clamp(0, 1), y, CLASSES)
    out = tmp_path_factory.mktemp("served") / "run"
    train(build(ARCH, CLASSES, seed=0), data, data, out,
          TrainConfig(epochs=2, batch_size=8, lr=0.02), watch=Watch(every=2))  # fmt: skip
    return out


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_timeline_api_matches_the_run(run: Path) -> None:
    index = read_index(run)
    with TestClient(create_app(load_model(str(run)), run_dir=run), base_url=LOCAL) as c:
        doc = c.get("/api/v1/timeline").json()
        assert doc["available"] and doc["every"] == 2 and doc["layers"] == list(index.plan.show)
        assert [f["step"] for f in doc["frames"]] == [f.step for f in index.frames]
        assert [f["dead"] for f in doc["frames"]] == [f.dead for f in index.frames]
        frame = c.get("/api/v1/timeline/frames/3").json()
        t = read_frame(run, index, 3)
        assert frame["step"] == index.frames[3].step
        assert frame["dead"] == {n: t[f"dead/{n}"].nonzero().flatten().tolist()
                                 for n in index.plan.dead}  # fmt: skip
        # the filters picture is the grid of that frame's weights (upscaled)
        grid = np.asarray(filter_grid(t["filters"], cell=28))
        shown = decode(frame["filters"])
        f = shown.shape[0] // grid.shape[0]
        assert np.array_equal(shown[::f, ::f], grid)
        assert [a["layer"] for a in frame["activations"]] == list(index.plan.show)

        n = len(index.frames)
        for path, status, words in [
            (f"/api/v1/timeline/frames/{n}", 404, f"this timeline has {n} frames"),
            ("/api/v1/timeline/frames/-1", 422, "greater than or equal to 0"),
            ("/api/v1/timeline/frames/one", 422, "valid integer"),
            ("/api/v1/timeline/frames/1e9", 422, "valid integer"),
        ]:
            r = c.get(path)
            assert r.status_code == status and words in r.json()["error"], (path, r.text)
        frame_path = frame_file(timeline_dir(run), index.frames[1].step)
        good = frame_path.read_bytes()
        try:
            frame_path.write_bytes(good[:40])  # a truncated frame file: a clear 400, not a 500
            r = c.get("/api/v1/timeline/frames/1")
            assert r.status_code == 400 and "safetensors" in r.json()["error"]
        finally:
            frame_path.write_bytes(good)


def test_no_timeline_is_reported_not_an_error(tiny_vgg: Model) -> None:
    with TestClient(create_app(tiny_vgg), base_url=LOCAL) as c:
        doc = c.get("/api/v1/timeline").json()
        assert doc["available"] is False and "not a training run" in doc["reason"]
        r = c.get("/api/v1/timeline/frames/0")
        assert r.status_code == 404 and "not a training run" in r.json()["error"]


# ------------------------------------------------------------------ in the browser


@pytest.mark.browser
def test_slider_changes_the_pictures(run: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("uvicorn")
    server = LiveServer.explainer(load_model(str(run)), run_dir=run)
    try:
        with sync_api.sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url)
            slider = page.locator("#timeline-slider")
            slider.wait_for(state="visible", timeout=20_000)
            n = len(read_index(run).frames)
            assert slider.get_attribute("max") == str(n - 1)
            page.wait_for_function("document.getElementById('timeline-panel').dataset.frame")
            last_src = page.get_attribute("#timeline-filters", "src")
            last_label = page.inner_text("#timeline-label")
            assert last_label.startswith("step 12")
            slider.fill("0")  # sets the value and fires 'input'
            page.wait_for_function(
                "document.getElementById('timeline-panel').dataset.frame === '0'"
            )
            assert "step 0" in page.inner_text("#timeline-label")
            first_src = page.get_attribute("#timeline-filters", "src")
            assert first_src and last_src and first_src != last_src
            assert not np.array_equal(decode(first_src), decode(last_src))
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.locator("#timeline-panel").scroll_into_view_if_needed()
            page.locator("#timeline-panel").screenshot(path=str(ARTIFACTS / "timeline.png"))
            assert not errors, errors
            browser.close()
    finally:
        server.stop()


def test_serve_passes_a_run_folder_to_the_app(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convlens.cli import main
    from convlens.cli import serve as serve_cli

    seen: list[object] = []
    monkeypatch.setattr(serve_cli, "run_server", lambda model, **kw: seen.append(kw["run_dir"]))
    port = str(free_port())
    assert main(["serve", "--model", str(run), "--no-browser", "--port", port]) == 0
    assert main(["serve", "--model", "tiny-vgg", "--no-browser", "--port", port]) == 0
    assert seen == [str(run), None]
