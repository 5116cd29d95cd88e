"""``convlens explain FOLDER``: every readable image explained, an index that links them, bad
files skipped with a summary; ``--approx`` for occlusion."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from convlens.cli import main
from convlens.io.image import tensor_to_image

MODEL = "tiny-vgg:input_size=32"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if (tag, key) in (("a", "href"), ("img", "src")) and value:
                self.links.append(value)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pics"
    (root / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for rel in ("a.png", "b <i>.png", "sub/c.jpg"):
        tensor_to_image(torch.rand(3, 40, 48, generator=g)).save(root / rel)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a bad image
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def test_folder_gives_one_figure_per_image_an_index_and_a_speed_line(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["explain", str(folder), "-m", MODEL, "--method", "saliency,grad-cam,occlusion",
            "-p", "window=8", "-p", "stride=8", "-b", "2", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = " ".join(capsys.readouterr().out.split())
    figures = sorted(p.name for p in out.glob("*.explain.png"))
    assert figures == ["a.png.explain.png", "b <i>.png.explain.png", "sub__c.jpg.explain.png"]
    with Image.open(out / "a.png.explain.png") as fig:
        assert fig.width > 4 * 160  # the input and three method panels side by side
    # the speed, next to one forward + backward per image, and the skipped file by name
    assert re.search(r"explained 3 image\(s\) in [\d.]+ s: [\d.]+ images/s", text)
    assert re.search(r"one forward \+ backward: [\d.]+ images/s", text)
    assert "skipped 1 unreadable image(s): broken.png (" in text
    page = (out / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert len(parser.links) == 6  # a figure link and a thumbnail per image
    for link in parser.links:
        assert (out / link).is_file(), link
    assert "b &lt;i&gt;.png" in page and "<i>" not in page  # names are escaped
    assert "broken.png" in page
    assert not list(out.glob(".*")) and not list(tmp_path.glob(".out.*"))  # no staging left


def test_folder_of_only_bad_images_and_mixed_arguments_fail_cleanly(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    out = tmp_path / "o"
    assert main(["explain", str(bad), "-m", MODEL, "--method", "saliency", "-o", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "none of the 1 images" in err and "skipped 1 unreadable image(s): x.png" in err
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["explain", str(empty), "-m", MODEL, "-o", str(out)]) == 2
    assert "no images under" in capsys.readouterr().err
    assert main(["explain", str(folder), str(folder / "a.png"), "-m", MODEL]) == 2
    assert "either one folder or image files" in capsys.readouterr().err


def test_approx_flag_reaches_occlusion_and_is_checked(
    folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    img = str(folder / "a.png")
    base = ["explain", img, "-m", MODEL, "-o", str(tmp_path / "o"), "-p", "window=8",
            "-p", "stride=4"]  # fmt: skip
    assert main([*base, "--method", "occlusion", "--approx", "--approx-tau", "0.5"]) == 0
    assert "approximate: τ=0.5" in capsys.readouterr().out
    assert main([*base, "--method", "occlusion"]) == 0
    assert "approximate" not in capsys.readouterr().out
    assert main([*base[:-4], "--method", "saliency", "--approx"]) == 2
    assert "apply to occlusion" in capsys.readouterr().err
    assert main([*base, "--method", "occlusion", "--approx", "--approx-tau", "2"]) == 2
    assert "tau" in capsys.readouterr().err
    assert main([*base, "--method", "occlusion", "--approx-tau", "0.5"]) == 2
    assert "add --approx" in capsys.readouterr().err
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: the phrase is not wrapped
    assert main(["explain", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "correlation of at least 0.7" in help_text and "--approx-tau" in help_text
