"""``convlens explain IMAGE... --model M --method grad-cam,occlusion``: attribution figures.

Writes, for every image, one PNG per method (the map over the image with its colour bar) and
a side-by-side figure of all methods headed by the predicted class and its probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from convlens.cli.checks import check_method_param
from convlens.cli.common import ModelFlags, with_model_flags
from convlens.cli.summary import wide_console
from convlens.errors import ConvlensError
from convlens.io.atomic import output_set
from convlens.io.figure import save_png
from convlens.io.image import load_images
from convlens.methods import METHODS, Attribution, make_method
from convlens.methods.figures import panel, side_by_side
from convlens.model import Model


def parse_value(text: str) -> Any:
    """``8`` → 8, ``0.5`` → 0.5, ``true`` → True, ``8,4`` → (8, 4), else the text."""
    if "," in text:
        return tuple(parse_value(t) for t in text.split(","))
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def method_params(methods: list[str], params: list[str]) -> dict[str, dict[str, Any]]:
    """``key=value`` goes to every method that accepts ``key``; ``method.key=value`` to one."""
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in params:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConvlensError(f"--param takes KEY=VALUE or METHOD.KEY=VALUE; got {item!r}")
        scope, dot, name = key.rpartition(".")
        if dot and scope not in out:
            raise ConvlensError(f"--param {item!r} names method {scope!r}, not one of {methods}")
        targets = [scope] if dot else [m for m in methods if _accepts(m, name)]
        if not targets:
            raise ConvlensError(f"no chosen method ({', '.join(methods)}) takes parameter {name!r}")
        for m in targets:
            out[m][name] = check_method_param(m, METHODS.get(m), name, parse_value(value))
    return out


def _accepts(method: str, name: str) -> bool:
    import inspect

    return name in inspect.signature(METHODS.get(method).__init__).parameters


def prediction_caption(model: Model, probs: torch.Tensor, target: int | None) -> str:
    k = int(probs.argmax())
    text = f"predicted: {model.classes[k]} ({float(probs[k]):.1%})"
    if target is not None and target != k:
        text += f"\nexplained: {model.classes[target]} ({float(probs[target]):.1%})"
    return text


@with_model_flags
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files to explain.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="'demo', a zoo name, a checkpoint or a file.")
    ] = "demo",
    method: Annotated[
        str,
        typer.Option(
            "--method", help="Comma-separated methods: " + ", ".join(METHODS.names()) + "."
        ),
    ] = "grad-cam",
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Class name or index (default: predicted).")
    ] = None,
    layer: Annotated[
        str | None, typer.Option("--layer", help="Layer for CAM methods (default: last spatial).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Method parameter KEY=VALUE or METHOD.KEY=VALUE."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")] = Path(
        "explanations"
    ),
    *,
    flags: ModelFlags,
) -> None:
    """Explain the model's prediction for each image with one or more attribution methods."""
    m = flags.open(model)
    names = [s.strip() for s in method.split(",") if s.strip()]
    if not names:
        raise ConvlensError(f"no method given; choose from: {', '.join(METHODS.names())}")
    per_method = method_params(names, param or [])
    target_idx = m.class_index(target) if target is not None else None
    x = load_images([str(p) for p in images], m.spec)
    attrs: list[Attribution] = []
    for name in names:
        takes_layer = METHODS.get(name).needs_layer
        explainer = make_method(m, name, layer if takes_layer else None, **per_method[name])
        attrs.append(explainer(x, target_idx))
    probs = m.probabilities(x)
    table = Table(title=f"explanations in {out}", title_justify="left")
    for col in ("image", "predicted", "probability", "written"):
        table.add_column(col)
    # All figures are staged and moved into --out together: a full disk half-way leaves the
    # previous figures as they were.
    with output_set(out) as stage:
        for i, path in enumerate(images):
            stem = path.stem
            for a in attrs:
                save_png(panel(a, i, x[i]), stage / f"{stem}.{a.method}.png")
            header = f"{path.name}  |  model: {m.name}"
            caption = prediction_caption(m, probs[i], target_idx)
            save_png(side_by_side(x[i], attrs, i, header, caption), stage / f"{stem}.explain.png")
            k = int(probs[i].argmax())
            table.add_row(
                path.name, m.classes[k], f"{float(probs[i, k]):.3f}", f"{stem}.explain.png + "
                f"{len(attrs)} method PNGs",
            )  # fmt: skip
    console = wide_console()
    console.print(table)
    for a in attrs:
        for note in a.notes:
            console.print(f"[dim]{a.method}: {note}[/dim]")


def register(app: typer.Typer) -> None:
    app.command()(explain)
