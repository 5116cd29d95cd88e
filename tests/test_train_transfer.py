"""Transfer learning: cutting a model at its last spatial layer, new heads, frozen and
fine-tuned blocks, cached features, class mapping, checkpoints that load back, bad input.

Models are tiny (ResNet-18 at width 4 on 16×16 images); image folders are written by Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from convlens.cli import main
from convlens.data import TensorImages
from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model import Model, build, load_model
from convlens.model.blocks import blocks
from convlens.model.headed import TransferNet, cut_layer, parse_head
from convlens.train import TrainConfig, train
from convlens.train.features import FeatureCache
from convlens.train.transfer import LabelMapped, class_mapping, new_head

RESNET = "resnet18:width=4,input_size=16"
SIZE = 16


def images(n: int = 24, seed: int = 0) -> TensorImages:
    """Two classes told apart by brightness, with noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 + 0.4 * y.view(-1, 1, 1, 1) + 0.2 * torch.rand(n, 3, SIZE, SIZE, generator=gen)
    return TensorImages(x.clamp(0, 1), y, ["cat", "dog"])


def write_folder(root: Path, classes: dict[str, int], size: int = SIZE) -> Path:
    """``classes``: name → number of images; class k's images have brightness 40 + 60 k."""
    rng = np.random.default_rng(0)
    for k, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            arr = np.clip(40 + 60 * k + rng.integers(0, 40, (size, size, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def transfer(spec: str = RESNET, head: str = "", seed: int = 1) -> tuple[Model, Model]:
    base = build(spec, seed=0)
    torch.manual_seed(seed)
    return base, new_head(base, ["cat", "dog"], parse_head(head), spec, "zoo", "unused")


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# ------------------------------------------------------------------ blocks and the cut

# name -> (spec size, expected block names up to the cut, which parameters make the body)
ZOO_BLOCKS = {
    "tiny-vgg": (64, ["conv_1_1-max_pool_1", "conv_2_1-max_pool_2"], ("conv_",)),
    "vgg16": (64, ["features.0-4", "features.5-9", "features.10-16", "features.17-23",
                   "features.24-30"], ("features.",)),
    "resnet18": (64, ["conv1-maxpool", "layer1", "layer2", "layer3", "layer4"],
                 ("conv1.", "bn1.", "layer")),
    "alexnet": (227, ["conv1-pool1", "conv2-pool2", "conv3-pool5"], ("conv",)),
    "mobilenet_v2": (64, ["features.0-1", "features.2-3", "features.4-6", "features.7-13",
                          "features.14-18"], ("features.",)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ZOO_BLOCKS))
def test_blocks_partition_the_body(name: str) -> None:
    size, names, body_prefixes = ZOO_BLOCKS[name]
    built = build(name, seed=0)
    model = Model(built.net, InputSpec(3, size, size), built.classes, name=name)
    cut = cut_layer(model)
    found = blocks(model, upto=cut.name)
    assert [b.name for b in found] == names
    params = [p for b in found for p in b.params]
    assert len(params) == len(set(params))  # no parameter in two blocks
    body = {n for n, _ in model.net.named_parameters() if n.startswith(body_prefixes)}
    assert set(params) == body  # every body parameter in one, nothing of the classifier
    # the blocks are consecutive runs of layers, in order, ending at the cut
    order = [layer for b in found for layer in b.layers]
    assert order == [lay.name for lay in model.graph.layers[1 : cut.index + 1]]


def test_cut_point_and_head_shapes() -> None:
    base, model = transfer(head="max,dense:8,dropout:0.5")
    assert cut_layer(base).name == "avgpool" and model.arch is not None
    assert model.arch["args"]["cut"] == "avgpool"
    net = model.net
    assert isinstance(net, TransferNet)
    layers = list(net.head.layers)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[-1].out_features) == (32, 8, 2)
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        model.eval(), base.eval()
        feats: dict[str, torch.Tensor] = {}
        hook = base.net.get_submodule("avgpool").register_forward_hook(
            lambda m, a, o: feats.setdefault("f", o)
        )
        base(x)
        hook.remove()
        # the body is the original network up to the cut, sharing its weights
        torch.testing.assert_close(net.body(base.normalize(x)), feats["f"], rtol=0, atol=0)
    flat = build("tiny-vgg:input_size=32")
    model = new_head(flat, ["a", "b"], parse_head("flatten"), "tiny-vgg", "zoo", "unused")
    assert isinstance(model.net, TransferNet)
    last = model.net.head.layers[-1]
    assert isinstance(last, nn.Linear) and last.in_features == 10 * 5 * 5


@pytest.mark.parametrize(
    ("text", "words"),
    [("dense:0", "item 1 'dense:0'"), ("dense:8,dropout:1", "item 2 'dropout:1'"),
     ("dense:8,avg", "pooling must come first"), ("conv:3", "item 1 'conv:3'")],
)  # fmt: skip
def test_bad_head_specs(text: str, words: str) -> None:
    with pytest.raises(ConvlensError, match=words):
        parse_head(text)


def test_no_spatial_layer_to_cut_at() -> None:
    mlp = load_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2)),
                     input_spec=InputSpec(3, 2, 2))  # fmt: skip
    with pytest.raises(ConvlensError, match="no layer with a spatial"):
        new_head(mlp, ["a", "b"], parse_head(""), "x", "zoo", "unused")


# ------------------------------------------------------------------ what learns


def test_features_mode_leaves_the_body_bit_identical(tmp_path: Path) -> None:
    base, model = transfer(head="dense:8")
    net = model.net
    assert isinstance(net, TransferNet)
    before, head_before = snapshot(base.net), snapshot(net.head)
    train(model, images(), None, tmp_path / "r", TrainConfig(epochs=2, batch_size=8,
                                                              mode="features"))  # fmt: skip
    after = model.net.state_dict()
    for k, v in before.items():  # parameters and batch-norm statistics alike
        if not k.startswith("fc."):
            assert torch.equal(after["body." + k], v), k
    assert all(not torch.equal(net.head.state_dict()[k], v)
               for k, v in head_before.items() if k.endswith("weight"))  # fmt: skip


def test_unfreeze_one_changes_only_the_top_block_and_the_head(tmp_path: Path) -> None:
    _, model = transfer()
    net = model.net
    assert isinstance(net, TransferNet)
    assert [name for name, _ in net.blocks] == ["conv1-maxpool", "layer1", "layer2", "layer3",
                                                "layer4"]  # fmt: skip
    before = snapshot(net)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.01, mode="finetune", unfreeze=1,
                         body_lr_scale=0.5)  # fmt: skip
    train(model, images(), None, tmp_path / "r", config)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("body.layer4.", "head.")) for k in changed), changed
    top = set(net.blocks[-1][1])
    assert {k for k in changed if k.endswith("weight") and k.startswith("body.")} == {
        k for k in top if k.endswith("weight")
    }  # every weight of the top block learned
    assert "body.layer4.0.bn1.running_mean" in changed  # the top block's batch norm trains
    from convlens.train.loop import make_optimizer

    opt = make_optimizer(model, config)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.01])
    with pytest.raises(ConvlensError, match=r"--unfreeze 6: the body has 5 blocks"):
        make_optimizer(model, TrainConfig(mode="finetune", unfreeze=6))


def test_cached_features_train_the_same_head_as_uncached(tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=8, mode="features", lr=0.01)
    runs = []
    for cached in (False, True):
        _, model = transfer(head="dense:16,dropout:0.5")
        data, val = images(20), images(8, seed=1)
        caches = (FeatureCache(model, data, channels_last=True),
                  FeatureCache(model, val, channels_last=True)) if cached else None  # fmt: skip
        result = train(model, data, val, tmp_path / str(cached), config, features=caches)
        runs.append((snapshot(model.net), result.history))
    (state_a, hist_a), (state_b, hist_b) = runs
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # exactly the same
    strip = [{k: v for k, v in rec.items() if k not in ("seconds", "images_per_s")}
             for rec in hist_a + hist_b]  # fmt: skip
    assert strip[:2] == strip[2:]


def test_feature_cache_spills_to_disk(tmp_path: Path) -> None:
    _, model = transfer()
    data = images(10)
    in_memory = FeatureCache(model, data)
    with FeatureCache(model, data, memory_bytes=0, cache_dir=str(tmp_path)) as disk:
        a, b = in_memory.get([3, 1]), disk.get([3, 1])
        assert disk.on_disk and any(tmp_path.iterdir())
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not any(tmp_path.iterdir())  # the temporary file is gone
    with pytest.raises(ConvlensError, match="memory budget"):
        FeatureCache(model, data, memory_bytes=0, disk_bytes=0, cache_dir=str(tmp_path)).build()


# ------------------------------------------------------------------ classes


def test_class_mapping_by_name() -> None:
    assert class_mapping(["a", "b"], ["a", "b"]) is None
    assert class_mapping(["dog", "cat", "eel"], ["cat", "dog", "eel"]) == [1, 0, 2]
    with pytest.raises(ConvlensError, match=r"1 of them are not the model's \('bird'\)"):
        class_mapping(["cat", "dog"], ["bird", "cat"])  # same count: the old message misled
    data = LabelMapped(images(4), [1, 0], ["dog", "cat"])
    x, y = data.get([0, 1, 2])
    assert y.tolist() == [1, 0, 1] and data.classes == ["dog", "cat"]
    torch.testing.assert_close(x, images(4).get([0, 1, 2])[0])


def test_cli_maps_classes_in_another_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build("tiny-vgg:input_size=16,width=4,padding=1,num_classes=2", ["dog", "cat"], seed=0)
    train(model, images(8), None, tmp_path / "ckpt", TrainConfig(epochs=1))
    folder = write_folder(tmp_path / "pets", {"cat": 6, "dog": 6})
    common = ["--epochs", "1", "--batch-size", "4"]
    args = ["train", "-d", f"folder:{folder}", "-m", str(tmp_path / "ckpt"), *common]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "another order" in err and "cat → output 1" in err
    assert load_model(str(tmp_path / "a")).classes == ["dog", "cat"]
    other = write_folder(tmp_path / "zoo", {"bird": 3, "cat": 3})
    assert main(["train", "-d", str(other), "-m", str(tmp_path / "ckpt"), *common,
                 "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "not the model's ('bird')" in err and "--mode features" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


# ------------------------------------------------------------------ the command


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write_folder(tmp_path / "one", {"cat": 4})
    empty = write_folder(tmp_path / "empty", {"cat": 4})
    (empty / "dog").mkdir()
    two = write_folder(tmp_path / "two", {"cat": 4, "dog": 4})
    base = ["train", "-m", RESNET, "--epochs", "1", "--out", str(tmp_path / "o")]
    cases = [
        (["-d", str(one), "--mode", "features"], "needs at least 2"),
        (["-d", str(empty), "--mode", "features"], "no images in class 'dog'"),
        (["-d", str(two), "--mode", "finetune", "--unfreeze", "7"], "the body has 5 blocks"),
        (["-d", str(two), "--mode", "features", "--head", "dense:x"], "item 1 'dense:x'"),
        (["-d", str(two), "--mode", "features", "--rotation", "10"], "contradict"),
        (["-d", str(two), "--mode", "tune"], "accepted: features, finetune"),
        (["-d", str(two), "--unfreeze", "1"], "--unfreeze applies to --mode finetune"),
    ]
    for extra, words in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if not line.startswith("warning:")]
        assert words in err and len(lines) == 1 and lines[0].startswith("error:"), err


@pytest.mark.slow
def test_cli_file_body_checkpoint_loads_explains_and_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 5),
    ).eval()  # fmt: skip
    program = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, SIZE, SIZE),)), program)
    mlp = tmp_path / "mlp.pt2"
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)).eval()
    torch.export.save(torch.export.export(flat, (torch.zeros(1, 3, SIZE, SIZE),)), mlp)
    folder = write_folder(tmp_path / "pets", {"cat": 8, "dog": 8})
    args = ["train", "-d", f"folder:{folder}", "--mode", "features", "--head", "dense:4",
            "--epochs", "2", "--batch-size", "4"]  # fmt: skip
    assert main([*args, "-m", str(mlp), "--out", str(tmp_path / "no")]) == 2
    assert "no layer with a spatial" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main([*args, "-m", str(program), "--out", str(out)]) == 0
    assert (out / "body" / "small.pt2").is_file()  # the checkpoint stands alone
    model = load_model(str(out))
    assert isinstance(model.net, TransferNet) and model.classes == ["cat", "dog"]
    # the body is the program's own layers up to the cut, weights untouched
    original = load_model(str(program))
    cut = cut_layer(original)
    x = torch.rand(2, 3, SIZE, SIZE)
    seen: dict[str, torch.Tensor] = {}
    module = original.net.get_submodule(cut.module or "")
    handle = module.register_forward_hook(lambda m, a, o: seen.setdefault("f", o))
    with torch.no_grad():
        original.eval()(x)
        handle.remove()
        torch.testing.assert_close(model.net.body(model.normalize(x)), seen["f"], rtol=0, atol=0)
    assert main(["explain", str(folder / "cat" / "00.png"), "-m", str(out), "--method",
                 "grad-cam", "--out", str(tmp_path / "expl")]) == 0  # fmt: skip
    assert list((tmp_path / "expl").glob("*.png"))

    import warnings

    from convlens.web import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    with TestClient(create_app(model), base_url="http://127.0.0.1") as c:
        assert c.get("/api/v1/model").json()["classes"] == ["cat", "dog"]
        data = (folder / "dog" / "00.png").read_bytes()
        image_id = c.post("/api/v1/images", files={"file": ("d.png", data)}).json()["image_id"]
        r = c.post("/api/v1/explain", json={"image_id": image_id, "method": "grad-cam"})
        assert r.status_code == 200, r.text
        assert r.json()["map"]["shape"] == [SIZE, SIZE]


def test_cli_pretrained_weights_file_then_finetune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {k: v.contiguous() for k, v in build(RESNET, seed=7).net.state_dict().items()}
    weights = tmp_path / "my-resnet.safetensors"
    save_file(state, str(weights))
    folder = write_folder(tmp_path / "pets", {"cat": 8, "dog": 8})
    args = ["train", "-d", f"folder:{folder}", "-m", RESNET, "--weights", str(weights),
            "--epochs", "1", "--batch-size", "4"]  # fmt: skip
    assert main([*args, "--mode", "features", "--out", str(tmp_path / "f")]) == 0
    features = load_model(str(tmp_path / "f")).net.state_dict()
    for k, v in state.items():  # the body is the file's, bit for bit
        if not k.startswith("fc."):
            assert torch.equal(features["body." + k], v), k
    assert main([*args, "--mode", "finetune", "--unfreeze", "1", "--out", str(tmp_path / "t")]) == 0
    assert "fine-tuning blocks layer4 of conv1-maxpool" in capsys.readouterr().err
    tuned = load_model(str(tmp_path / "t")).net.state_dict()
    assert torch.equal(tuned["body.layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert not torch.equal(tuned["body.layer4.0.conv1.weight"], state["layer4.0.conv1.weight"])


def test_hostile_transfer_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    import json

    _, model = transfer("tiny-vgg:input_size=16,padding=1,width=4")
    train(model, images(8), None, tmp_path / "run", TrainConfig(epochs=1, mode="features"))
    meta_path = tmp_path / "run" / "model.json"
    good = json.loads(meta_path.read_text())
    assert load_model(str(tmp_path / "run")).classes == ["cat", "dog"]
    cases = [
        ({"body": "../../evil.onnx", "body_format": "onnx"}, "outside the checkpoint"),
        ({"body": "body", "body_format": "checkpoint"}, "body format 'checkpoint'"),
        ({"head": "flatten,dense:65536,dense:65536"}, "over the budget"),
        ({"cut": "no_such_layer"}, "no_such_layer"),
        ({"num_classes": 3}, "needs its class names"),
        ({"body": "tiny-vgg:width=100000000"}, "budget"),
    ]
    for change, words in cases:
        doc = json.loads(json.dumps(good))
        doc["arch"]["args"] |= change
        meta_path.write_text(json.dumps(doc))
        with pytest.raises(ConvlensError, match=words):
            load_model(str(tmp_path / "run"))


@pytest.mark.slow
def test_cli_tfjs_body_finetunes_its_top_block(tmp_path: Path, cnn_explainer_dir: Path) -> None:
    """CNN Explainer's Tiny VGG (written by TF.js's converter): its model.json and shard are
    copied into the run; --unfreeze 1 moves its second conv block only."""
    folder = write_folder(tmp_path / "pets", {"cat": 6, "dog": 6}, size=64)
    out = tmp_path / "run"
    args = ["train", "-d", str(folder), "-m", str(cnn_explainer_dir / "model.json"),
            "--mode", "finetune", "--unfreeze", "1", "--lr", "0.01", "--epochs", "1",
            "--batch-size", "4", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in (out / "body").iterdir()) == ["group1-shard1of1.bin",
                                                                "model.json"]  # fmt: skip
    original = load_model(str(cnn_explainer_dir / "model.json")).net.state_dict()
    tuned = load_model(str(out)).net.state_dict()
    for k, v in original.items():
        if k.startswith("conv_1_"):
            assert torch.equal(tuned["body." + k], v), k
        elif k.startswith("conv_2_"):
            assert not torch.equal(tuned["body." + k], v), k
