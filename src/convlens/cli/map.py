"""``convlens map`` (a 2-D map of the network's codes: scatter and image grid) and
``convlens neighbors`` (the data-set images nearest a query image in code space)."""

from __future__ import annotations

import warnings
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
from convlens.cli.common import ModelFlags, with_model_flags
from convlens.cli.scan import DataDirOpt, DatasetOpt, SplitOpt, open_data
from convlens.errors import ConvlensError
from convlens.io.atomic import ensure_writable_dir
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
    *,
    flags: ModelFlags,
) -> None:
    """Embed N images' codes with PCA, t-SNE or UMAP; write a scatter coloured by class and an
    image grid (one image per cell, by optimal assignment)."""
    if method not in METHODS:
        raise ConvlensError(f"unknown --method {method!r}; accepted: {', '.join(METHODS)}")
    if grid is not None and grid < 1:
        raise ConvlensError(f"--grid must be at least 1, got {grid}")
    console = Console(stderr=True)
    ensure_writable_dir(out)
    net = flags.open(model)
    data, _ = open_data(net, dataset, split, data_dir)
    status = f"computing codes and the {method} embedding of {min(n, len(data))} images"
    with console.status(status), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cmap = code_map(net, data, n, method, layer, pool, seed, jobs)
    for w in caught:
        console.print(f"[yellow]warning[/yellow]: {w.message}")
    cmap.meta["dataset_source"] = {"name": dataset, "split": split, "data_dir": data_dir}
    cmap.save(out)
    save_png(scatter_figure(cmap), Path(out) / f"map-{method}-scatter.png")
    side = grid or grid_side(len(cmap.indices))
    save_png(image_grid_figure(cmap, data, side), Path(out) / f"map-{method}-grid.png")
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
    out: Annotated[str | None, typer.Option("--out", "-o", help="PNG of the neighbours.")] = None,
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
    if k < 1:
        raise ConvlensError(f"--k must be at least 1, got {k}")
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
    q = codes_of(net, query, layer, pool)[0]
    rows, dist = nearest(codes, q, k, metric)
    found = [indices[int(r)] for r in rows]
    _, labels = data.get(found)
    table = Table(title=f"{k} nearest of {len(indices):,} images ({metric})", title_justify="left")
    for col in ("rank", "index", "class", "distance"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for rank, (i, lab, d) in enumerate(zip(found, labels.tolist(), dist.tolist(), strict=True)):
        table.add_row(str(rank + 1), str(i), data.classes[lab], f"{d:.4f}")
    Console().print(table)
    if out:
        save_png(neighbors_figure(query[0], data, found, dist.tolist(), data.classes), out)
        Console(stderr=True).print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("map")(map_command)
    app.command("neighbors")(neighbors_command)
