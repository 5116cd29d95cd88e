"""``convlens map`` (a 2-D map of the network's codes: scatter and image grid) and
``convlens neighbors`` (the data-set images nearest a query image in code space)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from convlens.analysis.embed import (
    METHODS,
    POOLS,
    CodeMap,
    code_map,
    codes_of,
    grid_side,
    image_grid_figure,
    nearest,
    neighbors_figure,
    read_codes,
    sample_indices,
    scatter_figure,
)
from convlens.analysis.scan import skipped_summary
from convlens.cli import checks
from convlens.cli.common import (
    AddressOpt,
    EngineOpt,
    ModelFlags,
    WorkersOpt,
    check_engine,
    with_model_flags,
)
from convlens.cli.scan import DataDirOpt, DatasetOpt, OpenData, OpenModel, SplitOpt, open_data
from convlens.errors import ConvlensError
from convlens.io.atomic import output_set
from convlens.io.figure import save_png

LayerOpt = Annotated[
    str | None,
    typer.Option("--layer", "-l", help="Layer whose codes to use (default: the penultimate)."),
]
PoolOpt = Annotated[
    str, typer.Option(help=f"Pooling of a spatial layer's codes: {', '.join(POOLS)}.")
]


@with_model_flags
def map_command(
    model: Annotated[str, typer.Argument(help="'demo', a zoo name, a checkpoint or a file.")],
    dataset: DatasetOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for the map and figures.")],
    n: Annotated[int, typer.Option("--n", help="Images to map (a seeded sample).")] = 2000,
    method: Annotated[str, typer.Option(help=f"One of {', '.join(METHODS)}.")] = "tsne",
    layer: LayerOpt = None,
    pool: PoolOpt = "mean",
    grid: Annotated[
        int | None, typer.Option("--grid", help="Cells per side of the image grid.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the embedding.")] = 0,
    jobs: Annotated[int, typer.Option("--jobs", help="Threads for t-SNE (-1: all).")] = 1,
    split: SplitOpt = "train",
    data_dir: DataDirOpt = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = 2,
    *,
    flags: ModelFlags,
) -> None:
    """Embed N images' codes with PCA, t-SNE or UMAP; write a scatter coloured by class and an
    image grid (one image per cell, by optimal assignment)."""
    if method not in METHODS:
        raise ConvlensError(f"unknown --method {method!r}; accepted: {', '.join(METHODS)}")
    checks.in_range("--n", n, 1, 1_000_000)
    if grid is not None:
        checks.in_range("--grid", grid, 1, 200)  # 200² cells is already a 100-megapixel figure
    if jobs != -1:
        checks.in_range("--jobs", jobs, 1, 1024)
    checks.seed(seed)
    check_engine(engine, address, workers)
    console = Console(stderr=True)
    net = flags.open(model) if engine == "local" else replace(flags, device="cpu").open(model)
    data, _ = open_data(net, dataset, split, data_dir)
    reader = None
    if engine == "ray":  # the codes on Ray workers, each opening the model and data itself
        from convlens.analysis.ray_engine import ray_read_codes

        reader = functools.partial(
            ray_read_codes, make_model=OpenModel(flags, model),
            open_data=OpenData(dataset, split, data_dir), address=address, workers=workers,
            device=flags.device,
        )  # fmt: skip
    status = f"computing codes and the {method} embedding of {min(n, len(data))} images"
    with console.status(status), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cmap = code_map(net, data, n, method, layer, pool, seed, jobs, reader=reader)
    for w in caught:
        console.print(f"[yellow]warning[/yellow]: {w.message}")
    cmap.meta["dataset_source"] = {"name": dataset, "split": split, "data_dir": data_dir}
    side = grid or grid_side(len(cmap.indices))
    with output_set(out) as stage:  # the map and its figures appear together or not at all
        cmap.save(stage)
        save_png(scatter_figure(cmap), stage / f"map-{method}-scatter.png")
        save_png(image_grid_figure(cmap, data, side), stage / f"map-{method}-grid.png")
    console.print(
        f"mapped {len(cmap.indices):,} codes of layer {cmap.meta['layer']!r} with {method}; "
        f"wrote {out}/map-{method}-scatter.png, map-{method}-grid.png ({side}×{side}), "
        "codes.safetensors and map.json"
    )


@with_model_flags
def neighbors_command(
    model: Annotated[str, typer.Argument(help="'demo', a zoo name, a checkpoint or a file.")],
    image: Annotated[Path, typer.Argument(help="The query image file.")],
    dataset: DatasetOpt,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="PNG (or folder) of the neighbours.")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Neighbours to show.")] = 8,
    n: Annotated[
        int, typer.Option("--n", help="Data-set images to search (a seeded sample).")
    ] = 10000,
    use_map: Annotated[
        Path | None, typer.Option("--map", help="Reuse the codes of a `convlens map` folder.")
    ] = None,
    metric: Annotated[str, typer.Option(help="cosine or euclidean.")] = "cosine",
    layer: LayerOpt = None,
    pool: PoolOpt = "mean",
    split: SplitOpt = "train",
    data_dir: DataDirOpt = None,
    *,
    flags: ModelFlags,
) -> None:
    """Find the data-set images whose codes are nearest to a query image's."""
    checks.in_range("--k", k, 1, 1000)
    checks.in_range("--n", n, 1, 10_000_000)
    if metric not in ("cosine", "euclidean"):
        raise ConvlensError(f"unknown --metric {metric!r}; accepted: cosine, euclidean")
    target_png = None if out is None else checks.png_target(out, f"neighbors-{image.stem}.png")
    net = flags.open(model)
    data, _ = open_data(net, dataset, split, data_dir)
    query = net.load_image(str(image))
    if use_map is not None:
        cmap = CodeMap.load(use_map)
        codes, indices = cmap.codes, cmap.indices.tolist()
        layer, pool = cmap.meta["layer"], cmap.meta["pool"]
        if max(indices) >= len(data):
            raise ConvlensError(f"the map in {str(use_map)!r} was made on another data set")
    else:
        codes, _, kept, skipped = read_codes(net, data, sample_indices(len(data), n), layer, pool)
        indices = kept.tolist()
        if skipped:
            Console(stderr=True).print(f"[yellow]warning[/yellow]: {skipped_summary(skipped)}")
    q = codes_of(net, query, layer, pool)[0].cpu()  # the data set's codes are on the CPU
    rows, dist = nearest(codes, q, k, metric)
    found = [indices[int(r)] for r in rows]
    _, labels = data.get(found)
    table = Table(title=f"{k} nearest of {len(indices):,} images ({metric})", title_justify="left")
    for col in ("rank", "index", "class", "distance"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for rank, (i, lab, d) in enumerate(zip(found, labels.tolist(), dist.tolist(), strict=True)):
        table.add_row(str(rank + 1), str(i), data.classes[lab], f"{d:.4f}")
    Console().print(table)
    if target_png is not None:
        save_png(neighbors_figure(query[0], data, found, dist.tolist(), data.classes), target_png)
        Console(stderr=True).print(f"wrote {target_png}")


def register(app: typer.Typer) -> None:
    app.command("map")(map_command)
    app.command("neighbors")(neighbors_command)
