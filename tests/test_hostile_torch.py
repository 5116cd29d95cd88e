"""Hostile PyTorch files: nothing is unpickled, evaluated or imported without --trust-pickle.

Each hostile ``.pt2`` is a real ``torch.export.save`` archive with members changed by
``zipfile``. Its payload, when unpickled or evaluated, creates a marker file. For the archive
variants the test first shows that ``torch.export.load`` itself does run the payload (so the
file really is hostile), then that convlens refuses it in one line and the marker never
appears.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from convlens.errors import ConvlensError
from convlens.model import build, load_model
from convlens.model.checkpoint import save_checkpoint
from convlens.model.load import detect_format

ARCH = "tiny-vgg:input_size=16,width=4"


class Payload:
    """Unpickling this creates ``path``: the stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def pickled(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def torch_saved(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"x": Payload(marker)}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real archive with weights and one lifted constant (``tensor_0``)."""

    class WithConstant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x)) * torch.tensor(2.0)
            return self.fc(h.mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = WithConstant().eval()
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 8, 8),)), path)
    return path


def rewrite(
    src: Path,
    dst: Path,
    edit: Callable[[str, bytes], bytes | None] = lambda n, d: d,
    add: dict[str, bytes] | None = None,
) -> Path:
    """Copy a zip, passing each member through ``edit`` (``None`` drops it), adding ``add``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = edit(item.filename, zin.read(item))
            if data is not None:
                zout.writestr(item.filename, data)
        root = zin.namelist()[0].split("/")[0]
        for rel, data in (add or {}).items():
            zout.writestr(f"{root}/{rel}", data)
    return dst


def edit_json(suffix: str, change: Callable[[Any], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith(suffix):
            return data
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


def refused(path: Path, marker: Path, match: str = "", **kw: Any) -> str:
    with pytest.raises(ConvlensError, match=match) as info:
        load_model(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert not marker.exists(), "the payload ran"
    return msg


def torch_runs_it(path: Path, marker: Path) -> None:
    """The control: PyTorch's own loader does execute the payload."""
    with contextlib.suppress(Exception):  # it may fail after running the payload
        torch.export.load(path)
    assert marker.exists()
    marker.unlink()


def _weights_pickled(value: Any) -> Callable[[str, bytes], bytes]:
    def change(doc: Any) -> None:
        doc["config"]["conv.weight"]["use_pickle"] = value

    return edit_json("model_weights_config.json", change)


def test_clean_archive_loads_without_unpickling(
    clean_pt2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = torch.export.load(clean_pt2).module()

    def no_pickle(*a: Any, **k: Any) -> Any:
        raise AssertionError("unpickled")

    real_load = torch.load

    def weights_only_load(*a: Any, **k: Any) -> Any:
        assert k.get("weights_only") is True, "torch.load without weights_only"
        return real_load(*a, **k)

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(torch._C, "_pickle_load_obj", no_pickle)
    monkeypatch.setattr(torch, "load", weights_only_load)
    model = load_model(clean_pt2)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.net(x), ref(x), atol=1e-6, rtol=0)


def test_legacy_weights_member_is_refused(clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = rewrite(
        clean_pt2,
        tmp_path / "evil.pt2",
        add={"data/weights/model.pt": torch_saved(marker)},
    )
    torch_runs_it(evil, marker)
    msg = refused(evil, marker, "--trust-pickle")
    assert "data/weights/model.pt" in msg


@pytest.mark.parametrize("value", [True, 1, "yes", "false", None, [0]])
def test_truthy_use_pickle_is_refused(clean_pt2: Path, tmp_path: Path, value: Any) -> None:
    marker = tmp_path / "ran"

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/weight_0"):
            return torch_saved(marker)
        return _weights_pickled(value)(name, data)

    evil = rewrite(clean_pt2, tmp_path / "evil.pt2", edit)
    if value in (True, 1, "yes"):
        torch_runs_it(evil, marker)
    refused(evil, marker, "use_pickle")


@pytest.mark.parametrize("use_pickle", [True, 1])
def test_opaque_object_in_a_sub_folder_is_refused(
    clean_pt2: Path, tmp_path: Path, use_pickle: Any
) -> None:
    marker = tmp_path / "ran"

    def change(doc: Any) -> None:
        doc["config"]["evil"] = {
            "path_name": "opaque_obj_0/payload",
            "is_param": False,
            "use_pickle": use_pickle,
            "tensor_meta": None,
        }

    evil = rewrite(
        clean_pt2,
        tmp_path / "evil.pt2",
        edit_json("model_constants_config.json", change),
        add={"data/constants/opaque_obj_0/payload": pickled(marker)},
    )
    torch_runs_it(evil, marker)
    refused(evil, marker, "opaque_obj_0/payload")


def test_pickled_constant_and_custom_objects_are_refused(clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def change(doc: Any) -> None:
        doc["config"]["lifted_tensor_0"]["use_pickle"] = True

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/constants/tensor_0"):
            return torch_saved(marker)
        return edit_json("model_constants_config.json", change)(name, data)

    evil = rewrite(clean_pt2, tmp_path / "evil.pt2", edit)
    torch_runs_it(evil, marker)
    refused(evil, marker, "use_pickle")
    custom = rewrite(
        clean_pt2,
        tmp_path / "custom.pt2",
        add={"data/constants/custom_obj_0": pickled(marker)},
    )
    refused(custom, marker, "custom_obj_0")


def test_pt2_named_pt_is_read_by_content(clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    renamed = tmp_path / "weights.pt"
    renamed.write_bytes(clean_pt2.read_bytes())
    assert detect_format(str(renamed)) == "torch-export"
    assert load_model(renamed).graph.output.output_shape == (3,)
    # With --arch it is still not read as a state dict (torch.load would not see a program).
    evil = rewrite(
        clean_pt2, tmp_path / "evil.pt", add={"data/weights/model.pt": torch_saved(marker)}
    )
    assert detect_format(str(evil)) == "torch-export"
    refused(evil, marker, "--trust-pickle")
    refused(evil, marker, "--trust-pickle", arch=ARCH)


def test_sympy_and_enum_injection_is_refused(clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"__import__('builtins').open({str(marker)!r}, 'w')"

    def sym(doc: Any) -> None:
        tv = doc["graph_module"]["graph"]["tensor_values"]
        tv["x"]["sizes"][0] = {"as_expr": {"expr_str": code, "hint": {"as_int": 1}}}

    evil = rewrite(clean_pt2, tmp_path / "sym.pt2", edit_json("models/model.json", sym))
    torch_runs_it(evil, marker)  # sympify evaluates it
    refused(evil, marker, "symbolic expression")

    def enum(doc: Any) -> None:
        sig = doc["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(sig["in_spec"])
        ctx = {"__enum__": True, "fqn": "antigravity:X", "name": "Y"}
        spec[1]["children_spec"][1]["context"] = json.dumps([ctx])
        sig["in_spec"] = json.dumps(spec)

    evil = rewrite(clean_pt2, tmp_path / "enum.pt2", edit_json("models/model.json", enum))
    refused(evil, marker, "enum")


def test_non_aten_targets_and_sub_graphs_are_refused(clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def target(doc: Any) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.hub.load"

    evil = rewrite(clean_pt2, tmp_path / "t.pt2", edit_json("models/model.json", target))
    refused(evil, marker, r"node 0 \(conv2d\) calls 'torch.hub.load'")

    def custom(doc: Any) -> None:
        node = doc["graph_module"]["graph"]["nodes"][0]
        node["inputs"][0]["arg"] = {"as_custom_obj": {"name": "obj", "class_fqn": "x"}}

    evil = rewrite(clean_pt2, tmp_path / "c.pt2", edit_json("models/model.json", custom))
    refused(evil, marker, "as_custom_obj")


def test_bad_payload_shapes_and_members(clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def grow(doc: Any) -> None:
        doc["config"]["conv.weight"]["tensor_meta"]["sizes"][0] = {"as_int": 400}

    evil = rewrite(clean_pt2, tmp_path / "g.pt2", edit_json("model_weights_config.json", grow))
    refused(evil, marker, "reaches element")

    def huge(doc: Any) -> None:
        doc["config"]["conv.weight"]["tensor_meta"]["sizes"][0] = {"as_int": 10**12}

    evil = rewrite(clean_pt2, tmp_path / "h.pt2", edit_json("model_weights_config.json", huge))
    refused(evil, marker, "budget")
    odd = rewrite(clean_pt2, tmp_path / "o.pt2", add={"notes.txt": b"hi"})
    refused(odd, marker, "notes.txt")
    out = rewrite(clean_pt2, tmp_path / "x.pt2", add={"../../escape": b"hi"})
    refused(out, marker, "outside")


def test_torch_save_files_are_read_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "evil.pth").write_bytes(torch_saved(marker))
    refused(tmp_path / "evil.pth", marker, "--trust-pickle", arch=ARCH)
    legacy = tmp_path / "legacy.pt"
    torch.save(build(ARCH).net.state_dict(), legacy, _use_new_zipfile_serialization=False)
    refused(legacy, marker, "pre-1.6", arch=ARCH)
    model = build(ARCH, seed=0).eval()
    torch.save(model.net.state_dict(), tmp_path / "ok.pth")
    assert load_model(tmp_path / "ok.pth", arch=ARCH).net(torch.zeros(1, 3, 16, 16)).shape == (
        1,
        10,
    )


def test_torchscript_is_found_by_content(tmp_path: Path) -> None:
    model = build(ARCH, seed=0).eval()
    for name in ("net.bin", "net.pth", "net.model"):
        path = tmp_path / name
        torch.jit.trace(model.net, torch.zeros(1, 3, 16, 16)).save(str(path))
        assert detect_format(str(path)) == "torchscript"
        refused(path, tmp_path / "never", "TorchScript", input_spec={"size": 16})


def _safetensors(header: dict[str, Any], data: bytes = b"", n: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if n is None else n) + raw + data


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (_safetensors({}, n=10**15), "header"),
        (_safetensors({"w": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 4]}}), "dtype"),
        (
            _safetensors({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4]}}),
            "budget",
        ),
        (
            _safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"1234"),
            "data_offsets",
        ),
        (_safetensors({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), "shape"),
        (b"\x01", "too short"),
    ],
)
def test_bad_safetensors_headers(tmp_path: Path, blob: bytes, match: str) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    refused(path, tmp_path / "never", match, arch=ARCH)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[" * 200 + "]" * 200, "nests deeper"),
        ({"arch": "tiny-vgg"}, "arch"),
        ({"arch": {"name": "tiny-vgg", "args": {"width": 10**6}}}, "budget"),
        ({"arch": {"name": "tiny-vgg", "args": {"bogus": 1}}}, "bad arguments"),
        ({"input_spec": [3, 16, 16]}, "input_spec"),
        ({"input_spec": {"channels": "x", "height": 1, "width": 1}}, "input.spec"),
        ({"classes": [1, 2]}, "classes"),
        ({"version": "1"}, "version"),
    ],
)
def test_bad_checkpoint_metadata(tmp_path: Path, meta: Any, match: str) -> None:
    folder = tmp_path / "ckpt"
    save_checkpoint(build(ARCH, seed=0), folder)
    if isinstance(meta, dict):
        doc = json.loads((folder / "model.json").read_text())
        doc.update(meta)
        meta = json.dumps(doc)
    (folder / "model.json").write_text(meta)
    refused(folder, tmp_path / "never", match)


def test_names_from_the_file_cannot_shadow_or_inject(clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"conv = __import__('builtins').open({str(marker)!r}, 'w'); conv"

    def rename(doc: Any) -> None:
        node = doc["graph_module"]["graph"]["nodes"][0]
        meta = node["metadata"]
        meta["nn_module_stack"] = meta["nn_module_stack"].replace(",conv,", ",forward,")
        text = json.dumps(doc).replace('"conv2d"', json.dumps(code))
        doc.clear()
        doc.update(json.loads(text))

    evil = rewrite(clean_pt2, tmp_path / "n.pt2", edit_json("models/model.json", rename))
    model = load_model(evil)
    assert not marker.exists()
    names = [layer.name for layer in model.graph]
    assert "forward_" in names, names
    ref = torch.export.load(clean_pt2).module()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.net(x), ref(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "expr",
    [
        "9**9**9**9",
        "99999999!",
        "s0.__class__",
        "lambda: 1",
        "1" * 40,
        "'s'",
        "eval",
        "Pow(Integer(9), Integer(99999))",
        "Symbol('__class__')",
    ],
)
def test_symbolic_expressions_are_only_cheap_arithmetic(expr: str) -> None:
    from convlens.model.formats.pt2_archive import check_expr

    with pytest.raises(ConvlensError, match="symbolic expression"):
        check_expr(expr, "model.json")


def test_symbolic_expressions_torch_writes_are_accepted() -> None:
    from convlens.model.formats.pt2_archive import check_expr

    for expr in (
        "s0",
        "FloorDiv(s77 - 1, 2) + 1",
        "Eq(s0, 3)",
        "Symbol('s77', positive=True, integer=True)",
        "Mul(Integer(2), Symbol('s77', positive=True, integer=True))",
    ):
        check_expr(expr, "model.json")


def test_trusted_archive_goes_to_torch(clean_pt2: Path, tmp_path: Path) -> None:
    """--trust-pickle hands an archive the allow-list refuses to torch.export.load."""
    ref = torch.export.load(clean_pt2)
    buf = io.BytesIO()
    torch.save(dict(ref.state_dict), buf)  # the legacy weights layout, a pickle
    legacy = rewrite(
        clean_pt2, tmp_path / "legacy.pt2", add={"data/weights/model.pt": buf.getvalue()}
    )
    refused(legacy, tmp_path / "never", "--trust-pickle")
    model = load_model(legacy, trust_pickle=True)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.net(x), load_model(clean_pt2).net(x), atol=1e-6, rtol=0)


def test_mutated_configs_give_one_line_errors(clean_pt2: Path, tmp_path: Path) -> None:
    """Each JSON value of the archive replaced by a wrong type: a ConvlensError or a load."""
    import random

    from convlens.model.formats.aten_ops import program_to_module
    from convlens.model.formats.pt2_archive import read_pt2

    with zipfile.ZipFile(clean_pt2) as z:
        members = {n: z.read(n) for n in z.namelist()}
    rnd = random.Random(0)
    for trial in range(60):
        target = rnd.choice(sorted(n for n in members if n.endswith(".json")))
        doc = json.loads(members[target])
        paths: list[tuple[Any, ...]] = []
        stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
        while stack:
            node, where = stack.pop()
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                paths.append((*where, k))
                if isinstance(v, dict | list):
                    stack.append((v, (*where, k)))
        *parent, last = rnd.choice(paths)
        holder: Any = doc
        for k in parent:
            holder = holder[k]
        holder[last] = rnd.choice([None, -5, "x", [], {}, [1, 2], {"a": 1}, True, 1e300])
        path = tmp_path / f"f{trial}.pt2"
        with zipfile.ZipFile(path, "w") as out:
            for n, d in members.items():
                out.writestr(n, json.dumps(doc).encode() if n == target else d)
        try:
            program_to_module(read_pt2(str(path)))
        except ConvlensError as e:
            assert "\n" not in str(e)
