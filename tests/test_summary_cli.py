"""``convlens summary --layers``: a lecture's size, parameter and receptive-field arithmetic
from a layer list, checked against hand computations and the zoo's own networks."""

from __future__ import annotations

import re

import pytest
import torch
from rich.console import Console
from torch import nn

from convlens.cli import main
from convlens.cli.summary import layer_list_graph, print_summary
from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model import Layer, Model, ReceptiveField, build
from convlens.model.layerspec import output_size, parse_input, parse_layers


def rf_of(layer: Layer) -> ReceptiveField:
    """The layer's receptive field (every layer these tests read one from has one)."""
    assert layer.rf is not None, f"{layer.name} has no receptive field"
    return layer.rf


def conv_params(f: int, c: int, k: int) -> int:
    """F·F·C weights per filter plus one bias, times K filters (the lecture's formula)."""
    return (f * f * c + 1) * k


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["summary", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_lecture_example_380_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--layers", "conv:5x5x5", "--input", "32x32x3")
    assert code == 0
    assert conv_params(5, 3, 5) == 380
    row = next(line for line in out.splitlines() if "conv1" in line)
    assert "5×28×28" in row and " 380 " in row and "5×5" in row  # (32 − 5)/1 + 1 = 28, RF 5
    assert "parameters: 380 " in out
    assert "classes" not in out  # a conv's output is not a number of classes


TINY_VGG_28 = (
    "conv:3x3x10,relu,conv:3x3x10,relu,pool:2,conv:3x3x10,relu,conv:3x3x10,relu,pool:2,fc:10"
)


def test_sample_net_280_910_1610_matches_hand_and_zoo() -> None:
    graph = layer_list_graph(TINY_VGG_28, "28x28x3")
    params = [lay.params for lay in graph if lay.params]
    hand = [conv_params(3, 3, 10)] + [conv_params(3, 10, 10)] * 3 + [(4 * 4 * 10 + 1) * 10]
    assert params == hand == [280, 910, 910, 910, 1610]
    zoo = build("tiny-vgg:in_channels=3,input_size=28").graph
    assert [lay.params for lay in zoo if lay.params] == params
    # Sizes by (N − F)/S + 1: 28 → 26 → 24 → 12 → 10 → 8 → 4, and a flatten of 4·4·10 = 160.
    shapes = [lay.output_shape for lay in graph if lay.kind in ("conv", "maxpool", "flatten")]
    assert shapes == [(10, 26, 26), (10, 24, 24), (10, 12, 12), (10, 10, 10), (10, 8, 8),
                      (10, 4, 4), (160,)]  # fmt: skip
    # Receptive fields by hand: r += (F − 1)·j, j *= S: 3, 5, 6 (j 2), 10, 14, 16 (j 4).
    rfs = [lay.rf.size[0] for lay in graph if lay.kind in ("conv", "maxpool") and lay.rf]
    assert rfs == [3, 5, 6, 10, 14, 16]


ALEXNET = (
    "conv:11x11x96/4,relu,pool:3/2,conv:5x5x256+2,relu,pool:3/2,conv:3x3x384+1,relu,"
    "conv:3x3x384+1,relu,conv:3x3x256+1,relu,pool:3/2,fc:4096,relu,fc:4096,relu,fc:1000"
)


def test_alexnet_62_4_million_with_94_percent_in_fc(capsys: pytest.CaptureFixture[str]) -> None:
    conv = (
        conv_params(11, 3, 96) + conv_params(5, 96, 256) + conv_params(3, 256, 384)
        + conv_params(3, 384, 384) + conv_params(3, 384, 256)
    )  # fmt: skip
    fc = (6 * 6 * 256 + 1) * 4096 + (4096 + 1) * 4096 + (4096 + 1) * 1000
    assert conv + fc == 62_378_344
    assert build("alexnet").graph.total_params == conv + fc  # the zoo's AlexNet agrees
    code, out, _ = run(capsys, "--layers", ALEXNET, "--input", "227x227x3")
    assert code == 0
    assert f"parameters: {conv + fc:,} " in out
    assert f"fully connected layers: {fc:,} parameters (94.0%)" in out
    assert round(fc / (conv + fc), 3) == 0.940
    assert "1000 classes" not in out and "output 1000" in out


def test_stride_three_on_seven_is_one_line_with_the_arithmetic(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "--layers", "conv:3x3x1/3", "--input", "7x7")
    assert code == 2
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1
    assert "(7 − 3 + 2·0)/3 + 1 = 2.33 is not a whole number" in lines[0]
    assert "conv1" in lines[0] and "strides that fit: 1, 2" in lines[0]
    # Stride 2 and stride 1 fit, as the lecture's table says: 3 and 5 outputs.
    assert output_size(7, 3, 2, 0) == 3 and output_size(7, 3, 1, 0) == 5
    with pytest.raises(ConvlensError, match=r"2\.33"):
        output_size(7, 3, 3, 0)


def test_padding_and_json_give_the_same_network() -> None:
    text = layer_list_graph("conv:5x5x10/1+2,relu,pool:2,fc:10", "32x32x3")
    spec = (
        '[{"type": "conv", "size": 5, "filters": 10, "stride": 1, "pad": 2}, "relu",'
        ' {"type": "pool", "size": 2}, {"type": "fc", "units": 10}]'
    )
    js = layer_list_graph(spec, "32x32x3")
    assert [(a.name, a.output_shape, a.params) for a in text] == [
        (b.name, b.output_shape, b.params) for b in js
    ]
    assert text["conv1"].output_shape == (10, 32, 32)  # (32 − 5 + 2·2)/1 + 1 = 32: size kept


def test_stacked_3x3_receptive_fields() -> None:
    graph = layer_list_graph("conv:3x3x1+1,conv:3x3x1+1,conv:3x3x1+1", "32x32x1")
    assert [rf_of(graph[f"conv{i}"]).size for i in (1, 2, 3)] == [(3, 3), (5, 5), (7, 7)]


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("conv:5x5", "cannot read layer 'conv:5x5'; accepted: conv:FxFxK"),
        ("fc:10,conv:3x3x4", "needs a spatial input but follows a flattened one"),
        ("pool:9", "larger than the 7-wide input"),
        ("conv:3x3x0", "K must be 1.."),
        ('[{"type": "conv", "size": 3, "filter": 4}]', "unknown key(s) filter"),
        ('[{"type": "fc", "units": true}]', "units must be a whole number"),
        ("[1, 2", "not valid JSON"),
        ("fc:60000,fc:60000", "exceeds 400,000,000 parameters"),
    ],
)
def test_bad_layer_lists_say_what_and_where(
    capsys: pytest.CaptureFixture[str], layers: str, message: str
) -> None:
    code, out, err = run(capsys, "--layers", layers, "--input", "7x7")
    assert code == 2
    assert message in err + out
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "relu"], "needs --input"),
        (["--layers", "relu", "--input", "32x32x3x2"], "--input takes HxWxC"),
        (["tiny-vgg", "--layers", "relu", "--input", "7x7"], "not both"),
        ([], "name a model"),
    ],
)
def test_option_mistakes(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and message in err + out


def test_input_is_height_width_channels() -> None:
    assert parse_input("32x32x3") == (3, 32, 32) and parse_input("7x5") == (1, 7, 5)
    assert [s.text for s in parse_layers("avgpool:2/1, bn, softmax")] == [
        "avgpool:2/1", "bn", "softmax"
    ]  # fmt: skip


def test_a_flatten_output_is_never_called_classes() -> None:
    net = nn.Sequential(nn.Conv2d(1, 10, 3), nn.Flatten())
    model = Model(net, InputSpec(channels=1, height=6, width=6))
    console = Console(width=100, record=True)
    print_summary(model, console)
    text = console.export_text()
    assert "160 classes" not in text and "output 160 (flatten)" in text


def test_long_layer_names_are_printed_whole() -> None:
    long = "a_very_long_layer_name_that_a_user_will_copy_into_the_layer_option_" * 2
    net = nn.Sequential()
    net.add_module(long, nn.Conv2d(1, 2, 3))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(2 * 4 * 4, 3))
    model = Model(net, InputSpec(channels=1, height=6, width=6))
    console = Console(width=80, record=True)
    print_summary(model, console)
    text = console.export_text()
    assert re.search(rf"│ {long} *│", text), text  # on one line, uncut
    assert "3 classes" in text
    assert model.graph[long].params == 2 * 9 + 2  # and usable as a layer name
    assert torch.Size(model.graph[long].output_shape) == (2, 4, 4)
