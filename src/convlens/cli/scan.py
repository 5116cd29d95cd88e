"""``convlens scan`` (top activating patches and unit statistics over a data set) and
``convlens report`` (dead, nearly-dead and saturated units of a finished scan)."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from convlens.analysis import ScanResult, load_scan, scan
from convlens.analysis.patches import write_patch_figures
from convlens.analysis.report import UnitReport, report_figure, unit_report
from convlens.analysis.scan import MAX_BATCH, MAX_TOP_K
from convlens.cli import checks
from convlens.cli.common import (
    AddressOpt,
    EngineOpt,
    ModelFlags,
    PrecisionOpt,
    WorkersOpt,
    check_engine,
    with_model_flags,
)
from convlens.data import FolderImages, ImageDataset, dataset_help, named_datasets, open_dataset
from convlens.device import autocast, parse_precision
from convlens.errors import ConvlensError
from convlens.io.atomic import output_set, write_text_atomic
from convlens.io.figure import save_png
from convlens.model import Model

DatasetOpt = Annotated[
    str,
    typer.Option("--dataset", "-d", help=dataset_help()),
]
SplitOpt = Annotated[str, typer.Option("--split", help="train, test (or all for a folder).")]
DataDirOpt = Annotated[
    str | None, typer.Option("--data-dir", help="Folder holding the data set's files.")
]


def open_data(
    model: Model, dataset: str, split: str, data_dir: str | None
) -> tuple[ImageDataset, dict[str, Any]]:
    """The data set fitted to the model's input, and how to reopen it (for the scan record)."""
    if os.path.isdir(dataset) and dataset not in named_datasets():
        root = str(Path(dataset).resolve())
        if split not in ("train", "test", "all"):
            raise ConvlensError(
                f"no split {split!r} for an image folder; accepted: train, test, all"
            )
        data: ImageDataset = FolderImages(root, split, shape=model.spec.shape)
        if len(data) == 0:
            raise ConvlensError(f"image folder {root!r} ({split}) holds no images")
        return data, {"name": root, "split": split}
    data = open_dataset(dataset, split, data_dir)
    if tuple(data.shape) != tuple(model.spec.shape):
        from convlens.train.datasets import for_model  # resizes and converts channels

        data = for_model(data, model.spec.shape)
    return data, {"name": dataset, "split": split, "data_dir": data_dir}


class _Rate(TextColumn):
    """Images per second since the bar started."""

    def __init__(self) -> None:
        super().__init__("")
        self.start = time.monotonic()
        self.first: float | None = None

    def render(self, task: Any) -> Any:
        from rich.text import Text

        if self.first is None:
            self.first = task.completed
        rate = (task.completed - self.first) / max(time.monotonic() - self.start, 1e-9)
        return Text(f"{rate:,.0f} img/s")


@contextmanager
def progress_bar(console: Console, total: int, what: str) -> Iterator[Any]:
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


@dataclass(frozen=True)
class OpenModel:
    """The command line's model, opened again on a Ray worker (picklable)."""

    flags: ModelFlags
    source: str

    def __call__(self) -> Model:
        return replace(self.flags, device="cpu").open(self.source)


@dataclass(frozen=True)
class OpenData:
    """The command line's data set, opened on a Ray worker for its model (picklable)."""

    dataset: str
    split: str
    data_dir: str | None

    def __call__(self, model: Model) -> ImageDataset:
        return open_data(model, self.dataset, self.split, self.data_dir)[0]


def default_layers(model: Model) -> list[str]:
    """The deepest spatial layer that a hook can capture (a module, not a functional call)."""
    found = [lay.name for lay in model.graph.spatial() if lay.module is not None]
    if not found:
        raise ConvlensError("the model has no spatial layer to scan; name layers with --layers")
    return [found[-1]]


def _print_warnings(console: Console, caught: list[warnings.WarningMessage]) -> None:
    seen = set()
    for w in caught:
        text = str(w.message)
        if text not in seen:
            seen.add(text)
            console.print(f"[yellow]warning[/yellow]: {text}")


@with_model_flags
def scan_command(
    model: Annotated[str, typer.Argument(help="'demo', a zoo name, a checkpoint or a file.")],
    dataset: DatasetOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Scan folder to write (or reuse).")],
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers", "-l", help="Comma-separated layer names (default: the last spatial layer)."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Hits kept per unit.")] = 16,
    split: SplitOpt = "train",
    data_dir: DataDirOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted scan in --out.")
    ] = False,
    patches: Annotated[
        bool, typer.Option("--patches/--no-patches", help="Write the top-patch figures.")
    ] = True,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = 2,
    precision: PrecisionOpt = "float32",
    *,
    flags: ModelFlags,
) -> None:
    """Stream a data set through a model, keeping each unit's top activations and statistics;
    write the scan (resumable), top-patch figures and a unit report into --out."""
    checks.in_range("--top-k", top_k, 1, MAX_TOP_K)
    checks.in_range("--batch-size", batch_size, 1, MAX_BATCH)
    check_engine(engine, address, workers)
    dtype = parse_precision(precision)
    console = Console(stderr=True)
    # With Ray the driver only checks, describes and crops patches: it opens the model on the
    # CPU and each worker opens its own on --device.
    net = flags.open(model) if engine == "local" else replace(flags, device="cpu").open(model)
    names = [s.strip() for s in layers.split(",") if s.strip()] if layers else default_layers(net)
    data, source = open_data(net, dataset, split, data_dir)
    options: dict[str, Any] = {"k": top_k, "batch_size": batch_size, "out": out, "resume": resume,
               "source": source}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with progress_bar(console, len(data), "scan") as update:
            if engine == "ray":
                from convlens.analysis.ray_engine import ray_scan

                result = ray_scan(
                    net, data, names, make_model=OpenModel(flags, model),
                    open_data=OpenData(dataset, split, data_dir), address=address,
                    workers=workers, device=flags.device, precision=precision, progress=update,
                    **options,
                )  # fmt: skip
            else:
                with autocast(net.device, dtype):
                    result = scan(net, data, names, progress=update, **options)
        report = unit_report(result)
        # The scan state is saved atomically as it goes (resumable); the figures made from it
        # are staged and moved in together, so a full disk keeps the previous set whole.
        with output_set(out) as stage:
            write_report(report, stage)
            written = write_patch_figures(result, data, net, stage) if patches else []
        if patches:
            console.print(f"wrote {len(written)} patch figures under {Path(out) / 'patches'}")
    _print_warnings(console, caught)
    print_report(report, Console(), top=15)
    console.print(f"scan of {result.meta.images_done:,} images saved in {out}")


def write_report(report: UnitReport, out: str | os.PathLike[str]) -> None:
    write_text_atomic(Path(out) / "report.json", json.dumps(report.to_dict(), indent=1) + "\n")
    save_png(report_figure(report), Path(out) / "report.png")


def print_report(report: UnitReport, console: Console, top: int = 30) -> None:
    layers = Table(title=f"layers over {report.n_images:,} images", title_justify="left")
    for col in ("layer", "units", "dead", "nearly dead", "saturated", "sparsity"):
        layers.add_column(col, justify="left" if col == "layer" else "right")
    for lay in report.layers:
        layers.add_row(lay.layer, str(lay.units), str(lay.dead), str(lay.nearly_dead),
                       str(lay.saturated), f"{lay.sparsity:.1%}")  # fmt: skip
    console.print(layers)
    flagged = report.flagged()
    flagged = [u for u in flagged if u.status != "n/a"]
    if not flagged:
        console.print("no dead, nearly-dead or saturated units")
        return
    units = Table(title=f"flagged units, worst first ({len(flagged)} in all)", title_justify="left")
    for col in ("layer", "unit", "status", "images firing", "positions > 0", "mean", "max"):
        units.add_column(col, justify="left" if col in ("layer", "status") else "right")
    for u in flagged[:top]:
        units.add_row(u.layer, str(u.unit), u.status, f"{u.frac_images_firing:.2%}",
                      f"{u.frac_positive:.2%}", f"{u.mean:.3g}", f"{u.max:.3g}")  # fmt: skip
    console.print(units)


def report_command(
    scan_dir: Annotated[str, typer.Argument(help="A folder written by `convlens scan`.")],
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Where to write report.png/.json.")
    ] = None,
    rare: Annotated[
        float, typer.Option(help="'Nearly dead': fires on fewer than this fraction of images.")
    ] = 0.01,
    always: Annotated[
        float, typer.Option(help="'Saturated': above zero at more than this fraction.")
    ] = 0.99,
    top: Annotated[int, typer.Option(help="Flagged units to list.")] = 30,
) -> None:
    """Rank dead, nearly-dead and saturated units and each layer's sparsity from a scan."""
    checks.in_range("--rare", rare, 0.0, 1.0)
    checks.in_range("--always", always, 0.0, 1.0)
    checks.in_range("--top", top, 0, 1_000_000)
    meta, state = load_scan(scan_dir)
    if not meta.complete:
        Console(stderr=True).print(
            f"[yellow]warning[/yellow]: the scan is unfinished ({meta.images_done:,} of "
            f"{meta.dataset.get('size', '?')} images); resume it with `convlens scan ... --resume`"
        )
    report = unit_report(ScanResult(meta, state), rare=rare, always=always)
    with output_set(out or scan_dir) as stage:
        write_report(report, stage)
    print_report(report, Console(), top=top)


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)
    app.command("report")(report_command)
