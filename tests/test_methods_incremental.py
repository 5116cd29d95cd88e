"""Incremental occlusion (Krypton) on branching networks against full forward passes, and the
approximate mode against the exact maps."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from convlens.io.spec import InputSpec
from convlens.methods.incremental import IncrementalRunner, incremental_plan
from convlens.model import Model, build
from tolerance import Tolerance

# logits of He-initialized networks reach ~30: float32 rounding of the occluded and full
# passes differs by up to a few 1e-5 there
TOL: Tolerance = {"atol": 1e-4, "rtol": 1e-5}


def _randomize(net: nn.Module) -> None:
    """He-initialized convs (torch's default init shrinks activations layer after layer,
    leaving logits that barely notice a patch) and batch norms with non-trivial statistics."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)


def resnet18(width: int = 64, size: int = 64) -> Model:
    m = build(f"resnet18:width={width},input_size={size},num_classes=10", seed=0)
    _randomize(m.net)
    return m.eval()


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expansion, 3×3 depthwise (stride, dilation), 1×1 linear
    projection, a residual addition when the shapes allow it."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                    nn.ReLU6(inplace=True))  # fmt: skip
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride, dilation, dilation, groups=mid, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
        )  # fmt: skip
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileNetLike(nn.Module):
    """Asymmetric "same" padding before a stride-2 stem (as Keras exports it), inverted
    residuals with depthwise convs, hardswish, global pooling and a functional flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.stem = nn.Conv2d(3, 8, 3, 2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, 1, 2),
            InvertedResidual(8, 12, 2, 3),
            InvertedResidual(12, 12, 1, 3, dilation=2),
            InvertedResidual(12, 16, 2, 2),
        )
        self.head = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.bn(self.stem(self.pad(x))))
        x = self.head(self.blocks(x)).relu()
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionBlock(nn.Module):
    """Four branches concatenated along channels: 1×1; 1×1 → 3×3; 1×1 → 5×5; 3×3 max pool
    → 1×1."""

    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(cin, c, 1)
        self.b3 = nn.Sequential(nn.Conv2d(cin, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(cin, c, 1), nn.ReLU(), nn.Conv2d(c, c, 5, padding=2))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1).relu()


class InceptionLike(nn.Module):
    """A stem, two inception blocks around a reduction (a strided conv concatenated with a
    ceil-mode max pool), an average pool that does not count its padding, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.inc1 = InceptionBlock(8, 4)
        self.reduce_conv = nn.Conv2d(16, 8, 3, 2)
        self.reduce_pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inc2 = InceptionBlock(24, 6)
        self.pool = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(24 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc1(self.stem(x))
        x = torch.cat([self.reduce_conv(x), self.reduce_pool(x)], 1)
        x = self.pool(self.inc2(x))
        return self.fc(x.flatten(1))


def mobilenet_like() -> Model:
    torch.manual_seed(0)
    net = MobileNetLike()
    _randomize(net)
    return Model(net.eval(), InputSpec(3, 48, 48), name="mobilenet-like")


def inception_like() -> Model:
    torch.manual_seed(0)
    net = InceptionLike()
    _randomize(net)
    return Model(net.eval(), InputSpec(3, 30, 30), name="inception-like")


def occlusion(model: Model, x: torch.Tensor, **kw: Any) -> convlens.Attribution:
    return convlens.explain(model, x, "occlusion", measure="logit", **kw)


def assert_equal_to_full_passes(model: Model, x: torch.Tensor, windows: list[tuple]) -> None:
    for window, stride in windows:
        kw = dict(window=window, stride=stride, target=[0, 1], chunk_size=24)
        full = occlusion(model, x, incremental=False, **kw)
        inc = occlusion(model, x, incremental=True, **kw)
        assert inc.params["incremental"] and not full.params["incremental"]
        for key in ("grid_logit", "grid_probability"):
            torch.testing.assert_close(inc.extra[key], full.extra[key], **TOL)


@pytest.mark.slow
def test_resnet18_equals_full_passes() -> None:
    model = resnet18()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # windows that tile, that do not (64 − 13 is not a multiple of 7), a pixel, the image
    assert_equal_to_full_passes(model, x, [(16, 16), (13, 7), (1, 23), (64, 5)])


def test_narrow_resnet18_small_strides() -> None:
    model = resnet18(width=8, size=48)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    assert_equal_to_full_passes(model, x, [(8, 3), (5, 4), ((9, 4), (2, 5))])


def test_mobilenet_like_equals_full_passes() -> None:
    model = mobilenet_like()
    plan = incremental_plan(model)
    assert plan.reason is None
    assert plan.kinds["pad"] == "pad" and plan.kinds["blocks_0_depthwise_0"] == "window"
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    assert_equal_to_full_passes(model, x, [(8, 6), (11, 5), (3, 2), (48, 1)])


def test_inception_like_equals_full_passes() -> None:
    model = inception_like()
    plan = incremental_plan(model)
    assert plan.reason is None and plan.kinds["cat"] == "cat" and plan.kinds["pool"] == "window"
    x = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(4))
    assert_equal_to_full_passes(model, x, [(6, 4), (7, 5), (1, 3), (30, 1)])


class GroupNormInside(nn.Module):
    """Group norm mixes all positions: everything after it must be computed in full."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 7 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.norm(self.conv1(x)).relu())
        return self.fc(x.flatten(1) * 2.0)


def test_unknown_layers_run_in_full() -> None:
    torch.manual_seed(0)
    model = Model(GroupNormInside().eval(), InputSpec(3, 16, 16), name="gn")
    assert incremental_plan(model).kinds["norm"] == "dense"
    x = torch.rand(2, 3, 16, 16)
    assert_equal_to_full_passes(model, x, [(4, 3), (5, 5)])


class AliasedInPlace(nn.Module):
    """``relu_`` writes ``a`` in place although ``b`` reads it afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        r = torch.relu_(a)
        b = a * 2
        return self.fc(torch.cat([r.mean((2, 3)), b.amax((2, 3))], 1))


def test_refused_networks_run_full_passes() -> None:
    torch.manual_seed(0)
    model = Model(AliasedInPlace().eval(), InputSpec(3, 12, 12), name="aliased")
    reason = incremental_plan(model).reason
    assert reason is not None and "in place" in reason
    x = torch.rand(1, 3, 12, 12)
    a = occlusion(model, x, window=4, stride=2, incremental=True)
    assert not a.params["incremental"] and "writes in place" in a.notes[0]
    b = occlusion(model, x, window=4, stride=2, incremental=False)
    torch.testing.assert_close(a.extra["grid_logit"], b.extra["grid_logit"])


# --------------------------------------------------------------------------- approximate


def _quality(exact: torch.Tensor, approx: torch.Tensor) -> tuple[float, float]:
    """Worst per-example Pearson correlation, and the largest error relative to the largest
    exact drop of that example."""
    corr, err = 1.0, 0.0
    for e, a in zip(exact.flatten(1), approx.flatten(1), strict=True):
        corr = min(corr, float(torch.corrcoef(torch.stack([e, a]))[0, 1]))
        err = max(err, float((e - a).abs().max() / e.abs().max()))
    return corr, err


# The bound stated in Occlusion's docstring, on the three networks (windows 3-4× the stride).
APPROX_CASES = [
    (lambda: resnet18(width=16, size=64), 64, 12, 3),
    (mobilenet_like, 48, 8, 2),
    (inception_like, 30, 6, 2),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(3), ids=["resnet18", "mobilenet", "inception"])
def test_approximate_mode_error_bound(case: int) -> None:
    make, size, window, stride = APPROX_CASES[case]
    model = make()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    kw = dict(window=window, stride=stride)
    exact = occlusion(model, x, **kw).extra["grid_logit"]
    a = occlusion(model, x, approx=True, **kw)
    corr, err = _quality(exact, a.extra["grid_logit"])
    assert corr >= 0.7 and err <= 1.0, (corr, err)
    assert float((a.extra["grid_logit"] - exact).abs().max()) > 1e-4  # it is approximate
    evaluated = a.extra["evaluated"]
    assert 0.3 < float(evaluated.float().mean()) < 0.6  # coarse grid plus the drill-down
    # with tau = 1 the evaluated positions are exact
    b = occlusion(model, x, approx=True, tau=1.0, **kw)
    ev = b.extra["evaluated"]
    torch.testing.assert_close(b.extra["grid_logit"][ev], exact[ev], **TOL)


def test_approximate_mode_without_approximations_is_exact() -> None:
    model = inception_like()
    x = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(6))
    exact = occlusion(model, x, window=6, stride=3)
    a = occlusion(model, x, window=6, stride=3, approx=True, tau=1.0, drill=1.0)
    assert bool(a.extra["evaluated"].all())
    torch.testing.assert_close(a.extra["grid_logit"], exact.extra["grid_logit"], **TOL)
    torch.testing.assert_close(a.values, exact.values, **TOL)


def test_projective_field_threshold_changes_the_map_and_is_chunk_independent() -> None:
    model = mobilenet_like()
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(7))
    kw = dict(window=8, stride=4, approx=True, tau=0.3, drill=1.0, coarse=1)
    a = occlusion(model, x, chunk_size=5, **kw)
    b = occlusion(model, x, chunk_size=500, **kw)
    torch.testing.assert_close(a.extra["grid_logit"], b.extra["grid_logit"], **TOL)
    exact = occlusion(model, x, window=8, stride=4).extra["grid_logit"]
    assert not torch.allclose(a.extra["grid_logit"], exact, atol=1e-3)  # τ really cuts
    corr, _ = _quality(exact, a.extra["grid_logit"])
    assert corr > 0.3


def test_drill_down_with_full_passes_matches_incremental() -> None:
    """The drill-down's per-example positions give the same map through full passes."""
    model = inception_like()
    x = torch.rand(3, 3, 30, 30, generator=torch.Generator().manual_seed(8))
    kw = dict(window=6, stride=2, approx=True, tau=1.0, drill=0.3, chunk_size=7)
    a = occlusion(model, x, **kw)
    b = occlusion(model, x, incremental=False, **kw)
    assert a.params["incremental"] and not b.params["incremental"]
    assert torch.equal(a.extra["evaluated"], b.extra["evaluated"])
    torch.testing.assert_close(a.extra["grid_logit"], b.extra["grid_logit"], **TOL)


class SamePadding(nn.Module):
    """String paddings ("same" with an even kernel puts the odd row last, dilated "same",
    "valid"), so that a cone fills the map and the layer runs on whole maps."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 4, padding="same")
        self.c2 = nn.Conv2d(6, 6, 3, padding="same", dilation=2)
        self.c3 = nn.Conv2d(6, 4, 3, padding="valid")
        self.fc = nn.Linear(4 * 14 * 14, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c3(self.c2(self.c1(x).relu()).relu())
        return self.fc(x.flatten(1))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("net", ["resnet", "mobilenet", "same-padding"])
def test_channels_last_engine_equals_full_passes(net: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The NHWC engine (the default), the NCHW engine and an NHWC model with NHWC images all
    give the full passes' maps; the engine's NHWC weights are a private copy."""
    import copy

    import convlens.methods.incremental as inc

    if net == "resnet":
        model, size, windows = resnet18(width=8, size=32), 32, [(8, 4), (32, 5)]
    elif net == "mobilenet":
        model, size, windows = mobilenet_like(), 48, [(8, 4), (40, 8)]
    else:
        torch.manual_seed(3)
        model, size = Model(SamePadding().eval(), InputSpec(3, 16, 16), name="same"), 16
        windows = [(4, 3), (12, 4)]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    wholes: list[int] = []  # layers that ran on whole maps through the engine's shortcut
    conv_op = inc._conv_op

    def counting(*a: Any) -> inc.WindowOp:
        op = conv_op(*a)
        whole = op.whole
        assert whole is not None

        def run(r: torch.Tensor) -> torch.Tensor:
            wholes.append(1)
            return whole(r)

        op.whole = run
        return op

    monkeypatch.setattr(inc, "_conv_op", counting)
    # torch accepts memory_format here; its type stubs list no overload with it
    nhwc_net = copy.deepcopy(model.net).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    nhwc = Model(nhwc_net, model.spec, name="nhwc")
    for window, stride in windows:
        kw = dict(window=window, stride=stride, target=[0, 1], chunk_size=10)
        full = occlusion(model, x, incremental=False, channels_last=False, **kw)
        runs = [
            occlusion(model, x, **kw),
            occlusion(model, x, channels_last=False, **kw),
            occlusion(nhwc, x.contiguous(memory_format=torch.channels_last), **kw),
        ]
        for run in runs:
            assert run.params["incremental"]
            torch.testing.assert_close(run.extra["grid_logit"], full.extra["grid_logit"], **TOL)
    # the large windows' cones fill some maps: those layers ran whole, with their own padding
    assert wholes
    for m in model.net.modules():  # the model's own weights were not converted
        if isinstance(m, nn.Conv2d):
            assert m.weight.is_contiguous()


# --------------------------------------------------------------------------- batch norm folding


class FoldCases(nn.Module):
    """Batch norms that fold into the convolution before them (``c1``/``b1``) and ones that
    must not: after a ReLU (``b2``), after a conv whose output a residual addition also reads
    (``b3``), and a train-mode one (``b4``, set by the test). ``c3``'s output also feeds a
    ReLU whose input has another reader, which must not run in place."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8, affine=False)
        self.c4, self.b4 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = self.b2(F.relu(self.c2(x)))
        y = self.c3(x)
        x = self.b3(y) + y.relu() + y
        x = self.b4(self.c4(x)).relu()
        return self.fc(x.mean((2, 3)))


def _runner_vs_full_passes(
    model: Model, x: torch.Tensor, window: int, stride: int, **kw: Any
) -> tuple[IncrementalRunner, torch.Tensor, torch.Tensor]:
    """The engine's output with a window at every position, and the model's on the occluded
    images (window-major rows)."""
    from convlens.methods.occlusion import window_positions

    plan = incremental_plan(model)
    runner = IncrementalRunner(model, plan, x, **kw)
    H, W = x.shape[-2:]
    corners = window_positions((H, W), (window, window), (stride, stride))
    fill = torch.full((3, 1, 1), 0.3)
    got = runner.run(corners, (window, window), fill)
    images = []
    for t, left in corners:
        occluded = x.clone()
        occluded[:, :, t : t + window, left : left + window] = fill
        images.append(occluded)
    with torch.inference_mode():
        want = model(torch.cat(images))
    return runner, got, want


@pytest.mark.parametrize("channels_last", [True, False])
def test_batch_norm_folding_equals_full_passes(channels_last: bool) -> None:
    model = resnet18(width=8, size=32)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    for fold in (True, False):
        runner, got, want = _runner_vs_full_passes(
            model, x, 8, 4, channels_last=channels_last, fold_batch_norm=fold
        )
        # every conv of ResNet-18 is followed by its own batch norm
        assert len(runner.folds) == (20 if fold else 0)
        torch.testing.assert_close(got, want, **TOL)
    for m in model.net.modules():  # the model's weights are left as they were
        if isinstance(m, nn.Conv2d):
            assert m.bias is None and m.weight.is_contiguous()


def test_batch_norm_folds_only_after_a_conv_it_alone_reads() -> None:
    torch.manual_seed(12)
    net = FoldCases()
    _randomize(net)
    model = Model(net.eval(), InputSpec(3, 16, 16), name="folds")
    net.b4.train()  # batch statistics: not a per-channel map, never folded
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(13))
    runner, got, want = _runner_vs_full_passes(model, x, 5, 3, channels_last=True)
    folds = runner.folds
    assert {conv: bn.name for conv, bn in folds.items()} == {"c1": "b1"}
    # b4 in train mode normalizes each chunk by its own statistics: compare without it
    net.b4.eval()
    runner, got, want = _runner_vs_full_passes(model, x, 5, 3, channels_last=True)
    assert {conv: bn.name for conv, bn in runner.folds.items()} == {
        "c1": "b1",
        "c4": "b4",
    }
    torch.testing.assert_close(got, want, **TOL)
