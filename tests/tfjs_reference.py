"""TF.js itself as the reference for the TF.js readers' tests.

When ``node`` and ``tests/js/node_modules`` (``npm ci --prefix tests/js``) are present, the
reference outputs are computed by TensorFlow.js in node (``tests/js/predict.js``: TF.js's own
``loadGraphModel``/``loadLayersModel`` and ``predict``), cached under ``tests/.cache/tfjs``
(or ``$CONVLENS_TEST_CACHE/tfjs``) by a hash of the model files and inputs. Otherwise the tests
compare with ``tests/fixtures/tfjs/<name>.reference.npz``, outputs that TF.js produced when
the fixtures were made; with node present the live outputs are also checked against those.

Regenerate the committed references (needs node and the npm packages)::

    PYTHONPATH=src python tests/tfjs_reference.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures" / "tfjs"
JS = TESTS / "js"
TFJS_PACKAGE = JS / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
BATCH = 2


def node_ready() -> bool:
    """Whether TF.js can run here: ``node`` on the path and the npm packages installed."""
    return shutil.which("node") is not None and TFJS_PACKAGE.is_file()


def why_no_node() -> str:
    if shutil.which("node") is None:
        return "node is not installed"
    return f"TF.js is not installed (run `npm ci --prefix {JS}`)"


def cache_dir() -> Path:
    root = os.environ.get("CONVLENS_TEST_CACHE")
    path = (Path(root) if root else TESTS / ".cache") / "tfjs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sample_inputs(name: str, hwc: tuple[int, int, int]) -> np.ndarray:
    """Two fixed NHWC images in [0, 1) for the fixture ``name`` (seeded by its name)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return rng.random((BATCH, *hwc), dtype=np.float32)


def _digest(source: Path, x: np.ndarray) -> str:
    """A hash of the model file, its shards and the inputs (the cache key)."""
    import json

    file = source if source.suffix == ".json" else source / "model.json"
    h = hashlib.sha256(x.tobytes())
    h.update(file.read_bytes())
    for group in json.loads(file.read_text())["weightsManifest"]:
        for rel in group["paths"]:
            h.update((file.parent / rel).read_bytes())
    return h.hexdigest()[:24]


def run_tfjs(folder: Path, x: np.ndarray, timeout: float = 120) -> np.ndarray:
    """TF.js's output for NHWC ``x`` on the model in ``folder`` (or a model .json; cached)."""
    cached = cache_dir() / f"{folder.stem}-{_digest(folder, x)}.npy"
    if cached.is_file():
        return np.load(cached, allow_pickle=False)
    work = cache_dir() / f"{folder.stem}-{os.getpid()}"
    inp, out = work.with_suffix(".in.bin"), work.with_suffix(".out.bin")
    x.astype("<f4").tofile(inp)
    shape = ",".join(str(d) for d in x.shape)
    try:
        proc = subprocess.run(
            ["node", str(JS / "predict.js"), str(folder), str(inp), shape, str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"TF.js failed on {folder}: {proc.stderr.strip()[-2000:]}")
        y = np.fromfile(out, "<f4").reshape(x.shape[0], -1)
    finally:
        inp.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    np.save(cached, y)
    return y


def committed(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = FIXTURES / f"{name}.reference.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["x"], z["y"]


def reference(folder: Path, hwc: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, str]:
    """``(x, y, source)``: fixed inputs, TF.js's outputs, and where they came from."""
    x = sample_inputs(folder.name, hwc)
    saved = committed(folder.name)
    if node_ready():
        y = run_tfjs(folder, x)
        if saved is not None:  # the committed file must still be what TF.js computes
            np.testing.assert_array_equal(saved[0], x)
            np.testing.assert_allclose(saved[1], y, atol=1e-6, rtol=0)
        return x, y, "TF.js in node"
    if saved is None:
        raise FileNotFoundError(f"no committed TF.js reference for {folder.name}")
    np.testing.assert_array_equal(saved[0], x)
    return x, saved[1], "committed TF.js output"


def write_committed() -> None:
    """Recompute every fixture's reference with TF.js and commit-ready ``.npz`` files."""
    import json

    for folder in sorted(p for p in FIXTURES.iterdir() if (p / "model.json").is_file()):
        doc = json.loads((folder / "model.json").read_text())
        hwc = input_hwc(doc)
        x = sample_inputs(folder.name, hwc)
        y = run_tfjs(folder, x)
        np.savez(FIXTURES / f"{folder.name}.reference.npz", x=x, y=y)
        print(f"{folder.name}: input {x.shape}, output {y.shape}")


def input_hwc(doc: dict) -> tuple[int, int, int]:
    """The fixed (H, W, C) input of a fixture's model.json (graph or layers model)."""
    if doc.get("format") == "graph-model":
        sig = doc["signature"]["inputs"]
        dims = next(iter(sig.values()))["tensorShape"]["dim"]
        h, w, c = (int(d["size"]) for d in dims[1:])
        return h, w, c
    topology = doc["modelTopology"]
    cfg = topology.get("model_config", topology)["config"]
    first = cfg["layers"][0]["config"]
    shape = first.get("batch_input_shape") or first.get("batch_shape")
    h, w, c = shape[1:]
    return int(h), int(w), int(c)


if __name__ == "__main__":
    write_committed()
