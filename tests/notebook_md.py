"""Render an executed notebook as Markdown (nbconvert is not a dependency), and check that a
Markdown rendering still matches its notebook's cells.

``python tests/notebook_md.py docs/tutorial.ipynb`` executes the notebook (cwd: its folder)
with nbclient, writes ``docs/tutorial.md`` with every PNG output as a file under
``docs/img/tutorial/`` (each kept under :data:`MAX_IMAGE_BYTES`), and saves the notebook back
without outputs, so that the committed notebook stays small and its diffs readable.
"""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path
from typing import Any

MAX_IMAGE_BYTES = 200_000
MAX_TEXT_LINES = 60  # a longer text output is cut in the Markdown (never in the notebook)


def _png_under_limit(data: bytes) -> bytes:
    """The PNG re-encoded (palette, then smaller) until it is under :data:`MAX_IMAGE_BYTES`."""
    from PIL import Image

    if len(data) <= MAX_IMAGE_BYTES:
        return data
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = 1.0
    while True:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        small = img.resize(size, Image.Resampling.LANCZOS) if scale < 1 else img
        buf = io.BytesIO()
        small.quantize(256).save(buf, format="PNG", optimize=True)
        if buf.tell() <= MAX_IMAGE_BYTES:
            return buf.getvalue()
        scale *= 0.85


def _text(text: str | list[str]) -> str:
    return "".join(text) if isinstance(text, list) else text


def _fenced(body: str, lang: str) -> str:
    lines = body.rstrip("\n").split("\n")
    if len(lines) > MAX_TEXT_LINES:
        lines = [*lines[:MAX_TEXT_LINES], f"... ({len(lines) - MAX_TEXT_LINES} more lines)"]
    return f"```{lang}\n" + "\n".join(lines) + "\n```\n"


def _caption(output: dict[str, Any]) -> str:
    """The figure's caption from its HTML repr (convlens figures carry one), else ``figure``."""
    page = _text(output.get("data", {}).get("text/html", ""))
    found = re.search(r"<figcaption>(.*?)</figcaption>", page, re.S)
    if not found:
        return "figure"
    import html

    return html.unescape(found.group(1)).replace("[", "(").replace("]", ")")


def render(nb: Any, img_dir: Path, img_prefix: str) -> str:
    """Markdown for the executed notebook ``nb``; PNG outputs written into ``img_dir``."""
    img_dir.mkdir(parents=True, exist_ok=True)
    for old in img_dir.glob("*.png"):
        old.unlink()
    parts: list[str] = []
    for n, cell in enumerate(nb.cells):
        source = _text(cell.source)
        if cell.cell_type == "markdown":
            parts.append(source.rstrip("\n") + "\n")
            continue
        if cell.cell_type != "code":
            continue
        parts.append(_fenced(source, "python"))
        k = 0
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream" and out.get("name") == "stdout":
                parts.append(_fenced(_text(out["text"]), "text"))
            elif kind == "error":
                raise RuntimeError(f"cell {n} failed: {out.get('ename')}: {out.get('evalue')}")
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if "image/png" in data:
                    png = _png_under_limit(base64.b64decode(_text(data["image/png"])))
                    name = f"cell{n:02d}-{k}.png"
                    (img_dir / name).write_bytes(png)
                    parts.append(f"![{_caption(out)}]({img_prefix}/{name})\n")
                    k += 1
                elif "text/plain" in data:
                    parts.append(_fenced(_text(data["text/plain"]), "text"))
    return "\n".join(parts)


def sources_in_order(nb: Any, markdown: str) -> list[str]:
    """The cells whose source is missing from ``markdown`` or out of order (empty: in sync)."""
    missing = []
    pos = 0
    for cell in nb.cells:
        source = _text(cell.source).rstrip("\n")
        if not source:
            continue
        block = f"```python\n{source}\n```" if cell.cell_type == "code" else source
        at = markdown.find(block, pos)
        if at < 0:
            missing.append(source.split("\n", 1)[0])
        else:
            pos = at + len(block)
    return missing


def execute(path: Path, timeout: int = 1200, env: dict[str, str] | None = None) -> Any:
    """Run the notebook at ``path`` top to bottom (cwd: its folder) and return it executed."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )  # fmt: skip
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def strip_outputs(nb: Any) -> Any:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def main(argv: list[str]) -> int:
    import nbformat

    path = Path(argv[0])
    nb = execute(path)
    img_dir = path.parent / "img" / path.stem
    md = render(nb, img_dir, f"img/{path.stem}")
    path.with_suffix(".md").write_text(md)
    nbformat.write(strip_outputs(nb), path)
    sizes = [p.stat().st_size for p in img_dir.glob("*.png")]
    print(f"wrote {path.with_suffix('.md')} and {len(sizes)} images ({sum(sizes):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
