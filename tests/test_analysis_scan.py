"""The streaming scan: top-k against an exhaustive numpy computation, merge, resume, patches."""

from __future__ import annotations

import copy
import importlib
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.analysis import load_scan, map_batch, merge, merge_states, scan, scan_indices
from convlens.analysis.patches import crop_box, hit_box, layer_overview, write_patch_figures
from convlens.analysis.scan import Hit, ScanResult
from convlens.data import TensorImages
from convlens.data.folder import FolderImages
from convlens.errors import ConvlensError
from convlens.model import Model
from convlens.probe import capture

LAYERS = ["relu_1_1", "conv_2_2", "max_pool_2", "output"]


@pytest.fixture
def images() -> TensorImages:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(37, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    x[5] = x[3]  # an exact duplicate: equal values on two images, a tie to break
    return TensorImages(x, torch.arange(37) % 3, ["a", "b", "c"], name="random")


def activations(model: Model, ds: TensorImages, layer: str, batch_size: int) -> np.ndarray:
    """The layer's outputs for the whole data set, computed in the scan's batches (a conv's
    float rounding may depend on the batch size)."""
    parts = []
    with torch.inference_mode(), capture(model, [layer]) as cap:
        for start in range(0, len(ds), batch_size):
            model(ds.get(range(start, min(start + batch_size, len(ds))))[0])
            parts.append(cap[layer].float().numpy())
    return np.concatenate(parts)


def exhaustive(
    model: Model, ds: TensorImages, layer: str, k: int, bs: int
) -> dict[str, np.ndarray]:
    """All activations at once, sorted per channel with numpy's lexsort."""
    a = activations(model, ds, layer, bs)
    a = a.reshape(*a.shape, 1, 1) if a.ndim == 2 else a
    B, C, H, W = a.shape
    img = np.repeat(np.arange(B), H * W)
    pos = np.tile(np.arange(H * W), B)
    out: dict[str, list[np.ndarray]] = {"values": [], "images": [], "positions": []}
    for c in range(C):
        v = a[:, c].reshape(-1)
        order = np.lexsort((pos, img, -v))[:k]  # value desc, then image, then position
        out["values"].append(v[order])
        out["images"].append(img[order])
        out["positions"].append(pos[order])
    flat = a.transpose(1, 0, 2, 3).reshape(C, -1).astype(np.float64)
    res = {key: np.stack(vals) for key, vals in out.items()}
    res["mean"] = flat.mean(1)
    res["std"] = flat.std(1)
    res["max"] = flat.max(1)
    res["frac_positive"] = (flat > 0).mean(1)
    res["frac_silent"] = (a.reshape(B, C, -1).max(2) <= 0).mean(0)
    return res


def assert_same_state(a: ScanResult | dict, b: ScanResult | dict) -> None:
    sa = a.state if isinstance(a, ScanResult) else a
    sb = b.state if isinstance(b, ScanResult) else b
    assert set(sa) == set(sb)
    for name in sa:
        for key in ("values", "images", "positions", "maximum", "positive", "fired"):
            assert torch.equal(getattr(sa[name], key), getattr(sb[name], key)), (name, key)
        # sums are float32 within a batch: a different cut changes their last bits
        torch.testing.assert_close(sa[name].total, sb[name].total, rtol=1e-5, atol=1e-6)
        assert sa[name].n_images == sb[name].n_images


def test_streaming_topk_equals_exhaustive(tiny_vgg: Model, images: TensorImages) -> None:
    k = 5
    res = scan(tiny_vgg, images, LAYERS, k=k, batch_size=6, progress=False)
    for layer in LAYERS:
        ref = exhaustive(tiny_vgg, images, layer, k, 6)
        lay = res.state[layer]
        np.testing.assert_array_equal(lay.values.numpy(), ref["values"])
        np.testing.assert_array_equal(lay.images.numpy(), ref["images"])
        np.testing.assert_array_equal(lay.positions.numpy(), ref["positions"])
        st = res.stats(layer)
        np.testing.assert_allclose(st["mean"].numpy(), ref["mean"], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(st["max"].numpy(), ref["max"])
        np.testing.assert_allclose(st["frac_positive"].numpy(), ref["frac_positive"])
        np.testing.assert_allclose(st["frac_silent"].numpy(), ref["frac_silent"])
    dead = res.state["relu_1_1"].values[:, 0] <= 0
    assert not bool(dead.all())  # the fixture has live units ...
    hits = res.hits("conv_2_2", 0)
    assert [h.value for h in hits] == sorted((h.value for h in hits), reverse=True)


@pytest.mark.parametrize("row_units, block, gather", [(1, 1 << 17, 1), (64, 2048, 1 << 20)])
def test_streaming_scan_search_paths_equal_exhaustive(
    tiny_vgg: Model,
    images: TensorImages,
    monkeypatch: pytest.MonkeyPatch,
    row_units: int,
    block: int,
    gather: int,
) -> None:
    """The scan's shortcuts (a floor from the running state, row-sized search units, stats a
    block of rows at a time, small outputs gathered over batches or not), forced on small
    maps, against the numpy lexsort of everything; the fixture's dead ReLU units and
    duplicated image give the tie cases."""
    scan_module = importlib.import_module("convlens.analysis.scan")  # the function shadows it
    import convlens.analysis.state as state_module

    monkeypatch.setattr(scan_module, "GATHER", gather)
    monkeypatch.setattr(state_module, "ROW_UNITS", row_units)
    monkeypatch.setattr(state_module, "BLOCK", block)
    k = 6
    res = scan(tiny_vgg, images, LAYERS, k=k, batch_size=5, progress=False)
    for layer in LAYERS:
        ref = exhaustive(tiny_vgg, images, layer, k, 5)
        lay = res.state[layer]
        np.testing.assert_array_equal(lay.values.numpy(), ref["values"])
        np.testing.assert_array_equal(lay.images.numpy(), ref["images"])
        np.testing.assert_array_equal(lay.positions.numpy(), ref["positions"])
        st = res.stats(layer)
        np.testing.assert_allclose(st["mean"].numpy(), ref["mean"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(st["std"].numpy(), ref["std"], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(st["max"].numpy(), ref["max"])
        np.testing.assert_allclose(st["frac_positive"].numpy(), ref["frac_positive"])
        np.testing.assert_allclose(st["frac_silent"].numpy(), ref["frac_silent"])


def test_topk_ties_prefer_lower_image_and_position() -> None:
    x = torch.zeros(3, 2, 2, 2)  # all equal: the first k by (image, position) must win
    x[2, 1, 1, 1] = 1.0
    s = map_batch(x, torch.tensor([7, 3, 5]), k=3)  # indices out of order on purpose
    assert s.images[0].tolist() == [3, 3, 3] and s.positions[0].tolist() == [0, 1, 2]
    assert s.values[1].tolist() == [1.0, 0.0, 0.0]
    assert s.images[1].tolist() == [5, 3, 3]


def test_batch_topk_with_and_without_the_image_prefilter() -> None:
    """Channels whose (k+1)-th image maximum is below the k-th search only k images; channels
    with a tie there search all; both must equal a numpy lexsort of everything."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 4, 5, 5, generator=g).round(decimals=1)  # many equal values
    x[:, 1] = x[:, 1].clamp(max=0.5)  # a tie at the threshold: every image reaches 0.5
    x[:, 2] = 0.0  # all equal
    idx = torch.arange(100, 140)
    s = map_batch(x, idx, k=6)
    a = x.numpy()
    img, pos = np.repeat(idx.numpy(), 25), np.tile(np.arange(25), 40)
    for c in range(4):
        v = a[:, c].reshape(-1)
        order = np.lexsort((pos, img, -v))[:6]
        assert s.values[c].tolist() == v[order].tolist()
        assert s.images[c].tolist() == img[order].tolist()
        assert s.positions[c].tolist() == pos[order].tolist()


def test_merge_of_halves_equals_whole(tiny_vgg: Model, images: TensorImages) -> None:
    whole = scan(tiny_vgg, images, LAYERS, k=4, batch_size=8, progress=False)
    a, _ = scan_indices(tiny_vgg, images, LAYERS, range(16), k=4, batch_size=8)
    b, _ = scan_indices(tiny_vgg, images, LAYERS, range(16, 37), k=4, batch_size=8)
    assert_same_state(whole, merge_states(a, b))
    assert_same_state(whole, merge_states(b, a))  # commutative


def test_merge_of_uneven_splits_equals_one_map(tiny_vgg: Model, images: TensorImages) -> None:
    """Splits inside a batch, of uneven sizes: the merge equals the map of everything."""
    act = torch.from_numpy(activations(tiny_vgg, images, "relu_1_1", 37))
    idx = torch.arange(37)
    whole = map_batch(act, idx, k=7)
    for cuts in ((13,), (1, 2, 30), (20, 36)):
        bounds = [0, *cuts, 37]
        parts = [map_batch(act[a:b], idx[a:b], k=7) for a, b in itertools.pairwise(bounds)]
        merged = parts[0]
        for p in parts[1:]:
            merged = merge(merged, p)
        assert_same_state({"x": whole}, {"x": merged})


def test_merge_is_associative() -> None:
    g = torch.Generator().manual_seed(0)
    parts = [
        map_batch(torch.randn(3, 4, 5, 5, generator=g).round(), torch.arange(3) + 3 * i, k=6)
        for i in range(3)
    ]
    left = merge(merge(parts[0], parts[1]), parts[2])
    right = merge(parts[0], merge(parts[1], parts[2]))
    assert_same_state({"x": left}, {"x": right})


def test_interrupted_scan_resumes_to_the_same_result(
    tiny_vgg: Model, images: TensorImages, tmp_path: Path
) -> None:
    full = scan(tiny_vgg, images, LAYERS, k=4, batch_size=5, progress=False)

    def stop_after_three_batches(done: int, total: int) -> None:
        if done >= 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(tiny_vgg, images, LAYERS, k=4, batch_size=5, out=tmp_path, save_every=0,
             progress=stop_after_three_batches)  # fmt: skip
    meta, _ = load_scan(tmp_path)
    assert meta.images_done == 15 and not meta.complete
    with pytest.raises(ConvlensError, match="--resume"):
        scan(tiny_vgg, images, LAYERS, k=4, batch_size=5, out=tmp_path, progress=False)
    seen: list[int] = []
    resumed = scan(tiny_vgg, images, LAYERS, k=4, batch_size=5, out=tmp_path, resume=True,
                   progress=lambda d, t: seen.append(d))  # fmt: skip
    assert seen[0] == 20  # it started after the saved prefix
    assert_same_state(full, resumed)
    assert_same_state(full, ScanResult.load(tmp_path))
    assert resumed.meta.complete


def test_finished_scan_is_reused_without_recomputing(
    tiny_vgg: Model, images: TensorImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = scan(tiny_vgg, images, ["conv_2_2"], k=3, out=tmp_path, progress=False)

    def no_forward(*args: object) -> None:
        raise AssertionError("the model ran again")

    monkeypatch.setattr(tiny_vgg.net, "forward", no_forward)
    again = scan(tiny_vgg, images, ["conv_2_2"], k=3, out=tmp_path, progress=False)
    assert_same_state(first, again)
    with pytest.raises(ConvlensError, match="different scan"):
        scan(tiny_vgg, images, ["conv_2_2"], k=5, out=tmp_path, progress=False)


def test_receptive_field_box_is_exact(tiny_vgg: Model, images: TensorImages) -> None:
    """Every pixel whose change alters the activation lies in the box, and every row and
    column of the box (inside the image) holds such a pixel for some input."""
    model = copy.deepcopy(tiny_vgg)
    with torch.no_grad():  # all-positive weights keep every ReLU open: only the RF limits
        for p in model.parameters():
            p.abs_().add_(0.01)
    layers = ["conv_1_2", "max_pool_1", "conv_2_1", "conv_2_2"]
    res = scan(model, images, layers, k=2, progress=False)
    probe = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    for layer in layers:
        H, W = model.graph[layer].output_shape[1:]
        hits = [*res.hits(layer, 1)[:1], Hit(0.0, 0, 0, 0), Hit(0.0, 0, H - 1, W - 1)]
        for hit in hits:
            top, left, bottom, right = hit_box(model, layer, hit)
            x = probe.clone().requires_grad_(True)
            with capture(model, [layer]) as cap:
                model(x)
                act = cap[layer][:, 1, hit.row, hit.col].sum()
            (grad,) = torch.autograd.grad(act, x)
            reach = grad.abs().sum((0, 1)) > 0  # (28, 28): pixels that change it
            rows, cols = reach.any(1).nonzero()[:, 0], reach.any(0).nonzero()[:, 0]
            # inside the box, and tight: every row/column of the box in the image is reached
            assert rows.tolist() == list(range(max(top, 0), min(bottom, 28))), (layer, hit)
            assert cols.tolist() == list(range(max(left, 0), min(right, 28))), (layer, hit)


def test_crop_box_pads_outside_the_image() -> None:
    img = torch.arange(16.0).view(1, 4, 4)
    crop = crop_box(img, (-1, -1, 2, 2), fill=-5.0)
    assert crop.shape == (1, 3, 3)
    assert crop[0, 0].tolist() == [-5.0, -5.0, -5.0]
    assert crop[0, 1:, 1:].tolist() == [[0.0, 1.0], [4.0, 5.0]]
    assert torch.equal(crop_box(img, (1, 1, 3, 4)), img[:, 1:3, 1:4])


def test_patch_figures_are_written(tiny_vgg: Model, images: TensorImages, tmp_path: Path) -> None:
    res = scan(tiny_vgg, images, ["conv_2_2", "output"], k=3, progress=False)
    with pytest.warns(UserWarning, match="no spatial extent"):
        paths = write_patch_figures(res, images, tiny_vgg, tmp_path)
    assert (tmp_path / "patches" / "conv_2_2.png") in paths
    assert (tmp_path / "patches" / "conv_2_2" / "unit-009.png") in paths
    with Image.open(tmp_path / "patches" / "conv_2_2.png") as im:
        assert im.width > 3 * 48 and im.height > 10 * 24
    overview = layer_overview(res, images, tiny_vgg, "conv_2_2", units=[0, 1], n=3)
    assert overview.height < layer_overview(res, images, tiny_vgg, "conv_2_2", n=3).height


def test_bad_inputs_give_clear_errors(tiny_vgg: Model, images: TensorImages) -> None:
    empty = TensorImages(torch.zeros(0, 1, 28, 28), torch.zeros(0), ["a"], name="nothing")
    with pytest.raises(ConvlensError, match="empty"):
        scan(tiny_vgg, empty, ["conv_2_2"], progress=False)
    with pytest.raises(ConvlensError, match="conv_2_2"):
        scan(tiny_vgg, images, ["conv_2_3"], progress=False)
    with pytest.raises(ConvlensError, match="at least 1"):
        scan(tiny_vgg, images, ["conv_2_2"], k=0, progress=False)
    rgb = TensorImages(torch.zeros(2, 3, 28, 28), torch.zeros(2), ["a"])
    with pytest.raises(ConvlensError, match=r"\(3, 28, 28\)"):
        scan(tiny_vgg, rgb, ["conv_2_2"], progress=False)


def test_unreadable_images_are_skipped_and_named(tiny_vgg: Model, tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "b" / "2.png").write_bytes(b"not a png at all")
    ds = FolderImages(tmp_path, shape=(1, 28, 28))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): .*b/2.png"):
        res = scan(tiny_vgg, ds, ["conv_2_2"], k=3, batch_size=3, progress=False)
    assert res.meta.skipped[0]["index"] == 6
    assert res.state["conv_2_2"].n_images == 7
    assert 6 not in res.state["conv_2_2"].images.unique().tolist()
    for f in (tmp_path / "a").iterdir():
        f.write_bytes(b"broken")
    only_a = FolderImages(tmp_path, shape=(1, 28, 28))
    only_a.items = only_a.items[:4]  # the four broken files
    with pytest.raises(ConvlensError, match="none of the 4 images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan(tiny_vgg, only_a, ["conv_2_2"], progress=False)
