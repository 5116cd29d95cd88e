"""The layer graph against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens.errors import ConvlensError, NotFoundError
from convlens.io.spec import InputSpec
from convlens.model import Layer, Model, ReceptiveField, build, load_model, output_size


def shapes(model: Model, kind: str) -> list[int]:
    return [lay.output_shape[-1] for lay in model.graph if lay.kind == kind]


def rf_of(layer: Layer) -> ReceptiveField:
    """The layer's receptive field (every layer these tests read one from has one)."""
    assert layer.rf is not None, f"{layer.name} has no receptive field"
    return layer.rf


def test_tiny_vgg_matches_cnn_explainer_by_hand() -> None:
    model = build("tiny-vgg")
    graph = model.graph
    assert graph.total_params == 19_920
    # 64 -> conv 62 -> conv 60 -> pool 30 -> conv 28 -> conv 26 -> pool 13
    sizes = [lay.output_shape[-1] for lay in graph if lay.kind in ("conv", "maxpool")]
    assert sizes == [62, 60, 30, 28, 26, 13]
    assert graph["output"].params == 13 * 13 * 10 * 10 + 10
    assert graph["conv_1_1"].macs == 62 * 62 * 10 * 3 * 9
    assert graph.is_chain


def test_padded_conv_parameter_count() -> None:
    net = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1))
    model = Model(nn.Sequential(net, nn.Flatten()), InputSpec(3, 32, 32))
    conv = next(lay for lay in model.graph if lay.kind == "conv")
    assert conv.params == 3 * 3 * 3 * 10 + 10 == 280
    assert conv.output_shape == (10, 32, 32)


def test_lecture_sample_net() -> None:
    """[conv-relu-conv-relu-pool] x 3 with padding 1 on 32x32x3: 280, then 910 per conv,
    8x8x10 after two blocks and a 1,610-parameter head from 4x4x10."""
    model = build("tiny-vgg:input_size=32,padding=1,blocks=3")
    convs = [lay.params for lay in model.graph if lay.kind == "conv"]
    assert convs == [280, 910, 910, 910, 910, 910]
    assert model.graph["max_pool_2"].output_shape == (10, 8, 8)
    assert model.graph["max_pool_3"].output_shape == (10, 4, 4)
    assert model.graph["output"].params == 1_610


def test_alexnet_parameter_count() -> None:
    graph = build("alexnet").graph
    assert graph.total_params == 62_378_344
    assert graph["conv1"].output_shape == (96, 55, 55)
    assert graph["pool5"].output_shape == (256, 6, 6)


def test_vgg16_and_resnet18_match_published_counts() -> None:
    assert build("vgg16").graph.total_params == 138_357_544
    graph = build("resnet18").graph
    assert graph.total_params == 11_689_512
    assert not graph.is_chain
    adds = [lay for lay in graph if lay.kind == "add"]
    assert len(adds) == 8 and all(len(lay.inputs) == 2 for lay in adds)
    # the well-known receptive field of ResNet-18's last block
    assert rf_of(graph.last_spatial()).size == (435, 435)


def test_torchvision_alexnet_variant_by_hand() -> None:
    """torchvision's AlexNet ("one weird trick", 2014): 64-192-384-256-256 filters, no LRN."""
    graph = build("alexnet:variant=owt").graph
    convs = [3 * 64 * 121 + 64, 64 * 192 * 25 + 192, 192 * 384 * 9 + 384, 384 * 256 * 9 + 256,
             256 * 256 * 9 + 256]  # fmt: skip
    fcs = [9216 * 4096 + 4096, 4096 * 4096 + 4096, 4096 * 1000 + 1000]
    assert [lay.params for lay in graph if lay.kind in ("conv", "linear")] == convs + fcs
    assert graph.total_params == sum(convs + fcs) == 61_100_840
    # 11×11 stride 4 padding 2 on 224: (224 + 4 - 11) / 4 + 1 = 55.25, so it does not tile
    assert graph["features.0"].output_shape == (64, 55, 55) and graph["features.0"].tiling
    assert graph["features.12"].output_shape == (256, 6, 6)
    assert not any(lay.kind == "norm" for lay in graph)
    assert build("alexnet").graph.total_params == 62_378_344  # the default stays the 2012 net
    with pytest.raises(ConvlensError, match="unknown alexnet variant 'x'; accepted: 2012, owt"):
        build("alexnet:variant=x")


def test_resnet50_and_mobilenets_match_published_counts() -> None:
    graph = build("resnet50").graph
    assert graph.total_params == 25_557_032
    assert graph["layer4.2.relu3"].output_shape == (2048, 7, 7)
    assert sum(lay.kind == "add" for lay in graph) == 3 + 4 + 6 + 3  # one per bottleneck
    # stride 2 sits on the 3×3 conv of a stage's first block (torchvision's "v1.5")
    assert graph["layer2.0.conv1"].output_shape == (128, 56, 56)
    assert graph["layer2.0.conv2"].output_shape == (128, 28, 28)
    v2 = build("mobilenet_v2").graph
    assert v2.total_params == 3_504_872
    assert v2["features.18.2"].output_shape == (1280, 7, 7)
    # residuals where stride is 1 and width unchanged: 0+1+2+3+2+2+0 of Table 2's repeats
    assert sum(lay.kind == "add" for lay in v2) == 10
    v3 = build("mobilenet_v3_small").graph
    assert v3.total_params == 2_542_856
    assert v3["features.12.2"].output_shape == (576, 7, 7)
    assert sum(lay.kind == "add" for lay in v3) == 6
    # squeeze-excitation: the 1×1 pooled map goes 16 -> 8 -> 16 channels
    assert v3["features.1.block.1.fc1"].output_shape == (8, 1, 1)
    assert v3["features.1.block.1.fc2"].params == 8 * 16 + 16


def test_three_stacked_3x3_convs_see_7x7() -> None:
    net = nn.Sequential(*[nn.Conv2d(1, 1, 3) for _ in range(3)], nn.Flatten())
    model = Model(net, InputSpec(1, 16, 16))
    convs = [lay for lay in model.graph if lay.kind == "conv"]
    assert [rf_of(c).size for c in convs] == [(3, 3), (5, 5), (7, 7)]


def test_receptive_field_recurrence_by_hand() -> None:
    rf = ReceptiveField.identity().through((3, 3), (1, 1), (1, 1), (1, 1))
    assert rf == ReceptiveField((3, 3), (1, 1), (-1, -1))
    rf = rf.through((2, 2), (2, 2), (0, 0), (1, 1))
    assert rf == ReceptiveField((4, 4), (2, 2), (-1, -1))
    assert rf.box(1, 2) == (1, 3, 5, 7)
    dilated = ReceptiveField.identity().through((3, 3), (1, 1), (0, 0), (2, 2))
    assert dilated.size == (5, 5)


def test_receptive_field_box_covers_exactly_the_gradient_support() -> None:
    """Every input pixel with a nonzero gradient lies in the box, and the box edges are hit."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, stride=2), nn.Flatten()
    )
    model = Model(net, InputSpec(1, 20, 20))
    layer = model.graph.layers[3]  # the strided conv
    x = torch.rand(1, 1, 20, 20, requires_grad=True)
    out = net[:3](x)
    out[0, 0, 2, 1].backward()
    assert x.grad is not None
    rows, cols = torch.nonzero(x.grad[0, 0].abs() > 0, as_tuple=True)
    top, left, bottom, right = rf_of(layer).box(2, 1)
    assert rows.min() >= top and rows.max() < bottom and cols.min() >= left and cols.max() < right
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (top, bottom, left, right)


class _SqueezeExcite(nn.Module):
    """conv → x · sigmoid(fc(mean(x))) → conv: Hu et al.'s gate, as MobileNetV3 uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.fc = nn.Conv2d(4, 4, 1)
        self.conv2 = nn.Conv2d(4, 2, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        gate = torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
        return self.conv2(gate * y)  # the gate first: its grid is not the output's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).amax((2, 3))


def test_squeeze_excite_gate_keeps_the_spatial_branch_field() -> None:
    """After an SE gate a unit still looks through two 3×3 convs (5×5), by hand; the gradient
    through the spatial branch alone (gate held constant) touches exactly that box."""
    torch.manual_seed(0)
    net = _SqueezeExcite()
    model = Model(net, InputSpec(1, 12, 12))
    last = model.graph.last_spatial()
    assert last.name == "conv2" and last.rf is not None
    assert (last.rf.size, last.rf.stride, last.rf.is_global) == ((5, 5), (1, 1), False)
    x = torch.rand(1, 1, 12, 12, requires_grad=True)
    y = net.conv1(x)
    gate = torch.sigmoid(net.fc(y.mean((2, 3), keepdim=True))).detach()
    net.conv2(gate * y)[0, 0, 3, 4].backward()
    assert x.grad is not None
    rows, cols = torch.nonzero(x.grad[0, 0].abs() > 0, as_tuple=True)
    box = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
    top, left, bottom, right = last.rf.box(3, 4)
    assert box == (top, bottom, left, right)


def test_mobilenet_v3_small_explains_its_last_block() -> None:
    """CAM's default layer is the last feature map, not the first block before an SE gate."""
    model = load_model("mobilenet_v3_small")
    assert model.graph.last_spatial().name.startswith("features.12")


def test_non_tiling_window_is_flagged_not_floored() -> None:
    assert output_size(7, 3, 3, 0) == pytest.approx(7 / 3)
    net = nn.Sequential(nn.Conv2d(1, 1, 3, stride=3), nn.Flatten())
    model = Model(net, InputSpec(1, 7, 7))
    conv = model.graph.layers[1]
    assert conv.output_shape == (1, 2, 2)
    assert conv.tiling is not None and "2.33" in conv.tiling
    assert build("tiny-vgg").graph["conv_1_1"].tiling is None


def test_functional_ops_and_hooks_fallback(functional_net: Model) -> None:
    graph = functional_net.graph
    kinds = [lay.kind for lay in graph]
    assert kinds.count("activation") == 2 and "add" in kinds and graph.traced is not None

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            if h.sum() > 1e9:  # data-dependent control flow defeats symbolic tracing
                h = h * 0
            return self.fc(h.flatten(1))

    model = Model(Untraceable(), InputSpec(1, 8, 8))
    assert model.graph.traced is None
    assert [lay.name for lay in model.graph] == ["input", "conv", "fc"]
    assert model.graph.total_params == 4 * 9 + 4 + 144 * 3 + 3


def test_unknown_layer_and_model_names_list_the_known_ones() -> None:
    model = build("tiny-vgg")
    with pytest.raises(NotFoundError, match="conv_1_1"):
        model.graph["conv_1_l"]
    with pytest.raises(ConvlensError, match="tiny-vgg"):
        load_model("tiny-vg")
    with pytest.raises(ConvlensError, match="accepted: in_channels"):
        build("tiny-vgg:colour=3")


def test_model_normalizes_inside_forward() -> None:
    spec = InputSpec(3, 8, 8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = Model(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), spec)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(model(x), model.net((x - 0.5) / 0.25))
    with pytest.raises(ConvlensError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(2, 1, 8, 8))


def test_notebook_html_lists_every_layer() -> None:
    model = build("tiny-vgg:input_size=9,blocks=1")
    page = model._repr_html_()
    assert page.count("<tr>") == len(model.graph) + 1  # header + one row per layer
    assert "does not tile" in page and "1,600 parameters" in page


def test_probabilities_keep_a_loaded_eval_net_in_eval_mode() -> None:
    """A net handed over in eval mode stays there: its batch norm keeps using running
    statistics, so two calls on one image agree (batch statistics of a batch of one differ)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3))
    net(torch.rand(2, 1, 6, 6))  # materialise the lazy layer
    net.eval()
    model = Model(net, InputSpec(1, 6, 6))
    x = torch.rand(1, 1, 6, 6)
    first = model.probabilities(x)
    assert not net.training and not model.training
    assert torch.equal(model.probabilities(x), first)


def test_cam_default_skips_maps_already_one_pixel() -> None:
    """conv → 3×3 → conv → 1×1 → pool: the default explained layer is the 3×3 one."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Conv2d(2, 2, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 3),
    )
    model = Model(net, InputSpec(1, 5, 5))
    assert [lay.output_shape for lay in model.graph.spatial()][-1] == (2, 1, 1)
    assert model.graph.last_spatial().name == "0"
