"""``--device`` / ``device=``: one parser, every computing command, the model and its inputs on
the device; shapes on ``meta`` (no data), the real thing on CUDA when this machine has one."""

from __future__ import annotations

import pytest
import torch
import typer.main

from convlens.analysis.embed import codes_of
from convlens.cli import main
from convlens.cli.app import app
from convlens.data import TensorImages
from convlens.device import autocast, available_devices, parse_precision, resolve_device
from convlens.errors import ConvlensError
from convlens.model import Model, build, load_model
from convlens.probe import capture

CUDA = torch.cuda.is_available()
NO_CUDA_REASON = "no CUDA device on this machine (torch.cuda.is_available() is False)"


def test_device_names_are_parsed_in_one_place() -> None:
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("meta") == torch.device("meta")
    assert "cpu" in available_devices()
    auto = resolve_device("auto")
    assert auto == resolve_device(None)
    assert auto.type == ("cuda" if CUDA else "mps" if "mps" in available_devices() else "cpu")
    for bad in ("gpu", "cpu:1", "cuda:x", "cuda:-1", "", "mps:0"):
        with pytest.raises(ConvlensError, match="accepted: auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    with pytest.raises(ConvlensError, match="available: cpu"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")  # one past the last GPU
    assert parse_precision("bfloat16") == torch.bfloat16
    with pytest.raises(ConvlensError, match="accepted: float32, bfloat16, float16"):
        parse_precision("int8")


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_one_line_naming_what_is_there(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConvlensError, match=r"no CUDA device.*available: cpu"):
        load_model("tiny-vgg", device="cuda")
    with pytest.raises(ConvlensError, match="no CUDA device"):
        build("tiny-vgg").to("cuda:1")
    assert main(["summary", "demo", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device 'cuda' is not available") and "\n" not in err


def test_every_command_that_computes_takes_device() -> None:
    """Each command opening a model (the shared model flags) and train has --device; scan and
    train also --precision."""
    opts = {}
    for info in app.registered_commands:
        cmd = typer.main.get_command_from_info(info, pretty_exceptions_short=True,
                                               rich_markup_mode=None)  # fmt: skip
        opts[cmd.name] = {o for p in cmd.params for o in getattr(p, "opts", [])}
    computing = [n for n, o in opts.items() if "--trust-pickle" in o]
    assert {"explain", "filters", "visualize", "invert", "fool", "scan", "map", "neighbors",
            "train", "evaluate", "serve", "summary"} <= set(computing)  # fmt: skip
    for name in computing:
        assert "--device" in opts[name], name
    for name in ("scan", "train"):
        assert "--precision" in opts[name], name
    for name in ("scan", "map"):
        assert {"--engine", "--address", "--workers"} <= opts[name], name


def test_model_and_inputs_follow_the_device() -> None:
    m = load_model("tiny-vgg:input_size=32", device="auto")
    assert m.device == resolve_device("auto")
    assert m.to("cpu") is m and m.device.type == "cpu"
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(m(x), m.net((x - m.mean) / m.std))


def test_forward_capture_and_codes_run_on_meta() -> None:
    """On ``meta`` (shapes, no data) a CPU batch is moved to the model's device, the layers
    are captured there and the pooled codes have the right shape; nothing reads values."""
    m = build("tiny-vgg:input_size=32").to("meta")
    x = torch.rand(4, 3, 32, 32)  # on the CPU, as a data set hands it over
    out = m(x)
    assert out.device.type == "meta" and out.shape == (4, 10)
    with capture(m, ["relu_1_1", "conv_2_2"]) as cap:
        m(x)
        assert cap["relu_1_1"].shape == (4, 10, 30, 30) and cap["relu_1_1"].is_meta
        assert cap["conv_2_2"].shape == (4, 10, 10, 10)
    codes = codes_of(m, x, "relu_2_2", "mean")
    assert codes.shape == (4, 10) and codes.is_meta
    # A gradient with respect to the caller's CPU images flows back through the device copy.
    xg = torch.rand(1, 3, 32, 32, requires_grad=True)
    cpu_model = build("tiny-vgg:input_size=32", seed=0)
    cpu_model(xg)[0, 3].backward()
    assert xg.grad is not None and xg.grad.shape == xg.shape


def test_autocast_bfloat16_on_cpu_changes_little() -> None:
    m = build("tiny-vgg:input_size=32", seed=0).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = m(x)
        with autocast(torch.device("cpu"), "bfloat16"):
            low = m(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.skipif(not CUDA, reason=NO_CUDA_REASON)
def test_cuda_scan_codes_and_evaluation_match_the_cpu() -> None:
    from convlens.analysis import scan
    from convlens.analysis.embed import read_codes
    from convlens.train.loop import evaluate

    g = torch.Generator().manual_seed(0)
    data = TensorImages(torch.rand(32, 3, 32, 32, generator=g), torch.arange(32) % 10,
                        [str(i) for i in range(10)])  # fmt: skip
    cpu = build("tiny-vgg:input_size=32", seed=0)
    gpu: Model = load_model(build("tiny-vgg:input_size=32", seed=0), device="cuda")
    assert gpu.device.type == "cuda"
    a = scan(cpu, data, ["relu_2_2"], k=4, batch_size=8, progress=False)
    b = scan(gpu, data, ["relu_2_2"], k=4, batch_size=8, progress=False)
    sa, sb = a.state["relu_2_2"], b.state["relu_2_2"]
    assert sb.values.device.type == "cpu"  # stored state comes back to the CPU
    torch.testing.assert_close(sb.values, sa.values, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(sb.total, sa.total, rtol=1e-4, atol=1e-3)
    ca = read_codes(cpu, data, range(32), "relu_2_2")[0]
    cb = read_codes(gpu, data, range(32), "relu_2_2")[0]
    assert cb.device.type == "cpu"
    torch.testing.assert_close(cb, ca, rtol=1e-3, atol=1e-4)
    la, acc_a = evaluate(cpu, data, 8)
    lb, acc_b = evaluate(gpu, data, 8)
    assert abs(la - lb) < 1e-3 and acc_a == acc_b


def test_every_method_runs_on_the_models_device(small_resnet: Model) -> None:
    """Each attribution method, given CPU images and a model on ``meta``, computes on the
    model's device to the end (a tensor made on the CPU and mixed in would raise here as it
    would on CUDA): the right shapes, nothing read back."""
    from convlens.methods import METHODS, explain

    vgg = build("tiny-vgg:input_size=32", seed=0).to("meta")
    resnet = small_resnet.to("meta")
    for name in METHODS.names():
        for m in (vgg, resnet):
            x = torch.rand(2, *m.spec.shape)
            try:
                a = explain(m, x, name, target=1)
            except ConvlensError:  # CAM needs a GAP + linear head: the ResNet has one
                continue
            assert a.values.is_meta and a.values.shape[0] == 2, name
            assert a.values.shape[-2:] == x.shape[-2:], name
            break
        else:
            pytest.fail(f"{name} ran on neither model")


def test_model_pickles_without_its_traced_graph(small_resnet: Model) -> None:
    """Shipping a model to a worker pickles it; its cached layer graph (an fx trace for a
    ResNet, which does not pickle) is left out and rebuilt."""
    import pickle

    small_resnet.graph  # noqa: B018  (build the cache)
    copy = pickle.loads(pickle.dumps(small_resnet))
    x = torch.rand(2, *small_resnet.spec.shape)
    torch.testing.assert_close(copy(x), small_resnet(x))
    assert [lay.name for lay in copy.graph] == [lay.name for lay in small_resnet.graph]
