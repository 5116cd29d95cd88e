"""``convlens explain IMAGE... --model M --method grad-cam,occlusion``: attribution figures.

Writes, for every image, one PNG per method (the map over the image with its colour bar) and
a side-by-side figure of all methods headed by the predicted class and its probability.

``convlens explain FOLDER --method M`` explains every image under ``FOLDER`` (sub-folders
included), streaming them through the methods ``--batch-size`` at a time with a progress bar:
one side-by-side figure per image, a thumbnail of it and an ``index.html`` that links them,
all moved into ``--out`` together once written. Unreadable images are skipped and named in
one summary line; the throughput is reported next to that of one forward + backward pass per
image, the work a gradient method cannot avoid.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from convlens.cli.checks import check_method_param
from convlens.cli.common import ModelFlags, with_model_flags
from convlens.cli.summary import wide_console
from convlens.data.folder import IMAGE_SUFFIXES
from convlens.errors import ConvlensError
from convlens.io.atomic import output_set, write_text_atomic
from convlens.io.figure import save_png
from convlens.io.image import load_image, load_images
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


MAX_FOLDER_IMAGES = 1_000_000  # a folder listing larger than this is almost surely a mistake
THUMB_SIDE = 240


def list_images(folder: Path, skip: Path | None = None) -> list[Path]:
    """Image files under ``folder`` (sub-folders included, hidden ones and ``skip`` left out),
    in sorted order."""
    found: list[Path] = []
    skip_abs = skip.absolute() if skip is not None else None
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (here / d).absolute() != skip_abs
        )
        for name in sorted(files):
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            found.append(path)
            if len(found) > MAX_FOLDER_IMAGES:
                raise ConvlensError(
                    f"{str(folder)!r} holds more than {MAX_FOLDER_IMAGES} images; explain a "
                    "smaller folder"
                )
    if not found:
        raise ConvlensError(
            f"no images under {str(folder)!r} (image types: {', '.join(IMAGE_SUFFIXES)})"
        )
    return found


@dataclass
class FolderReport:
    """What ``explain FOLDER`` did: per image ``(relative path, figure, thumbnail,
    prediction caption)``, the skipped files with their reasons, and timings."""

    written: list[tuple[str, str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # the whole run: reading, methods, figures
    method_seconds: float = 0.0  # the methods alone
    forward_backward_per_image: float = 0.0

    def speed_line(self) -> str:
        n = len(self.written)
        if n == 0:
            return "no image could be explained"
        fb = self.forward_backward_per_image
        per_image = self.method_seconds / n
        return (
            f"explained {n} image(s) in {self.seconds:.1f} s: {n / self.seconds:.1f} images/s "
            f"({n / self.method_seconds:.1f} images/s in the methods alone); one forward + "
            f"backward: {1 / fb:.1f} images/s, so the methods take {per_image / fb:.1f}× one "
            "forward + backward per image"
        )

    def skipped_line(self, show: int = 3) -> str:
        names = "; ".join(f"{p} ({why})" for p, why in self.skipped[:show])
        more = f" and {len(self.skipped) - show} more" if len(self.skipped) > show else ""
        return f"skipped {len(self.skipped)} unreadable image(s): {names}{more}"


def _read_batch(
    paths: list[Path], model: Model, skipped: list[tuple[Path, str]]
) -> tuple[list[Path], torch.Tensor | None]:
    """The batch's readable images (decoded, fitted to the model's input); the others are
    added to ``skipped`` with the reason."""
    good: list[Path] = []
    parts: list[torch.Tensor] = []
    for path in paths:
        try:
            parts.append(load_image(path, model.spec))
        except (ConvlensError, OSError, ValueError) as e:
            skipped.append((path, " ".join(str(e).split()) or type(e).__name__))
            continue
        good.append(path)
    return good, (torch.cat(parts) if parts else None)


def _forward_backward_seconds(model: Model, x: torch.Tensor, target: int | None) -> float:
    """Seconds of one forward pass and one backward pass to the input for batch ``x``: the
    least a gradient explanation of it costs."""
    xr = x.clone().requires_grad_(True)
    t0 = time.perf_counter()
    out = model(xr)
    idx = out.argmax(1) if target is None else torch.full((len(x),), target)
    torch.autograd.grad(out.gather(1, idx[:, None]).sum(), xr)
    return time.perf_counter() - t0


def _progress(total: int, show: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc="explain", disable=None if show else True)
    return bar.update, bar.close


def _figure_name(rel: Path) -> str:
    """A flat, unique file name for the image at ``rel``: ``a/b.png`` -> ``a__b.png``."""
    return "__".join(rel.parts)


def explain_folder(
    model: Model,
    folder: Path,
    methods: list[str],
    per_method: dict[str, dict[str, Any]],
    layer: str | None,
    target: int | None,
    out: Path,
    batch_size: int,
    show_progress: bool = True,
) -> FolderReport:
    """Explain every image under ``folder`` with ``methods``, ``batch_size`` images at a time;
    figures, thumbnails and ``index.html`` go to ``out`` together at the end."""
    from PIL import Image

    paths = list_images(folder, skip=out)
    explainers = [
        make_method(model, m, layer if METHODS.get(m).needs_layer else None, **per_method[m])
        for m in methods
    ]
    report = FolderReport()
    skipped: list[tuple[Path, str]] = []
    update, close = _progress(len(paths), show_progress)
    start = time.perf_counter()
    first_batch: torch.Tensor | None = None
    try:
        with output_set(out) as stage:
            (stage / "thumbs").mkdir()
            for good, x in _batches(paths, batch_size, model, skipped, update):
                if x is None:
                    continue
                first_batch = x if first_batch is None else first_batch
                t0 = time.perf_counter()
                attrs = [e(x, target) for e in explainers]
                report.method_seconds += time.perf_counter() - t0
                probs = model.probabilities(x)
                for i, path in enumerate(good):
                    rel = path.relative_to(folder)
                    name = _figure_name(rel)
                    caption = prediction_caption(model, probs[i], target)
                    fig = side_by_side(x[i], attrs, i, f"{rel}  |  model: {model.name}", caption)
                    save_png(fig, stage / f"{name}.explain.png")
                    fig.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
                    save_png(fig, stage / "thumbs" / f"{name}.png")
                    report.written.append(
                        (str(rel), f"{name}.explain.png", f"thumbs/{name}.png", caption)
                    )
            report.seconds = time.perf_counter() - start
            report.skipped = [(str(p.relative_to(folder)), why) for p, why in skipped]
            if not report.written:  # nothing to show: leave --out as it was
                raise ConvlensError(
                    f"none of the {len(paths)} images under {str(folder)!r} could be read: "
                    + report.skipped_line()
                )
            if first_batch is not None:
                fb = _forward_backward_seconds(model, first_batch, target)
                report.forward_backward_per_image = fb / len(first_batch)
            write_text_atomic(stage / "index.html", index_html(model, folder, methods, report))
    finally:
        close()
    return report


def _batches(
    paths: list[Path],
    batch_size: int,
    model: Model,
    skipped: list[tuple[Path, str]],
    update: Callable[[int], None],
) -> Iterator[tuple[list[Path], torch.Tensor | None]]:
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        good, x = _read_batch(chunk, model, skipped)
        yield good, x
        update(len(chunk))


def index_html(model: Model, folder: Path, methods: list[str], report: FolderReport) -> str:
    """The index page: one linked thumbnail per image with its prediction, the speed, and
    the skipped files. Every name is escaped (file names are the user's, not ours)."""
    e = html.escape
    cards = "\n".join(
        f'<figure><a href="{e(fig)}"><img src="{e(thumb)}" alt="{e(rel)}" loading="lazy"></a>'
        f"<figcaption>{e(rel)}<br>{e(caption).replace(chr(10), '<br>')}</figcaption></figure>"
        for rel, fig, thumb, caption in report.written
    )
    skipped = ""
    if report.skipped:
        items = "\n".join(f"<li>{e(p)}: {e(why)}</li>" for p, why in report.skipped)
        skipped = f"<h2>Skipped ({len(report.skipped)})</h2><ul>{items}</ul>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>convlens explanations of {e(folder.name or str(folder))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
main {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; width: {THUMB_SIDE}px; font-size: 0.8em; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>{e(", ".join(methods))} on {e(str(folder))}</h1>
<p>model: {e(model.name)}; {len(report.written)} image(s). {e(report.speed_line())}</p>
<main>
{cards}
</main>
{skipped}
</body></html>
"""


APPROX_HELP = (
    "Occlusion only: Krypton's approximate incremental inference (projective-field threshold "
    "--approx-tau plus adaptive drill-down). Its error is measured, not guaranteed: on "
    "random-weight ResNet-18, MobileNetV2-like and Inception-like networks the map keeps a "
    "correlation of at least 0.7 with the exact map and its largest error stays within the "
    "largest exact drop; on the trained Tiny VGG, correlation 0.94 and largest error 0.47 of "
    "the largest drop. See docs/performance.md."
)
APPROX_TAU_HELP = (
    "With --approx: the tolerance, the fraction of each layer's map a patch's changed region "
    "may span (0.01-1; smaller is faster and rougher; 1 with no drill-down is exact)."
)


@with_model_flags
def explain(
    images: Annotated[
        list[Path], typer.Argument(help="Image files to explain, or one folder of images.")
    ],
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
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per batch (folder mode).")
    ] = 16,
    approx: Annotated[bool, typer.Option("--approx", help=APPROX_HELP)] = False,
    approx_tau: Annotated[float, typer.Option("--approx-tau", help=APPROX_TAU_HELP)] = 0.7,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar (folders).")
    ] = True,
    *,
    flags: ModelFlags,
) -> None:
    """Explain the model's prediction for each image with one or more attribution methods.

    Given one folder, every image under it is explained in batches: one figure per image
    and an index.html with thumbnails linking to them."""
    m = flags.open(model)
    names = [s.strip() for s in method.split(",") if s.strip()]
    if not names:
        raise ConvlensError(f"no method given; choose from: {', '.join(METHODS.names())}")
    per_method = method_options(names, param or [], approx, approx_tau)
    target_idx = m.class_index(target) if target is not None else None
    folders = [p for p in images if p.is_dir()]
    if folders:
        if len(images) != 1:
            raise ConvlensError(
                "give either one folder or image files, not both (got "
                f"{len(images)} paths, {len(folders)} of them folders)"
            )
        if not 1 <= batch_size <= 4096:
            raise ConvlensError(f"--batch-size must be in 1..4096, got {batch_size}")
        report = explain_folder(
            m, folders[0], names, per_method, layer, target_idx, out, batch_size, progress
        )
        print_folder_report(report, out)
        return
    explain_files(m, images, names, per_method, layer, target_idx, out)


def method_options(
    names: list[str], params: list[str], approx: bool, approx_tau: float
) -> dict[str, dict[str, Any]]:
    """Each method's parameters from --param, with --approx / --approx-tau for occlusion."""
    per_method = method_params(names, params)
    if approx or approx_tau != 0.7:
        if "occlusion" not in names:
            raise ConvlensError("--approx and --approx-tau apply to occlusion; add it to --method")
        if not approx:
            raise ConvlensError("--approx-tau sets the tolerance of --approx; add --approx")
        per_method["occlusion"]["approx"] = True
        per_method["occlusion"]["tau"] = check_method_param(
            "occlusion", METHODS.get("occlusion"), "tau", approx_tau
        )
    return per_method


def print_folder_report(report: FolderReport, out: Path) -> None:
    console = wide_console()
    console.print(f"wrote {len(report.written)} figure(s) and {out / 'index.html'}")
    console.print(report.speed_line())
    if report.skipped:
        console.print(report.skipped_line())


def explain_files(
    m: Model,
    images: list[Path],
    names: list[str],
    per_method: dict[str, dict[str, Any]],
    layer: str | None,
    target_idx: int | None,
    out: Path,
) -> None:
    """Explain image files given one by one: a figure per method and a side-by-side figure per
    image, written to ``out`` as one set, and a table of the predictions."""
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
