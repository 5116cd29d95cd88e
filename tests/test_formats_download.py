"""The cnn-explainer download: checksums, cache, atomic writes, offline message (local server)."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from convlens.cli import main
from convlens.errors import ConvlensError
from convlens.model import load_model
from convlens.model.formats.download import CNN_EXPLAINER_CLASSES, CNN_EXPLAINER_FILES, fetch

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """The published layout: data/model.json, data/group1-shard1of1.bin, img/*.jpeg."""
    if not (FIXTURE / "model.json").is_file():
        pytest.skip("CNN Explainer fixture not found")
    root = tmp_path / "www"
    for f in CNN_EXPLAINER_FILES:
        target = root / f.url_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURE / f.local, target)
    return root


@pytest.fixture
def server(mirror: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(mirror))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CONVLENS_CACHE", str(root))
    return root / "models" / "cnn-explainer"


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_download_once_then_cache(
    server: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVLENS_CNN_EXPLAINER_URL", server)
    model = load_model("cnn-explainer", download=True)
    assert model.classes == CNN_EXPLAINER_CLASSES and model.name == "cnn-explainer"
    assert model.spec.shape == (3, 64, 64)
    assert len(model.samples) == 20 and all(s.label is not None for s in model.samples)
    assert (cache / "model.json").read_bytes() == (FIXTURE / "model.json").read_bytes()
    assert not list(cache.rglob("*.tmp"))
    # Offline now: the cache is enough, with or without download=True.
    monkeypatch.setenv("CONVLENS_CNN_EXPLAINER_URL", _closed_port_url())
    assert load_model("cnn-explainer").classes == CNN_EXPLAINER_CLASSES


def test_not_cached_without_download_says_what_to_do(cache: Path) -> None:
    with pytest.raises(ConvlensError, match=r"download=True.*--model"):
        load_model("cnn-explainer")


def test_offline_says_how_to_use_local_files(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLENS_CNN_EXPLAINER_URL", _closed_port_url())
    with pytest.raises(ConvlensError, match=r"offline.*--model path/to/model.json"):
        load_model("cnn-explainer", download=True)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_checksum_mismatch_keeps_nothing(server: str, mirror: Path, tmp_path: Path) -> None:
    (mirror / "data" / "model.json").write_text('{"tampered": true}')
    spec = CNN_EXPLAINER_FILES[0]
    target = tmp_path / "out" / "model.json"
    with pytest.raises(ConvlensError, match="SHA-256"):
        fetch(f"{server}/{spec.url_path}", target, spec.sha256)
    assert not target.exists() and not list(target.parent.glob("*"))


def test_cli_demo_fetches_cnn_explainer(
    server: str, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONVLENS_CNN_EXPLAINER_URL", server)
    assert main(["demo", "--model", "cnn-explainer", "--no-server"]) == 0
    out = capsys.readouterr().out
    assert "cnn-explainer" in out and "lifeboat" in out and "boat_1.jpeg" in out
