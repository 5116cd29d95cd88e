"""``convlens export-figures``: every channel of every layer for one image, as PNG grids.

One PNG per layer (``NN-<layer>.png``, in the graph's order) and an ``index.html`` and
``index.json`` listing them; every file is written atomically, so an interrupted export leaves
no half-written figure.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.analysis.activations import MAX_CHANNELS, activations, layer_figure, sparsity
from convlens.analysis.patches import safe_name
from convlens.cli.checks import in_range
from convlens.cli.common import ModelArg, ModelFlags, with_model_flags
from convlens.errors import ConvlensError
from convlens.io.atomic import ensure_writable_dir, write_text_atomic
from convlens.io.figure import save_png
from convlens.model import Model


def figure_name(index: int, layer: str) -> str:
    """``03-conv_1_2.png``: numbered so a file listing follows the network."""
    return f"{index:02d}-{safe_name(layer)}.png"


def export_layer_figures(
    model: Model, image: Any, out: Path, max_channels: int = 64
) -> list[dict[str, Any]]:
    """Write one figure per layer of ``model`` for ``image`` ``(1, C, H, W)`` into ``out``;
    returns the index entries (layer, kind, shape, channels shown, fraction of zeros, file)."""
    acts = activations(model, image)
    zeros = sparsity(acts)
    entries = []
    for lay in model.graph:
        if lay.name not in acts:
            continue  # a layer the hooks could not see (untraceable functional call)
        values = acts[lay.name]
        name = figure_name(lay.index, lay.name)
        save_png(layer_figure(lay, values, max_channels, model.name), out / name)
        channels = values.shape[0] if values.dim() == 3 else 0
        entries.append({
            "layer": lay.name, "kind": lay.kind, "op": lay.op, "shape": list(values.shape),
            "channels_shown": min(channels, max_channels), "channels": channels,
            "fraction_zero": round(zeros.get(lay.name, 0.0), 4), "file": name,
        })  # fmt: skip
    return entries


def index_html(model: str, image: str, entries: list[dict[str, Any]]) -> str:
    """A page listing every layer's figure (names escaped: they come from the model file)."""
    rows = []
    for e in entries:
        shape = "×".join(map(str, e["shape"]))
        shown = f"{e['channels_shown']} of {e['channels']}" if e["channels"] else "vector"
        rows.append(
            f"<h2>{html.escape(e['layer'])}</h2><p>{html.escape(e['op'])}, {shape}, channels "
            f"{shown}, {e['fraction_zero']:.1%} zeros</p>"
            f'<img src="{html.escape(e["file"])}" alt="{html.escape(e["layer"])}">'
        )
    title = html.escape(f"{model}: activations of every layer for {image}")
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}</style></head>"
        f"<body><h1>{title}</h1>{''.join(rows)}</body></html>\n"
    )


@with_model_flags
def export_figures(
    model: ModelArg,
    image: Annotated[Path, typer.Option("--image", "-i", help="The image to run through.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs and index.")],
    max_channels: Annotated[
        int, typer.Option("--max-channels", help="Channels drawn per layer (said in titles).")
    ] = 64,
    *,
    flags: ModelFlags,
) -> None:
    """Write every channel of every layer for one image as PNG grids, plus an index."""
    in_range("--max-channels", max_channels, 1, MAX_CHANNELS)
    m = flags.open(model)
    try:
        x = m.load_image(image)
    except ConvlensError as e:  # the decoder's message does not name the file
        raise ConvlensError(f"--image {str(image)!r}: {e}") from None
    folder = ensure_writable_dir(out)
    entries = export_layer_figures(m, x, folder, max_channels)
    write_text_atomic(folder / "index.html", index_html(m.name, image.name, entries))
    meta = {"model": m.name, "image": str(image), "max_channels": max_channels, "layers": entries}
    write_text_atomic(folder / "index.json", json.dumps(meta, indent=1) + "\n")
    capped = sum(1 for e in entries if e["channels"] > e["channels_shown"])
    note = f"; {capped} layer(s) capped at {max_channels} channels" if capped else ""
    typer.echo(f"wrote {len(entries)} layer figures and index.html to {folder}{note}")


def register(app: typer.Typer) -> None:
    app.command("export-figures")(export_figures)
