"""Maps of the codes: PCA against an eigendecomposition, the grid assignment against brute force,
neighbours against numpy, t-SNE keeps separated clusters apart."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convlens.analysis.embed import (
    CodeMap,
    assign_grid,
    code_layer,
    code_map,
    compute_codes,
    embed,
    image_grid_figure,
    nearest,
    pca,
    scatter_figure,
)
from convlens.data import TensorImages
from convlens.errors import ConvlensError
from convlens.model import Model


@pytest.fixture
def images() -> TensorImages:
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(30, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    return TensorImages(x, torch.arange(30) % 3, ["a", "b", "c"], name="random")


def test_pca_matches_covariance_eigenvectors() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    y = pca(x)
    xc = x - x.mean(0)
    w, v = np.linalg.eigh(np.cov(xc, rowvar=False))
    top = v[:, np.argsort(w)[::-1][:2]]
    ref = xc @ top
    for d in range(2):  # equal up to the sign of each axis
        assert min(np.abs(y[:, d] - ref[:, d]).max(), np.abs(y[:, d] + ref[:, d]).max()) < 1e-8


def test_grid_assignment_is_optimal() -> None:
    rng = np.random.default_rng(1)
    pts = rng.random((5, 2))
    cells = assign_grid(pts, 2, 2)
    assert len(set(cells.tolist())) == 4  # one distinct point per cell
    centres = np.array([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25]])
    unit = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))

    def cost(assign: tuple[int, ...]) -> float:
        return float(sum(((centres[c] - unit[p]) ** 2).sum() for c, p in enumerate(assign)))

    best = min(cost(perm) for perm in itertools.permutations(range(5), 4))
    assert cost(tuple(cells.tolist())) == pytest.approx(best)
    fewer = assign_grid(pts[:3], 2, 2)  # fewer points than cells: one cell stays empty
    assert sorted(fewer.tolist()) == [-1, 0, 1, 2]


def test_nearest_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    codes = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32))
    q = codes[7]
    idx, dist = nearest(codes, q, k=5)
    c = codes.numpy().astype(np.float64)
    cos = 1 - c @ c[7] / (np.linalg.norm(c, axis=1) * np.linalg.norm(c[7]))
    assert idx.tolist() == np.argsort(cos, kind="stable")[:5].tolist()
    assert idx[0] == 7 and dist[0] == pytest.approx(0.0, abs=1e-12)
    _, dist_e = nearest(codes, q, k=3, metric="euclidean")
    ref = np.linalg.norm(c - c[7], axis=1)
    np.testing.assert_allclose(dist_e.numpy(), np.sort(ref)[:3], atol=1e-12)
    with pytest.raises(ConvlensError, match="cosine"):
        nearest(codes, q, metric="manhattan")


def test_tsne_keeps_separated_clusters_apart() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 20)) * 20
    labels = np.repeat(np.arange(3), 30)
    x = centres[labels] + rng.normal(size=(90, 20))
    y = embed(x, "tsne", seed=0)
    assert y.shape == (90, 2)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).all()  # each point's 2-D neighbour is its class


def test_codes_are_the_penultimate_layer(tiny_vgg: Model, images: TensorImages) -> None:
    assert code_layer(tiny_vgg) == "flatten"
    x, _ = images.get([0, 1, 2])
    net = tiny_vgg.net
    assert isinstance(net, nn.Sequential)
    with torch.inference_mode():
        ref = net[:-1](tiny_vgg.normalize(x))  # everything before the classifier
    codes = compute_codes(tiny_vgg, images, [0, 1, 2], batch_size=2)
    torch.testing.assert_close(codes, ref)
    pooled = compute_codes(tiny_vgg, images, [0, 1], layer="relu_2_2", pool="max")
    assert pooled.shape == (2, 10)


def test_code_map_round_trip_and_figures(
    tiny_vgg: Model, images: TensorImages, tmp_path: Path
) -> None:
    cmap = code_map(tiny_vgg, images, n=20, method="pca")
    assert cmap.points.shape == (20, 2) and len(set(cmap.indices.tolist())) == 20
    cmap.save(tmp_path)
    back = CodeMap.load(tmp_path)
    assert torch.equal(back.points, cmap.points) and back.meta == cmap.meta
    fig = scatter_figure(cmap, size=200)
    assert fig.width > 200
    grid = image_grid_figure(cmap, images, side=4, cell_size=28)
    assert grid.width >= 4 * 28
    with pytest.raises(ConvlensError, match="embedding method"):
        code_map(tiny_vgg, images, n=10, method="mds")
    with pytest.raises(ConvlensError, match="no map"):
        CodeMap.load(tmp_path / "missing")
