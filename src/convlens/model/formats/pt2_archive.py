"""Read a ``torch.export`` archive (``.pt2``) by an allow-list, without running anything.

``torch.export.load`` trusts its archive. It unpickles a legacy ``data/weights/<model>.pt``,
any payload whose ``use_pickle`` is truthy, ``custom_obj_*``/``opaque_obj_*`` constants and
sample inputs it cannot read safely; it evaluates every symbolic-shape string with
``sympy.sympify`` (Python's ``eval``) and imports any module an ``__enum__`` in a tree spec
names. So convlens reads the archive itself:

* the zip is size-checked (:func:`~convlens.model.formats.safety.check_zip`) and every member
  is judged by its FULL path under the archive's single root folder: only ``archive_format``
  (``pt2``), ``archive_version`` (``0``), ``byteorder`` (``little``), ``.data/version``,
  ``.data/serialization_id``, ``models/<m>.json``, ``data/weights/<m>_weights_config.json``,
  ``data/weights/weight_<n>``, ``data/constants/<m>_constants_config.json``,
  ``data/constants/tensor_<n>``, ``data/sample_inputs/<m>.pt`` (never read) and ``extra/*``
  (never read) are accepted; anything else is refused by name;
* a payload is accepted only when its config says ``"use_pickle": false`` (the JSON literal),
  its ``path_name`` is ``weight_<n>``/``tensor_<n>``, its dtype is a plain numeric type and its
  shape, strides and offset fit inside the bytes of its member; tensors are made from those raw
  bytes with ``torch.frombuffer``, charged to the model budget first;
* the program JSON may call only ``torch.ops.aten.*`` operators and ``operator.getitem``,
  with plain arguments (no sub-graphs, custom objects or operator references); every symbolic
  expression must be cheap arithmetic over symbols like ``s0`` (its ``ast`` checked node by
  node before ``sympify`` sees it); tree specs may name only tuples, lists and dicts; node
  metadata is cut to ``nn_module_stack`` and the guard code (run by
  ``ExportedProgram.module()``) is dropped;
* then PyTorch's own deserializer builds the ``ExportedProgram`` from the checked JSON and the
  tensor dictionaries (never from bytes, so it never reaches its ``weights_only=False``
  fall-back), and the example inputs are not read at all.

The file layout is that of ``torch/export/pt2_archive/_package.py`` (torch 2.13); the
deserializer is the private ``torch._export.serde.serialize`` API.

>>> is_pt2("missing.pt2")
False
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from convlens.errors import ConvlensError
from convlens.model.formats.safety import (
    MAX_JSON_BYTES,
    Budget,
    check_zip,
    checked_elements,
    parse_json,
    read_member,
    regular_file,
)

STATIC_MEMBERS = {
    "archive_format": b"pt2",
    "archive_version": b"0",
    "byteorder": b"little",
    ".data/version": None,
    ".data/serialization_id": None,
}
MODEL_NAME = r"[A-Za-z0-9_\-]{1,100}"
_MODEL_JSON = re.compile(rf"models/({MODEL_NAME})\.json")
_WEIGHT = re.compile(r"data/weights/weight_\d{1,9}")
_CONSTANT = re.compile(r"data/constants/tensor_\d{1,9}")
_SAMPLE = re.compile(rf"data/sample_inputs/{MODEL_NAME}\.pt")
_EXTRA = re.compile(r"extra/[A-Za-z0-9_.\-]{1,200}")

# Serialized dtype codes (torch/_export/serde/schema.py ScalarType) a CNN's tensors use.
DTYPES: dict[int, torch.dtype] = {
    1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64,
    6: torch.float16, 7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16,
}  # fmt: skip
STRIDED = 7  # schema.Layout.Strided

# Argument kinds a plain ATen call uses; sub-graphs, custom objects, operator references and
# string-keyed argument maps are what higher-order ops and torchbind classes need.
PLAIN_ARGUMENTS = {
    "as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats",
    "as_string", "as_strings", "as_sym_int", "as_sym_ints", "as_scalar_type",
    "as_memory_format", "as_layout", "as_device", "as_bool", "as_bools", "as_sym_bool",
    "as_sym_bools", "as_optional_tensors", "as_optional_tensor", "as_sym_float",
    "as_sym_floats", "as_int_lists", "as_float_lists",
}  # fmt: skip
INPUT_KINDS = {"user_input", "parameter", "buffer", "tensor_constant"}
OUTPUT_KINDS = {"user_output"}
_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]{1,100}\.[A-Za-z0-9_]{1,100}")
GETITEM = "_operator.getitem"

# Symbolic sizes. Torch writes sympy's ``srepr`` (``Mul(Integer(2), Symbol('s77',
# positive=True, integer=True))``), which ``sympify`` evaluates as Python. So each expression
# is parsed (not run) with ``ast`` and may hold only: calls of the constructors and functions
# below, symbol names like ``s0`` (quoted only as ``Symbol``'s name), assumption keywords,
# numbers of at most 15 digits, + - * / // % and comparisons. ``Pow`` only with a small
# integer exponent and no ``**`` (9**9**9 would be evaluated); no ``!`` (sympify reads ``n!``
# as a factorial); no attributes, subscripts, strings elsewhere, lambdas.
_SYMBOL = re.compile(r"[a-z]{1,4}\d{1,9}")
EXPR_FUNCTIONS = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "Max", "Min", "Eq", "Ne", "Ge", "Gt", "Le", "Lt", "TruncToInt",
    "RoundToInt", "ToFloat", "Identity", "FloatTrueDiv", "IntTrueDiv", "Symbol", "Integer",
    "Rational", "Mul", "Add", "Pow", "And", "Or", "Not", "StrictGreaterThan",
    "StrictLessThan", "GreaterThan", "LessThan", "Equality", "Unequality",
}  # fmt: skip
EXPR_CONSTANTS = {"True", "False", "true", "false", "oo", "zoo", "nan"}
ASSUMPTIONS = {
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
    "nonzero", "zero", "even", "odd",
}  # fmt: skip
_EXPR_NODES = (
    ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call, ast.keyword,
    ast.Name, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.USub, ast.UAdd, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)  # fmt: skip
MAX_POWER = 8
MAX_EXPR = 1000
TREE_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}

PICKLE_HINT = (
    "it would need unpickling, which can run code; if you trust its author, pass "
    "--trust-pickle (trust_pickle=True)"
)


class PickleRequiredError(ConvlensError):
    """The archive holds something only a full unpickle or ``eval`` can read."""


@dataclass
class _Archive:
    zf: zipfile.ZipFile
    root: str
    model: str
    path: str

    def member(self, rel: str) -> str:
        return f"{self.root}/{rel}"


def _root(names: list[str]) -> str | None:
    """The one top-level folder every member lies in (torch names it after the file)."""
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        return None
    return roots.pop()


def archive_kind(source: str) -> str | None:
    """What a PyTorch zip holds, judged by content whatever the file is called.

    ``"pt2"`` (``<root>/archive_format`` says ``pt2``), ``"torchscript"`` (``<root>/code/`` or
    ``<root>/constants.pkl``: a ``torch.jit.save`` program), ``"torch-save"`` (any other zip
    with ``<root>/data.pkl``) or ``None`` (not a readable zip, or none of these).
    """
    try:
        regular_file(source)
        with zipfile.ZipFile(source) as z:
            names = z.namelist()
            root = _root(names)
            if root is None:
                return None
            if f"{root}/archive_format" in names:
                fmt = read_member(z, f"{root}/archive_format", 16).strip()
                return "pt2" if fmt == b"pt2" else None
            if f"{root}/constants.pkl" in names or any(
                n.startswith(f"{root}/code/") for n in names
            ):
                return "torchscript"
            return "torch-save" if f"{root}/data.pkl" in names else None
    except (ConvlensError, OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return None


def is_pt2(source: str) -> bool:
    """Whether ``source`` is a ``torch.export`` archive, whatever its suffix."""
    return archive_kind(source) == "pt2"


def _refuse(path: str, what: str, pickled: bool) -> ConvlensError:
    if pickled:
        return PickleRequiredError(f"{path!r} is refused: {what}; {PICKLE_HINT}")
    return ConvlensError(f"{path!r} is not a torch.export archive convlens accepts: {what}")


def _classify(path: str, root: str, names: list[str]) -> str:
    """Check every member's full path; return the program's model name."""
    models: list[str] = []
    for full in names:
        rel = full[len(root) + 1 :]
        if full.endswith("/"):
            raise _refuse(path, f"member {full!r} is a folder entry", False)
        m = _MODEL_JSON.fullmatch(rel)
        if m:
            models.append(m.group(1))
        elif rel in STATIC_MEMBERS or any(
            p.fullmatch(rel) for p in (_WEIGHT, _CONSTANT, _SAMPLE, _EXTRA)
        ):
            continue
        elif rel.endswith(("_weights_config.json", "_constants_config.json")):
            continue  # matched against the model name below
        else:
            pickled = rel.endswith((".pt", ".pkl", ".pth")) or any(
                k in rel for k in ("custom_obj", "opaque_obj", "aotinductor", "data.pkl")
            )
            raise _refuse(
                path,
                f"member {full!r} is not one torch.export.save writes for a plain program "
                "(accepted: models/, data/weights/weight_N, data/constants/tensor_N, their "
                "configs, archive_format, archive_version, byteorder, extra/)",
                pickled,
            )
    if len(models) != 1:
        raise _refuse(path, f"it holds {len(models)} programs under models/; accepted: one", False)
    model = models[0]
    for full in names:
        rel = full[len(root) + 1 :]
        ok = (
            f"data/weights/{model}_weights_config.json",
            f"data/constants/{model}_constants_config.json",
        )
        if rel.endswith(("_weights_config.json", "_constants_config.json")) and rel not in ok:
            raise _refuse(path, f"member {full!r} belongs to no program in the archive", False)
        if _SAMPLE.fullmatch(rel) and rel != f"data/sample_inputs/{model}.pt":
            raise _refuse(path, f"member {full!r} belongs to no program in the archive", False)
    return model


def _open(path: str) -> _Archive:
    zf = check_zip(path)
    try:
        names = zf.namelist()
        if len(names) != len(set(names)):
            raise _refuse(path, "it names a member twice", False)
        root = _root(names)
        if root is None:
            raise _refuse(path, "its members are not all in one top-level folder", False)
        model = _classify(path, root, names)
        for rel, want in STATIC_MEMBERS.items():
            if want is None or f"{root}/{rel}" not in names:
                if rel in ("archive_format", "archive_version"):
                    raise _refuse(path, f"it has no {rel} member", False)
                continue
            got = read_member(zf, f"{root}/{rel}", 64).strip()
            if got != want:
                raise _refuse(path, f"{rel} is {got[:20]!r}; accepted: {want.decode()!r}", False)
        return _Archive(zf, root, model, path)
    except BaseException:
        zf.close()
        raise


# ------------------------------------------------------------------ payloads (raw tensors)


def _as_int(v: Any, what: str) -> int:
    if not isinstance(v, dict) or set(v) != {"as_int"} or type(v["as_int"]) is not int:
        raise ConvlensError(f"{what} is {v!r}; accepted: a fixed integer")
    return int(v["as_int"])


def _payload_tensor(storage: torch.Tensor, meta: Any, what: str) -> torch.Tensor:
    """The strided view ``meta`` declares over ``storage``, after checking it fits inside."""
    if not isinstance(meta, dict):
        raise ConvlensError(f"{what} has no tensor_meta")
    sizes = [_as_int(s, f"{what} size") for s in meta.get("sizes") or []]
    strides = [_as_int(s, f"{what} stride") for s in meta.get("strides") or []]
    offset = _as_int(meta.get("storage_offset", {"as_int": 0}), f"{what} storage offset")
    if len(sizes) != len(strides) or min([*strides, offset, 0]) < 0:
        raise ConvlensError(f"{what} declares sizes {sizes}, strides {strides}, offset {offset}")
    if meta.get("layout", STRIDED) != STRIDED:
        raise ConvlensError(f"{what} is not a dense tensor (layout {meta.get('layout')!r})")
    numel = checked_elements(sizes, what)
    if numel:
        last = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True))
        if last >= storage.numel():
            raise ConvlensError(
                f"{what} reaches element {last} of a payload of {storage.numel()} values"
            )
        return storage.as_strided(sizes, strides, offset).clone()
    return torch.zeros(sizes, dtype=storage.dtype)


def _read_payloads(
    arc: _Archive, folder: str, pattern: re.Pattern[str], budget: Budget
) -> dict[str, torch.Tensor]:
    kind = "weights" if folder == "weights" else "constants"
    rel = f"data/{folder}/{arc.model}_{kind}_config.json"
    names = set(arc.zf.namelist())
    if arc.member(rel) not in names:
        raise _refuse(arc.path, f"it has no {rel}", False)
    doc = parse_json(read_member(arc.zf, arc.member(rel), MAX_JSON_BYTES), rel)
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise _refuse(arc.path, f"{rel} holds no 'config' object", False)
    storages: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for fqn, entry in config.items():
        what = f"{kind[:-1]} {fqn!r} ({rel})"
        if not isinstance(entry, dict):
            raise _refuse(arc.path, f"{what} is not an object", False)
        if entry.get("use_pickle") is not False:  # only the JSON literal false is plain bytes
            raise _refuse(arc.path, f"{what} has use_pickle={entry.get('use_pickle')!r}", True)
        path_name = entry.get("path_name")
        member_rel = f"data/{folder}/{path_name}"
        if not isinstance(path_name, str) or not pattern.fullmatch(member_rel):
            raise _refuse(arc.path, f"{what} points at {path_name!r}", True)
        meta = entry.get("tensor_meta")
        if not isinstance(meta, dict):
            raise _refuse(arc.path, f"{what} has no tensor_meta object", False)
        code = meta.get("dtype")
        dtype = DTYPES.get(code) if type(code) is int else None
        if dtype is None:
            raise _refuse(arc.path, f"{what} has dtype {code!r}; accepted: {sorted(DTYPES)}", False)
        key = f"{path_name}:{dtype}"
        if key not in storages:
            storages[key] = _storage(arc, arc.member(member_rel), dtype, budget)
        t = _payload_tensor(storages[key], meta, what)
        if entry.get("is_param") is True:
            grad = meta.get("requires_grad") is True and t.is_floating_point()
            t = torch.nn.Parameter(t, requires_grad=grad)
        out[str(fqn)] = t
    return out


def _storage(arc: _Archive, member: str, dtype: torch.dtype, budget: Budget) -> torch.Tensor:
    try:
        info = arc.zf.getinfo(member)
    except KeyError:
        raise _refuse(arc.path, f"member {member!r} is missing", False) from None
    budget.take(info.file_size, f"member {member!r}")
    data = read_member(arc.zf, member, info.file_size)
    size = torch.empty((), dtype=dtype).element_size()
    if len(data) % size:
        raise _refuse(arc.path, f"member {member!r} is not a whole number of {dtype} values", False)
    if not data:
        return torch.empty(0, dtype=dtype)
    with warnings.catch_warnings():  # read-only bytes: every tensor is cloned out of it
        warnings.simplefilter("ignore")
        return torch.frombuffer(data, dtype=dtype)


# ------------------------------------------------------------------ the program JSON


def _walk(obj: Any) -> Iterator[dict[str, Any]]:
    """Every dict inside ``obj``, iteratively."""
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _small_int(node: ast.AST) -> bool:
    """``3``, ``-2``, ``Integer(2)``: an exponent ``Pow`` may have."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1:
        node = node.args[0] if node.func.id == "Integer" else node
    return (
        isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) <= MAX_POWER
    )


def _expr_node_ok(node: ast.AST) -> bool:
    if not isinstance(node, _EXPR_NODES):
        return False
    if isinstance(node, ast.Name):
        return (
            node.id in EXPR_FUNCTIONS
            or node.id in EXPR_CONSTANTS
            or bool(_SYMBOL.fullmatch(node.id))
        )
    if isinstance(node, ast.Constant):
        v = node.value
        if type(v) is int:
            return abs(v) < 10**15
        if type(v) is float:
            return abs(v) < 1e15
        if type(v) is str:
            return bool(_SYMBOL.fullmatch(v))
        return type(v) is bool
    if isinstance(node, ast.keyword):
        return node.arg in ASSUMPTIONS and isinstance(node.value, ast.Constant)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in EXPR_FUNCTIONS:
            return False
        if node.func.id == "Pow":
            return len(node.args) == 2 and _small_int(node.args[1])
        strings = [a for a in node.args if isinstance(a, ast.Constant) and type(a.value) is str]
        return not strings or (node.func.id == "Symbol" and node.args[:1] == strings)
    return True


def check_expr(expr: Any, where: str) -> None:
    """Refuse a symbolic-size string that is more than cheap arithmetic over symbols.

    >>> check_expr("Mul(Integer(2), Symbol('s0', positive=True, integer=True))", "x")
    >>> check_expr("__import__('os')", "x")
    Traceback (most recent call last):
    ...
    convlens.errors.ConvlensError: x has the symbolic expression "__import__('os')"; accepted: \
arithmetic over symbols such as s0
    """
    ok = isinstance(expr, str) and len(expr) <= MAX_EXPR and "!" not in expr
    if ok:
        try:
            tree = ast.parse(expr, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            ok = False
        else:
            ok = all(_expr_node_ok(n) for n in ast.walk(tree))
    if not ok:
        shown = expr[:80] if isinstance(expr, str) else repr(expr)
        raise ConvlensError(
            f'{where} has the symbolic expression "{shown}"; accepted: arithmetic over symbols '
            "such as s0"
        )


def _check_tree_spec(spec: Any, where: str) -> None:
    """Tree specs name only builtin containers; no ``__enum__`` (it imports a module)."""
    if not isinstance(spec, str):
        raise ConvlensError(f"{where} is not a tree spec string")
    doc = parse_json(spec, where)
    for node in _walk(doc):
        typ = node.get("type")
        if "type" in node and not (typ is None or (isinstance(typ, str) and typ in TREE_TYPES)):
            raise ConvlensError(f"{where} names the type {str(node['type'])[:60]!r}; refused")
        ctx = node.get("context")
        if isinstance(ctx, str) and ctx.strip():
            inner = parse_json(ctx, f"{where} context")
            if any("__enum__" in d for d in _walk(inner)):
                raise ConvlensError(f"{where} names an enum class, which would import a module")


def _check_argument(arg: Any, where: str) -> None:
    if not isinstance(arg, dict) or len(arg) != 1:
        raise ConvlensError(f"{where} is not a serialized argument")
    kind = next(iter(arg))
    if kind not in PLAIN_ARGUMENTS:
        raise ConvlensError(
            f"{where} is a {kind} argument; accepted: tensors, numbers, lists, strings"
        )


def _check_program(doc: Any, path: str) -> dict[str, Any]:
    """Check the program JSON against the allow-list and return a sanitized copy."""
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise ConvlensError(f"{path!r}: the program JSON has no graph_module")
    gm = doc["graph_module"]
    graph, sig = gm.get("graph"), gm.get("signature")
    if not isinstance(graph, dict) or not isinstance(sig, dict):
        raise ConvlensError(f"{path!r}: the program JSON has no graph or signature")
    if graph.get("custom_obj_values"):
        raise PickleRequiredError(f"{path!r} holds torchbind/opaque objects; {PICKLE_HINT}")
    for i, node in enumerate(graph.get("nodes") or []):
        if not isinstance(node, dict):
            raise ConvlensError(f"{path!r}: node {i} is not an object")
        name, target = str(node.get("name", "?"))[:80], node.get("target")
        where = f"{path!r}: node {i} ({name})"
        if not isinstance(target, str) or not (target == GETITEM or _TARGET.fullmatch(target)):
            raise ConvlensError(
                f"{where} calls {str(target)[:80]!r}; accepted: torch.ops.aten operators"
            )
        for inp in node.get("inputs") or []:
            _check_argument(inp.get("arg") if isinstance(inp, dict) else None, where)
        for out in node.get("outputs") or []:
            _check_argument(out, where)
        meta = node.get("metadata")
        stack = meta.get("nn_module_stack") if isinstance(meta, dict) else None
        node["metadata"] = {"nn_module_stack": stack} if isinstance(stack, str) else {}
    for spec in sig.get("input_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind not in INPUT_KINDS:
            raise PickleRequiredError(f"{path!r} has a {kind} input; {PICKLE_HINT}")
    for spec in sig.get("output_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind not in OUTPUT_KINDS:
            raise ConvlensError(f"{path!r} has a {kind} output; accepted: the program's result")
    for d in _walk(doc):
        if "expr_str" in d:
            check_expr(d["expr_str"], f"{path!r}")
    for entry in gm.get("module_call_graph") or []:
        s = entry.get("signature") if isinstance(entry, dict) else None
        if isinstance(s, dict):
            for key in ("in_spec", "out_spec"):
                _check_tree_spec(s.get(key), f"{path!r} {key}")
    verifiers = doc.get("verifiers") or []
    if not all(v in ("ATEN", "TRAINING", "") for v in verifiers):
        raise ConvlensError(f"{path!r} names verifiers {verifiers!r}; accepted: ATEN, TRAINING")
    gm["metadata"] = {}
    doc["guards_code"] = []  # Python source that ExportedProgram.module() would execute
    return doc


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence PyTorch's warnings, logging and prints while it reads or converts a program.

    The TorchScript converter prints whole graphs when it fails; the user gets one line.
    """
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch._export", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def read_pt2(path: str) -> torch.export.ExportedProgram:
    """The program in a ``.pt2`` archive, read by the rules in the module docstring."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    arc = _open(path)
    with arc.zf:
        rel = f"models/{arc.model}.json"
        try:
            doc = parse_json(read_member(arc.zf, arc.member(rel), MAX_JSON_BYTES), rel)
            doc = _check_program(doc, path)
            budget = Budget()
            weights = _read_payloads(arc, "weights", _WEIGHT, budget)
            constants = _read_payloads(arc, "constants", _CONSTANT, budget)
        except ConvlensError:
            raise
        except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
            # A field of the wrong JSON type somewhere the checks above index into.
            raise ConvlensError(f"{path!r} has a malformed program or config: {e}") from None
    try:
        with quiet():
            program = _dict_to_dataclass(schema.ExportedProgram, doc)
            return ExportedProgramDeserializer().deserialize(program, weights, constants, None)
    except ConvlensError:
        raise
    except Exception as e:  # the deserializer's own checks: names, schema version, shapes
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConvlensError(f"cannot rebuild the program in {path!r}: {msg}") from None
