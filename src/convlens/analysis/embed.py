"""Maps of the network's codes: embeddings in 2-D, image grids, nearest neighbours.

The code of an image is a layer's output, by default the penultimate layer's (the input of the
classifier), pooled over space when the layer has a grid. Codes of ``N`` images are embedded in
the plane with

* PCA: the top two right singular vectors of the centred codes, ``Y = (X - mean) V[:, :2]``;
* t-SNE (van der Maaten and Hinton, JMLR 2008) via openTSNE (Poličar et al., 2019), after a
  PCA to 50 dimensions;
* UMAP (McInnes, Healy and Melville, 2018) via umap-learn.

The image grid ("t-SNE grid", as in Karpathy's CNN-codes pages) places one image per cell by an
*assignment*: cells and points are matched one-to-one minimising the total squared distance
between a cell's centre and its point (Jonker-Volgenant, ``scipy.optimize.linear_sum_assignment``),
not by filling cells greedily.

>>> pts = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
>>> assign_grid(pts, 2, 2).tolist()   # cells row by row, top row first (high y)
[3, 1, 0, 2]
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save

from convlens.analysis.scan import read_batches, skipped_summary
from convlens.data import ImageDataset
from convlens.errors import ConvlensError, unknown_name
from convlens.io.atomic import write_bytes_atomic, write_text_atomic
from convlens.io.color import category_colors
from convlens.io.figure import RichDisplay, caption, grid, scatter
from convlens.model import Model
from convlens.probe import capture

METHODS = ("pca", "tsne", "umap")
METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
POOLS = ("mean", "max", "flatten")


def code_layer(model: Model) -> str:
    """The penultimate layer: the nearest module layer feeding the last layer."""
    graph = model.graph
    name = graph.output.inputs[0] if graph.output.inputs else graph.output.name
    while graph[name].module is None or graph[name].kind == "input":
        if not graph[name].inputs or graph[name].kind == "input":
            raise ConvlensError(
                "cannot find a module layer before the output to take codes from; name one "
                "with --layer"
            )
        name = graph[name].inputs[0]
    return name


def _pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    if x.dim() == 2:
        return x
    if pool == "mean":
        return x.flatten(2).mean(2)
    if pool == "max":
        return x.flatten(2).amax(2)
    if pool == "flatten":
        return x.flatten(1)
    raise ConvlensError(f"unknown pooling {pool!r}; accepted: {', '.join(POOLS)}")


@torch.inference_mode()
def codes_of(
    model: Model, images: torch.Tensor, layer: str | None = None, pool: str = "mean"
) -> torch.Tensor:
    """Codes ``(B, D)`` of a batch of images ``(B, C, H, W)`` in ``[0, 1]``."""
    name = layer or code_layer(model)
    with capture(model, [name]) as cap:
        model(images)
        return _pool(cap[name].float(), pool)


@torch.inference_mode()
def read_codes(
    model: Model,
    dataset: ImageDataset,
    indices: Sequence[int],
    layer: str | None = None,
    pool: str = "mean",
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Codes ``(N, D)``, labels and data-set indices of the readable images among ``indices``
    (``layer``'s output pooled over space), and the unreadable ones that were skipped."""
    if pool not in POOLS:
        raise ConvlensError(f"unknown pooling {pool!r}; accepted: {', '.join(POOLS)}")
    name = layer or code_layer(model)
    codes, labels, kept = [], [], []
    skipped: list[dict[str, Any]] = []
    with capture(model, [name]) as cap:
        for images, labs, idx, _ in read_batches(dataset, indices, batch_size, skipped):
            if len(idx) == 0:
                continue
            model(images)
            codes.append(_pool(cap[name].float(), pool).cpu())  # stored and embedded on the CPU
            labels.append(labs.long())
            kept.append(idx)
    if not codes:
        raise ConvlensError(f"none of the {len(indices)} images could be read to compute codes")
    return torch.cat(codes), torch.cat(labels), torch.cat(kept), skipped


# (model, dataset, indices, layer, pool) -> codes, labels, indices kept, skipped images
CodeReader = Callable[
    [Model, ImageDataset, Sequence[int], str | None, str],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, Any]]],
]


def compute_codes(
    model: Model,
    dataset: ImageDataset,
    indices: Sequence[int],
    layer: str | None = None,
    pool: str = "mean",
    batch_size: int = 256,
) -> torch.Tensor:
    """Codes ``(N, D)`` of the images ``indices``: ``layer``'s output, pooled over space
    (an unreadable image is an error here; :func:`read_codes` skips them)."""
    if len(indices) == 0:
        raise ConvlensError("no images to compute codes for")
    codes, _, _, skipped = read_codes(model, dataset, indices, layer, pool, batch_size)
    if skipped:
        names = ", ".join(str(s["name"]) for s in skipped[:3])
        raise ConvlensError(f"{len(skipped)} image(s) could not be read: {names}")
    return codes


# --------------------------------------------------------------------------- embeddings


def _need(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConvlensError(
            f"{what} needs the '{module}' package: pip install 'convlens[analysis]'"
        ) from None


def pca(codes: np.ndarray, dims: int = 2) -> np.ndarray:
    """Project on the top ``dims`` principal axes: eigenvectors of the scatter matrix
    ``Xc^T Xc`` (or the SVD of ``Xc`` when it has fewer rows than columns), signs fixed so each
    axis's largest-magnitude loading is positive (the result does not depend on the solver)."""
    x = np.asarray(codes, dtype=np.float64)
    x = x - x.mean(axis=0)
    if x.shape[0] > x.shape[1]:  # tall: the D×D scatter matrix is small, its eigh is cheap
        w, vecs = np.linalg.eigh(x.T @ x)
        v = vecs[:, np.argsort(w)[::-1][:dims]]  # (D, dims)
    else:
        v = np.linalg.svd(x, full_matrices=False)[2][:dims].T
    signs = np.sign(v[np.abs(v).argmax(axis=0), range(v.shape[1])])
    v = v * np.where(signs == 0, 1.0, signs)
    out = x @ v
    if out.shape[1] < dims:  # fewer features than dims: pad with zeros
        out = np.pad(out, ((0, 0), (0, dims - out.shape[1])))
    return out


def embed(
    codes: np.ndarray | torch.Tensor, method: str = "tsne", seed: int = 0, n_jobs: int = 1
) -> np.ndarray:
    """2-D coordinates ``(N, 2)`` of ``codes`` ``(N, D)`` by ``method`` (pca, tsne, umap).

    ``n_jobs`` threads for t-SNE (1 by default: reproducible, and fastest on a busy machine).
    """
    x = np.asarray(codes.numpy() if isinstance(codes, torch.Tensor) else codes, np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ConvlensError(f"need at least 3 codes (N, D) to embed, got shape {x.shape}")
    if method == "pca":
        return pca(x)
    if method == "tsne":
        open_tsne = _need("openTSNE", "t-SNE")
        reduced = pca(x, min(50, x.shape[1])) if x.shape[1] > 50 else x
        perplexity = float(min(30.0, (len(x) - 1) / 3))
        tsne = open_tsne.TSNE(perplexity=perplexity, random_state=seed, n_jobs=n_jobs)
        return np.asarray(tsne.fit(reduced))
    if method == "umap":
        umap = _need("umap", "UMAP")
        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1))
        return np.asarray(reducer.fit_transform(x))
    raise unknown_name("embedding method", method, METHODS)


# --------------------------------------------------------------------------- grids


def assign_grid(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """For each of the ``rows × cols`` cells (row-major, top row = highest y), the index of the
    point assigned to it, or -1 when there are fewer points than cells.

    Points are scaled per axis to the unit square; the assignment minimises the summed squared
    distance between each cell's centre and its point.
    """
    from scipy.optimize import linear_sum_assignment

    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    unit = (pts - lo) / np.where(hi > lo, hi - lo, 1.0)
    cy, cx = np.mgrid[0:rows, 0:cols]
    centres = np.stack(
        [(cx.ravel() + 0.5) / cols, 1.0 - (cy.ravel() + 0.5) / rows], axis=1
    )  # (cells, 2) as (x, y), y up
    cost = ((centres[:, None, :] - unit[None, :, :]) ** 2).sum(-1)  # (cells, N)
    cell_idx, point_idx = linear_sum_assignment(cost)
    out = np.full(rows * cols, -1, dtype=np.int64)
    out[cell_idx] = point_idx
    return out


def grid_side(n: int, max_side: int = 40) -> int:
    return max(1, min(max_side, int(np.sqrt(n))))


# --------------------------------------------------------------------------- the map


@dataclass
class CodeMap(RichDisplay):
    """Codes of ``indices`` (data-set indices) with their labels and 2-D embedding."""

    indices: torch.Tensor  # (N,) int64
    labels: torch.Tensor  # (N,) int64
    codes: torch.Tensor  # (N, D) float32
    points: torch.Tensor  # (N, 2) float64
    meta: dict[str, Any]

    def _display_figure(self) -> tuple[Image.Image, str]:
        m = self.meta
        return scatter_figure(self), f"{m['method']} map of {m['layer']!r} on {m['dataset']}"

    def save(self, folder: str | os.PathLike[str]) -> None:
        """``map.json`` (metadata) and ``codes.safetensors`` (the tensors), both atomic."""
        tensors = {
            "indices": self.indices, "labels": self.labels,
            "codes": self.codes.contiguous(), "points": self.points.contiguous(),
        }  # fmt: skip
        write_bytes_atomic(Path(folder) / "codes.safetensors", save(tensors))
        write_text_atomic(Path(folder) / "map.json", json.dumps(self.meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> CodeMap:
        path = Path(folder)
        if not (path / "map.json").is_file() or not (path / "codes.safetensors").is_file():
            raise ConvlensError(
                f"no map in {str(path)!r} (expected map.json and codes.safetensors); run "
                "`convlens map MODEL --dataset D --out DIR` first"
            )
        t = load_file(str(path / "codes.safetensors"))
        meta = json.loads((path / "map.json").read_text())
        return cls(t["indices"], t["labels"], t["codes"], t["points"], meta)


def sample_indices(size: int, n: int, seed: int = 0) -> list[int]:
    """``n`` distinct indices of ``range(size)``, a seeded random sample, in increasing order."""
    if n < 1:
        raise ConvlensError(f"--n must be at least 1, got {n}")
    if n >= size:
        return list(range(size))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=g)[:n].tolist())


def code_map(
    model: Model,
    dataset: ImageDataset,
    n: int = 2000,
    method: str = "tsne",
    layer: str | None = None,
    pool: str = "mean",
    seed: int = 0,
    n_jobs: int = 1,
    reader: CodeReader | None = None,
) -> CodeMap:
    """Codes of ``n`` sampled images embedded in 2-D by ``method``; ``reader`` computes them
    (default :func:`read_codes`, in this process; the Ray engine passes its own)."""
    if method not in METHODS:
        raise unknown_name("embedding method", method, METHODS)
    if len(dataset) == 0:
        raise ConvlensError(f"data set {dataset.name!r} is empty: there is nothing to map")
    name = layer or code_layer(model)
    sample = sample_indices(len(dataset), n, seed)
    codes, labels, kept, skipped = (reader or read_codes)(model, dataset, sample, name, pool)
    if skipped:
        warnings.warn(skipped_summary(skipped), stacklevel=2)
    points = torch.from_numpy(embed(codes, method, seed, n_jobs))
    meta = {
        "version": 1, "model": model.name, "dataset": dataset.name, "layer": name,
        "pool": pool, "method": method, "n": len(kept), "seed": seed,
        "classes": list(dataset.classes), "skipped": skipped,
    }  # fmt: skip
    return CodeMap(kept, labels, codes, points, meta)


def scatter_figure(cmap: CodeMap, size: int = 640) -> Image.Image:
    """The embedded codes as dots coloured by class, with a legend."""
    classes = cmap.meta.get("classes") or [str(c) for c in sorted(set(cmap.labels.tolist()))]
    palette = category_colors(len(classes))
    colors = [palette[int(c)] for c in cmap.labels]
    title = (
        f"{METHOD_NAMES[cmap.meta['method']]} of {len(cmap.indices):,} codes of layer "
        f"{cmap.meta['layer']!r} ({cmap.meta['dataset']}), coloured by class"
    )
    legend = list(zip(classes, palette, strict=True))
    radius = 2.5 if len(cmap.indices) <= 3000 else 1.5
    return scatter(cmap.points.numpy(), colors, size, radius, legend, title)


def image_grid_figure(
    cmap: CodeMap, dataset: ImageDataset, side: int | None = None, cell_size: int = 28
) -> Image.Image:
    """The images on a ``side × side`` grid, each cell holding the image assigned to it."""
    side = side or grid_side(len(cmap.indices))
    cells = assign_grid(cmap.points.numpy(), side, side)
    used = cells[cells >= 0]
    images, _ = dataset.get(cmap.indices[used].tolist())
    blank = torch.ones(images.shape[1:])
    tiles = []
    it = iter(images)
    for c in cells:
        tiles.append(next(it) if c >= 0 else blank)
    body = grid(tiles, side, cell_size=cell_size, gap=1)
    title = (
        f"{METHOD_NAMES[cmap.meta['method']]} grid: {len(used):,} of {len(cmap.indices):,} images, "
        f"each in the cell nearest its embedded code (an optimal assignment)"
    )
    return caption(body, title, size=14)


# --------------------------------------------------------------------------- neighbours


def nearest(
    codes: torch.Tensor, query: torch.Tensor, k: int = 8, metric: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices and distances of the ``k`` codes nearest ``query`` ``(D,)``, nearest first.

    ``cosine``: ``1 - <a, b> / (|a| |b|)``; ``euclidean``: ``|a - b|``.
    """
    if codes.dim() != 2 or query.shape != codes.shape[1:]:
        raise ConvlensError(
            f"query code of shape {tuple(query.shape)} does not match codes {tuple(codes.shape)}"
        )
    if metric == "cosine":
        a = torch.nn.functional.normalize(codes.double(), dim=1)
        b = torch.nn.functional.normalize(query.double(), dim=0)
        dist = 1.0 - a @ b
    elif metric == "euclidean":
        dist = (codes.double() - query.double()).norm(dim=1)
    else:
        raise unknown_name("distance", metric, ("cosine", "euclidean"))
    k = min(k, len(codes))
    order = torch.argsort(dist, stable=True)[:k]
    return order, dist[order]


def neighbors_figure(
    query_image: torch.Tensor,
    dataset: ImageDataset,
    indices: Sequence[int],
    distances: Sequence[float],
    classes: Sequence[str],
    cell_size: int = 96,
) -> Image.Image:
    """The query image, then its nearest data-set images with class and distance."""
    images, labels = dataset.get(list(indices))
    cells = [query_image, *images]
    names = [
        f"{classes[int(lab)] if int(lab) < len(classes) else lab}\nd={d:.3f}"
        for lab, d in zip(labels, distances, strict=True)
    ]
    return grid(
        cells,
        len(cells),
        labels=["query\n", *names],
        cell_size=cell_size,
        title="nearest neighbours in code space",
    )
