"""docs/tutorial.ipynb runs top to bottom (short mode) and docs/tutorial.md matches it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from notebook_md import MAX_IMAGE_BYTES, execute, render, sources_in_order

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

DOCS = Path(__file__).resolve().parents[1] / "docs"
NOTEBOOK = DOCS / "tutorial.ipynb"
MARKDOWN = DOCS / "tutorial.md"
IMAGES = DOCS / "img" / "tutorial"


def test_markdown_is_in_sync_with_the_notebook() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    missing = sources_in_order(nb, MARKDOWN.read_text())
    assert not missing, f"docs/tutorial.md is stale; re-render it (cells: {missing})"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # kept small


def test_rendered_images_exist_and_are_small() -> None:
    text = MARKDOWN.read_text()
    files = sorted(IMAGES.glob("*.png"))
    assert files
    for f in files:
        assert f"(img/tutorial/{f.name})" in text
        assert f.stat().st_size < MAX_IMAGE_BYTES
    assert sum(f.stat().st_size for f in files) < 2_000_000


@pytest.mark.slow
def test_tutorial_executes_in_short_mode(cnn_explainer_dir: Path, tmp_path: Path) -> None:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        "CONVLENS_TUTORIAL_SHORT": "1",
        "CONVLENS_CNN_EXPLAINER": str(cnn_explainer_dir),
        # The kernel runs in docs/: it must import this checkout's convlens.
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    nb = execute(NOTEBOOK, timeout=300, env=env)  # a failing cell raises CellExecutionError
    md = render(nb, tmp_path / "img", "img")  # raises on an error output
    assert not sources_in_order(nb, md)
    pngs = list((tmp_path / "img").glob("*.png"))
    assert len(pngs) >= 15  # every section drew its figure
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "380" in out and "62,378,344" in out and "7.9 years" in out
    assert "is not a whole number" in out
