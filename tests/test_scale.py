"""Scans and code maps on Ray: the same results as the local engine, through worker and driver
faults, and one-line errors for what cannot work.

One local Ray (3 CPUs) serves the whole module: Ray's start-up and each scan's worker start-up
(a fresh Python importing torch) cost seconds, so the tests are few and reuse it. The workers
import this module (for the fault-injecting data sets below) and the very convlens under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convlens
from convlens.analysis.embed import read_codes
from convlens.analysis.scan import ScanResult, scan
from convlens.cli import main
from convlens.data import FolderImages, ImageDataset
from convlens.errors import ConvlensError
from convlens.model import Model, build, load_model
from convlens.model.checkpoint import save_checkpoint

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from convlens.analysis.ray_engine import (  # noqa: E402
    check_address,
    decode_state,
    encode_state,
    ray_read_codes,
    ray_scan,
    tree_merge,
)
from convlens.analysis.state import map_batch, merge_states  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

LAYERS = ["relu_1_1", "relu_2_2"]
K, BATCH = 6, 8
SRC = str(Path(convlens.__file__).resolve().parents[1])
TESTS = str(Path(__file__).resolve().parent)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray for the module; its address lets a second driver (a subprocess) join."""
    path = os.pathsep.join([SRC, TESTS])
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})  # fmt: skip
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint of a seeded Tiny VGG and a folder of 76 PNGs in two classes: seeded noise,
    two black images (every unit ties at its bias there) and one file that is not an image."""
    root = tmp_path_factory.mktemp("scale")
    model = build("tiny-vgg:input_size=32", ["a", "b"], seed=0, num_classes=2)
    save_checkpoint(model, root / "model")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "data" / c).mkdir(parents=True)
        for i in range(38):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            if i in (5, 30) and c == "a":
                pixels[:] = 0
            Image.fromarray(pixels).save(root / "data" / c / f"{i:02d}.png")
    (root / "data" / "b" / "17.png").write_bytes(b"not an image at all")
    return {"model": root / "model", "data": root / "data", "root": root}


@pytest.fixture(scope="module")
def local(files: dict[str, Path]) -> ScanResult:
    """The reference: the in-process engine's scan."""
    model = load_model(files["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable file
        return scan(model, folder(files, model), LAYERS, k=K, batch_size=BATCH, progress=False)


def folder(files: dict[str, Path], model: Model) -> FolderImages:
    return FolderImages(files["data"], "all", shape=model.spec.shape)


def assert_same_scan(got: ScanResult, want: ScanResult) -> None:
    """Top-k hits identical; statistics equal to float64 rounding (shard sums in another order)."""
    assert got.meta.complete and got.meta.images_done == want.meta.images_done
    assert got.meta.skipped == want.meta.skipped and len(want.meta.skipped) == 1
    for name in LAYERS:
        a, b = got.state[name], want.state[name]
        assert a.n_images == b.n_images == 75
        for key in ("values", "images", "positions", "maximum", "positive", "fired"):
            assert torch.equal(getattr(a, key), getattr(b, key)), (name, key)
        for key in ("total", "total_sq"):
            torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=1e-13, atol=0)


# --------------------------------------------------------------------------- fault injection
# Module-level classes: Ray pickles them by reference and the workers import this module.


class Wrapped(ImageDataset):
    """A data set that delegates to another, for the fault injectors below."""

    def __init__(self, inner: FolderImages) -> None:
        self.inner = inner
        self.name, self.classes, self.shape = inner.name, inner.classes, inner.shape

    def __len__(self) -> int:
        return len(self.inner)

    def path(self, index: int) -> Path:
        return self.inner.path(index)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.get(indices)


class KillOnce(Wrapped):
    """Kills the worker process reading image 40, the first time only (``marker`` says)."""

    def __init__(self, inner: FolderImages, marker: Path) -> None:
        super().__init__(inner)
        self.marker = marker

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if 40 in indices and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().get(indices)


class Slow(Wrapped):
    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.25)
        return super().get(indices)


class OpenFolder:
    """Opens the fixture folder on a worker, optionally wrapped (a picklable factory)."""

    def __init__(self, root: Path, wrap: str = "", marker: Path | None = None) -> None:
        self.root, self.wrap, self.marker = root, wrap, marker

    def __call__(self, model: Model) -> ImageDataset:
        data = FolderImages(self.root, "all", shape=model.spec.shape)
        if self.wrap == "kill":
            assert self.marker is not None
            return KillOnce(data, self.marker)
        return Slow(data) if self.wrap == "slow" else data


# --------------------------------------------------------------------------- tests


def test_cli_ray_scan_equals_local_scan(
    cluster: str, files: dict[str, Path], local: ScanResult, tmp_path: Path
) -> None:
    """`convlens scan --engine ray` (two workers reading the folder themselves) gives the local
    scan's hits exactly, its statistics to float64 rounding, and crops patches after."""
    out = tmp_path / "scan"
    argv = ["scan", str(files["model"]), "--dataset", str(files["data"]), "--split", "all",
            "--layers", ",".join(LAYERS), "-k", str(K), "--batch-size", str(BATCH),
            "--engine", "ray", "--workers", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert_same_scan(ScanResult.load(out), local)
    assert len(list((out / "patches").rglob("*.png"))) > 0


def test_worker_killed_mid_scan_changes_nothing(
    cluster: str, files: dict[str, Path], local: ScanResult, tmp_path: Path
) -> None:
    marker = tmp_path / "killed"
    model = load_model(files["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ray_scan(model, folder(files, model), LAYERS, k=K, batch_size=BATCH,
                       progress=False, workers=2,
                       open_data=OpenFolder(files["data"], "kill", marker))  # fmt: skip
    assert marker.exists()  # a worker really died
    assert_same_scan(got, local)


DRIVER = """
import os, sys, warnings
from pathlib import Path
import ray
import test_scale as t
from convlens.analysis.ray_engine import ray_scan
from convlens.model import load_model
address, model_dir, data, out = sys.argv[1:]
ray.init(address=address, log_to_driver=False, configure_logging=False,
         runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
m = load_model(model_dir)
warnings.simplefilter("ignore")
ray_scan(m, t.FolderImages(data, "all", shape=m.spec.shape), t.LAYERS, k=t.K,
         batch_size=t.BATCH, out=out, save_every=0, progress=False, address=address,
         workers=1, open_data=t.OpenFolder(Path(data), "slow"))
"""


def test_driver_killed_mid_scan_resumes(
    cluster: str, files: dict[str, Path], local: ScanResult, tmp_path: Path
) -> None:
    """A driver SIGKILLed mid-scan leaves resumable progress; resuming gives the same scan."""
    out = tmp_path / "scan"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, cluster, str(files["model"]), str(files["data"]),
         str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "scan.json").exists():
                done = json.loads((out / "scan.json").read_text())["images_done"]
                if done > 0:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    meta = json.loads((out / "scan.json").read_text())
    assert 0 < meta["images_done"] < 76 and not meta["complete"]
    model = load_model(files["model"])
    seen: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ray_scan(model, folder(files, model), LAYERS, k=K, batch_size=BATCH, out=out,
                       resume=True, progress=lambda d, _t: seen.append(d), workers=2)  # fmt: skip
    assert seen and min(seen) > meta["images_done"]  # it went on from the saved prefix
    assert_same_scan(got, local)
    assert_same_scan(ScanResult.load(out), local)


def test_ray_codes_equal_local_codes(cluster: str, files: dict[str, Path]) -> None:
    model = load_model(files["model"])
    data = folder(files, model)
    indices = list(range(1, 76, 2))  # 55 is the unreadable file
    want = read_codes(model, data, indices, "relu_2_2", "mean", batch_size=BATCH)
    got = ray_read_codes(model, data, indices, "relu_2_2", "mean", batch_size=BATCH, workers=1)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
    for a, b in zip(got[1:3], want[1:3], strict=True):
        assert torch.equal(a, b)
    assert got[3] == want[3] and len(want[3]) == 1


def test_worker_that_cannot_read_the_data_is_a_one_line_error(
    cluster: str, files: dict[str, Path]
) -> None:
    model = load_model(files["model"])
    t0 = time.monotonic()
    with pytest.raises(ConvlensError, match=r"a Ray worker failed: image folder .* not exist"):
        ray_scan(model, folder(files, model), LAYERS, k=K, batch_size=BATCH, progress=False,
                 workers=1, open_data=OpenFolder(files["root"] / "elsewhere"))  # fmt: skip
    assert time.monotonic() - t0 < 60


def test_bad_addresses_and_devices_are_fast_one_line_errors(
    cluster: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["scan", str(files["model"]), "--dataset", str(files["data"]), "--split", "all",
            "--engine", "ray", "--out", str(tmp_path / "scan")]  # fmt: skip
    t0 = time.monotonic()
    assert main([*base, "--address", "127.0.0.1:9"]) == 2  # nothing listens on port 9
    err = capsys.readouterr().err.strip()
    assert "cannot reach a Ray cluster at '127.0.0.1:9'" in err and "\n" not in err
    with pytest.raises(ConvlensError, match=r"cannot reach|no Ray cluster answers"):
        check_address("10.255.255.1:6379", timeout=0.5)  # unroutable (or a proxy): no hang
    assert main([*base, "--address", "not an address"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert time.monotonic() - t0 < 10
    if torch.cuda.is_available():
        return  # the refusals below need a machine without CUDA
    for engine in ("ray", "local"):
        assert main([*base[:-4], "--engine", engine, "--out", str(tmp_path / engine),
                     "--device", "cuda"]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "cuda" in err and ("no CUDA" in err or "has none" in err)


def test_state_transfer_and_tree_merge_match_a_sequential_fold() -> None:
    """Shard states survive the safetensors round trip bit for bit, and the tree merge of 37
    of them (three levels at fan-in 4) equals a left fold of :func:`merge_states`."""
    g = torch.Generator().manual_seed(1)
    parts = []
    for i in range(37):
        acts = torch.randn(5, 6, 3, 3, generator=g).relu()  # many exact zeros: ties
        parts.append({"a": map_batch(acts, torch.arange(5) + 5 * i, 7),
                      "v": map_batch(acts.flatten(1), torch.arange(5) + 5 * i, 7)})  # fmt: skip
    shipped = [decode_state(encode_state(p)) for p in parts]
    for p, q in zip(parts, shipped, strict=True):
        for name in p:
            assert p[name].grid == q[name].grid and p[name].n_images == q[name].n_images
            for key, t in p[name].tensors().items():
                assert torch.equal(t, q[name].tensors()[key])
    fold = parts[0]
    for p in parts[1:]:
        fold = merge_states(fold, p)
    tree = tree_merge(shipped, fanin=4)
    for name in fold:
        for key in ("values", "images", "positions", "maximum", "positive", "fired"):
            assert torch.equal(getattr(tree[name], key), getattr(fold[name], key))
        torch.testing.assert_close(tree[name].total, fold[name].total, rtol=1e-13, atol=0)
        assert tree[name].n_images == 185
