"""Every command, fed hostile values: one line naming what is accepted, exit 2, no traceback.

Also the faults a command must survive: a full disk (a real 64 KiB-class tmpfs when the
tests run as root, a simulated ENOSPC everywhere), a read-only folder, a busy port; and the
promise that a failed command changes nothing on disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli import main
from convlens.model import Model
from convlens.model.checkpoint import save_checkpoint

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "convlens" / "model" / "demo" / "samples"


@pytest.fixture(scope="module")
def image() -> str:
    found = sorted(SAMPLES.glob("*.png"))
    if not found:
        pytest.skip("demo samples missing")
    return str(found[0])


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, str]:
    """Paths that are not what a command expects: missing, a folder, a FIFO, an empty file."""
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "a-folder.png"
    folder.mkdir()
    afile = tmp_path / "a-file"
    afile.write_text("x")
    return {"FIFO": str(fifo), "EMPTY": str(empty), "DIR": str(folder), "FILE": str(afile),
            "MISSING": str(tmp_path / "missing.png"), "OUT": str(tmp_path / "out")}  # fmt: skip


def run_hostile(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; it must fail with exit 2 and exactly one line on stderr."""
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (argv, code, captured.err[-2000:])
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert err.startswith("error: ") and "\n" not in err, (argv, captured.err)
    return err


# (argv, a fragment the message must contain). IMG / FIFO / DIR / ... are filled in per test.
CASES: list[tuple[list[str], str]] = [
    # model flags, shared by every command that opens a model (issue #11: --std nan was taken)
    (["summary", "demo", "--std", "nan"], "--std takes 1 or 3 finite numbers in [1e-06, 1000]"),
    (["summary", "demo", "--std", "inf"], "finite numbers"),
    (["summary", "demo", "--std", "0"], "[1e-06, 1000]"),
    (["summary", "demo", "--std", "-1"], "[1e-06, 1000]"),
    (["summary", "demo", "--std", ""], "finite numbers"),
    (["summary", "demo", "--mean", "nan,0,0"], "--mean takes"),
    (["summary", "demo", "--mean", "1e309"], "--mean takes"),
    (["summary", "demo", "--input-size", "100000"], "1..4096"),
    (["summary", "demo", "--input-size", "²"], "1..4096"),
    (["summary", "demo", "--input-size", "0"], "1..4096"),
    (["summary", "demo", "--input-size", ""], "1..4096"),
    (["summary", "demo", "--input-size", "-5"], "1..4096"),
    (["summary", "demo", "--channels", "7"], "1 (gray) or 3 (RGB)"),
    (["summary", "demo", "--channels", "²"], "--channels"),
    (["summary", "demo", "--classes", "FIFO"], "not a regular file"),
    (["summary", "demo", "--classes", "DIR"], "not a regular file"),
    (["summary", "demo", "--classes", "MISSING"], "does not exist"),
    (["summary", "MISSING"], "does not exist"),
    (["summary", "FIFO"], "not a regular file or folder"),
    (["summary", "FIFO", "--format", "onnx"], "not a regular file or folder"),
    (["summary", "FIFO", "--format", "keras"], "not a regular file or folder"),
    (["summary", "FIFO", "--format", "tfjs"], "not a regular file or folder"),
    (["summary", "FIFO", "--format", "torch-export"], "not a regular file or folder"),
    (["summary", "FIFO", "--format", "state-dict", "--arch", "tiny-vgg"], "regular file"),
    (["summary", "FILE", "--format", "checkpoint"], "model.json"),
    (["summary", ""], "model"),
    # explain
    (["explain", "IMG", "--target", "²", "-o", "OUT"], "unknown class '²'"),
    (["explain", "IMG", "--target", "-1", "-o", "OUT"], "out of range 0..9"),
    (["explain", "IMG", "--target", "99999999999999999999", "-o", "OUT"], "out of range"),
    (["explain", "FIFO", "-o", "OUT"], "does not exist or is not a file"),
    (["explain", "DIR", "-o", "OUT"], "no images under"),  # a folder: explain FOLDER mode
    (["explain", "EMPTY", "-o", "OUT"], "empty"),
    (["explain", "MISSING", "-o", "OUT"], "does not exist"),
    (["explain", "IMG", "--method", "smoothgrad", "-p", "noise=nan", "-o", "OUT"], "noise"),
    (
        ["explain", "IMG", "--method", "smoothgrad", "-p", "n_samples=1000000000", "-o", "OUT"],
        "n_samples must be a positive integer (1..",
    ),
    (["explain", "IMG", "--method", "occlusion", "-p", "window=-3", "-o", "OUT"], "1..4096"),
    (
        ["explain", "IMG", "--method", "integrated-gradients", "-p", "n_steps=2.5", "-o", "OUT"],
        "n_steps must be an integer in 2..",
    ),
    (["explain", "IMG", "-o", "FILE"], "not a folder"),
    (["explain", "IMG", "--method", ",", "-o", "OUT"], "no method"),
    # fool
    (["fool", "IMG", "--eps", "nan"], "--eps must be >= 0 and <= 1 (a linf budget"),
    (["fool", "IMG", "--eps", "inf"], ">= 0 and <= 1"),
    (["fool", "IMG", "--eps", "-0.1"], ">= 0 and <= 1"),
    (["fool", "IMG", "--norm", "l2", "--eps", "1e9"], "<= 1000"),
    (["fool", "IMG", "--steps", "0"], "1..10000"),
    (["fool", "IMG", "--steps", "10⁹"], "--steps"),
    (["fool", "IMG", "--norm", "l3"], "accepted: linf, l2"),
    (["fool", "IMG", "-o", "x.jpg"], "PNG"),
    (["fool", "IMG", "--target", "²"], "unknown class"),
    (["fool", "FIFO"], "not a file"),
    # invert, filters, visualize
    (["invert", "IMG", "-l", "conv_1_1", "-o", "OUT", "--steps", "-1"], "1..100000"),
    (["invert", "IMG", "-l", "conv_1_1", "-o", "OUT", "--tv", "nan"], "--tv"),
    (["invert", "IMG", "-l", "conv_1_1", "-o", "OUT", "--seed", "-1"], "--seed"),
    (["filters", "demo", "-l", "conv_1_1", "-o", "OUT", "--max-filters", "0"], "1..4096"),
    (["filters", "demo", "-l", "conv_1_1", "-o", "OUT", "--max-filters", "1000000000"], "1..4096"),
    (["filters", "demo", "-l", "nope", "-o", "OUT"], "nope"),
    (["visualize", "demo", "-l", "conv_1_1", "-o", "OUT", "--lr", "nan"], "--lr"),
    (["visualize", "demo", "-l", "conv_1_1", "-o", "OUT", "--steps", "0"], "--steps"),
    (["visualize", "demo", "-l", "conv_1_1", "-o", "OUT", "--copies", "100000"], "--copies"),
    (["visualize", "demo", "-l", "conv_1_1", "-o", "OUT", "--background", "-inf"], "[0, 1]"),
    (["visualize", "demo", "-l", "conv_1_1", "-o", "OUT", "--channels", "99"], "channel"),
    # data-set commands
    (["scan", "demo", "-d", "DIR", "-o", "OUT", "--top-k", "1000000000"], "1..10000"),
    (["scan", "demo", "-d", "DIR", "-o", "OUT", "--top-k", "0"], "1..10000"),
    (["scan", "demo", "-d", "DIR", "-o", "OUT", "--batch-size", "-4"], "1..4096"),
    (["scan", "demo", "-d", "MISSING", "-o", "OUT"], "MISSING"),
    (["report", "MISSING"], "no scan"),
    (["report", "DIR", "--rare", "nan"], "[0, 1]"),
    (["report", "DIR", "--top", "-1"], "--top"),
    (["map", "demo", "-d", "DIR", "-o", "OUT", "--n", "0"], "--n"),
    (["map", "demo", "-d", "DIR", "-o", "OUT", "--grid", "1000000"], "1..200"),
    (["map", "demo", "-d", "DIR", "-o", "OUT", "--jobs", "0"], "--jobs"),
    (["map", "demo", "-d", "DIR", "-o", "OUT", "--seed", "99999999999"], "--seed"),
    (["neighbors", "demo", "IMG", "-d", "DIR", "--k", "0"], "--k"),
    (["neighbors", "demo", "IMG", "-d", "DIR", "--metric", "manhattan"], "cosine, euclidean"),
    # training
    (["train", "-d", "DIR", "-o", "OUT", "--lr", "nan"], "--lr must be a number in (0, 10]"),
    (["train", "-d", "DIR", "-o", "OUT", "--epochs", "0"], "--epochs"),
    (["train", "-d", "DIR", "-o", "OUT", "--batch-size", "10000000"], "--batch-size"),
    (["train", "-d", "DIR", "-o", "OUT", "--momentum", "inf"], "--momentum"),
    (["train", "-d", "DIR", "-o", "OUT", "--threads", "0"], "--threads"),
    (["train", "-d", "DIR", "-o", "FILE"], "not a folder"),
    (["augment-preview", "-d", "DIR", "-o", "OUT", "--count", "0"], "--count"),
    (["augment-preview", "-d", "DIR", "-o", "OUT", "--jitter", "nan"], "--jitter"),
    (["augment-preview", "-d", "DIR", "-o", "x.gif"], "PNG"),
    # serving (issue #11: --max-upload-mb nan was a traceback)
    (["serve", "--max-upload-mb", "nan", "--no-browser"], "(0, 4096]"),
    (["serve", "--max-upload-mb", "0", "--no-browser"], "(0, 4096]"),
    (["serve", "--port", "0", "--no-browser"], "1..65535"),
    (["serve", "--port", "70000", "--no-browser"], "1..65535"),
    (["serve", "--host", "10.255.255.254", "--port", "18765", "--no-browser"], "cannot listen"),
    (["demo", "--port", "-1", "--no-browser"], "1..65535"),
    # the parser's own errors are one line too
    (["scan", "demo", "-d", "DIR", "-o", "OUT", "--top-k", "²"], "--top-k"),
    (["explain"], "Missing argument"),
    (["no-such-command"], "No such command"),
]


def _fill(argv: list[str], paths: dict[str, str], image: str) -> list[str]:
    table = paths | {"IMG": image}
    return [table.get(a, a) for a in argv]


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_hostile_value_is_one_line_exit_2(
    argv: list[str],
    fragment: str,
    hostile: dict[str, str],
    image: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # relative outputs (x.jpg) land here
    before = sorted(p.name for p in tmp_path.iterdir())
    err = run_hostile(_fill(argv, hostile, image), capsys)
    fragment = hostile.get(fragment, fragment)
    assert fragment in err, err
    # A refused command writes nothing: no output folder, no figure, no staging leftovers.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import convlens

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"convlens {convlens.__version__}"


# ------------------------------------------------------------------ --out: a folder or a file


@pytest.mark.parametrize("form", ["folder/", "existing-folder", "no-suffix", "fig.png"])
def test_out_accepts_a_folder_or_a_png_alike(
    form: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue #14: `--out DIR/` wrote a file named DIR; an existing folder was IsADirectoryError."""
    (tmp_path / "existing-folder").mkdir()
    out = tmp_path / form
    argv = ["filters", "demo", "-l", "conv_1_1", "--max-filters", "4", "-o", str(out)]
    argv[-1] += "/" if form.endswith("/") else ""
    assert main(argv) == 0, capsys.readouterr().err
    written = out if form.endswith(".png") else out / "filters-conv_1_1.png"
    assert written.is_file() and Image.open(written).format == "PNG"
    assert f"wrote {written}" in capsys.readouterr().out


# ------------------------------------------------------------------ a busy port


@contextlib.contextmanager
def _listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_busy_port_is_one_line_before_any_success_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """issue #11/#14: a busy port exited 3 after printing 'convlens explainer at ...'."""
    with _listening() as port:
        err = run_hostile(["serve", "--port", str(port), "--no-browser"], capsys)
        assert f"port {port} on 127.0.0.1 is already in use" in err


@pytest.mark.slow
def test_busy_port_as_a_process() -> None:
    with _listening() as port:
        proc = _convlens("serve", "--port", str(port), "--no-browser")
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "already in use" in proc.stderr


def _convlens(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "convlens", *args], capture_output=True,
                          text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "args", [("explain", "IMG", "--target", "²"), ("summary", "demo", "--input-size", "100000")]
)
def test_hostile_values_as_a_process(args: tuple[str, ...], image: str, tmp_path: Path) -> None:
    proc = _convlens(*[image if a == "IMG" else a for a in args], *(["-o", str(tmp_path / "o")]
                       if args[0] == "explain" else []))  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ")


# ------------------------------------------------------------------ full disk, read-only folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _explain(image: str, out: Path, method: str) -> list[str]:
    return ["explain", image, "--method", method, "-o", str(out)]


def test_simulated_full_disk_keeps_the_previous_set(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the third file of a set: one line, and the earlier set byte for byte."""
    out = tmp_path / "ex"
    assert main(_explain(image, out, "saliency")) == 0
    good = _tree(out)
    capsys.readouterr()
    import convlens.io.atomic as atomic

    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    second = SAMPLES / sorted(os.listdir(SAMPLES))[1]
    err = run_hostile(["explain", image, str(second), "--method", "grad-cam,saliency", "-o",
                       str(out)], capsys)  # fmt: skip
    assert "No space left on device" in err and "earlier outputs are unchanged" in err
    assert _tree(out) == good
    assert [p.name for p in tmp_path.iterdir()] == ["ex"]  # no staging folder left behind
    # A fresh folder that failed is not left behind empty (issue #14).
    calls.clear()
    run_hostile(["explain", image, str(second), "--method", "grad-cam,saliency", "-o",
                 str(tmp_path / "new" / "deeper")], capsys)  # fmt: skip
    assert not (tmp_path / "new").exists()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny file system (root only): what a full disk really does."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_disk(folder: Path) -> None:
    """Write a ballast file until the file system is full."""
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


@pytest.fixture
def data_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("left", "right")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            img = (rng.random((28, 28)) * 60).astype(np.uint8)
            img[8:20, 2 + 14 * c : 12 + 14 * c] = 230
            Image.fromarray(img).save(root / cls / f"{i}.png")
    return root


def test_real_full_disk(
    tmpfs: Path,
    image: str,
    data_folder: Path,
    tiny_vgg: Model,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a real full tmpfs: explain keeps its earlier set; an interrupted scan resumes, once
    space is freed, to exactly the state of a scan that never failed."""
    out = tmpfs / "ex"
    assert main(_explain(image, out, "saliency")) == 0
    good = _tree(out)
    _fill_disk(tmpfs)
    capsys.readouterr()
    err = run_hostile(_explain(image, out, "grad-cam,saliency,gradient-x-input"), capsys)
    assert "No space left on device" in err
    assert _tree(out) == good
    assert sorted(p.name for p in tmpfs.iterdir()) == ["ballast", "ex"]

    model = str(save_checkpoint(tiny_vgg, tmp_path / "model"))
    scan = ["scan", model, "-d", str(data_folder), "--split", "all", "--layers", "conv_1_1",
            "--top-k", "3", "--batch-size", "4"]  # fmt: skip
    assert main([*scan, "-o", str(tmp_path / "straight")]) == 0
    capsys.readouterr()
    run_hostile([*scan, "-o", str(tmpfs / "scan")], capsys)
    (tmpfs / "ballast").unlink()
    resumed = main([*scan, "-o", str(tmpfs / "scan"), "--resume"])
    assert resumed == 0, capsys.readouterr().err
    from convlens.analysis import load_scan

    meta_a, state_a = load_scan(tmp_path / "straight")
    meta_b, state_b = load_scan(tmpfs / "scan")
    assert meta_a.images_done == meta_b.images_done == 12
    for layer in state_a:
        for key, value in vars(state_a[layer]).items():
            other = vars(state_b[layer])[key]
            assert (value == other).all() if hasattr(value, "shape") else value == other, key


def test_read_only_folder(tmpfs: Path, image: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmpfs / "ex"
    assert main(_explain(image, out, "saliency")) == 0
    good = _tree(out)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    capsys.readouterr()
    err = run_hostile(_explain(image, out, "grad-cam"), capsys)
    assert "Read-only file system" in err or "not writable" in err or "permission" in err
    assert _tree(out) == good
    err = run_hostile(["filters", "demo", "-l", "conv_1_1", "-o", str(tmpfs / "f.png")], capsys)
    assert not (tmpfs / "f.png").exists()


# ------------------------------------------------------------------ kill -9, then --resume


def _popen_convlens(*args: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-m", "convlens", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def _training_folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(1)
    for c, cls in enumerate(("left", "right")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = (rng.random((28, 28)) * 80).astype(np.uint8)
            img[6:22, 1 + 13 * c : 14 + 13 * c] += 150
            Image.fromarray(img).save(root / cls / f"{i}.png")
    return root


@pytest.mark.slow
def test_kill_9_mid_training_resumes_bit_identically(tmp_path: Path) -> None:
    """SIGKILL (no handler runs) in the second epoch; --resume ends on the very same weights."""
    import torch
    from safetensors.torch import load_file

    from convlens.train.loop import STATE_FILE

    data = _training_folder(tmp_path / "data", 100)
    args = ["train", "-d", str(data), "--model", "tiny-vgg:width=4", "--epochs", "3",
            "--batch-size", "8", "--seed", "0", "--threads", "1"]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main([*args, "-o", str(tmp_path / "straight")]) == 0
    finally:
        torch.set_num_threads(threads)
    killed = tmp_path / "killed"
    proc = _popen_convlens(*args, "-o", str(killed))
    try:
        while not (killed / STATE_FILE).exists() and proc.poll() is None:
            time.sleep(0.005)
        proc.kill()  # SIGKILL: nothing is flushed, no handler runs
    finally:
        proc.wait(timeout=60)
    state = torch.load(killed / STATE_FILE, weights_only=True)
    assert state["progress"]["epoch"] < 3, "the run finished before it could be killed"
    try:
        assert main([*args, "-o", str(killed), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    a = load_file(tmp_path / "straight" / "weights.safetensors")
    b = load_file(killed / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
