"""Write ``docs/web-api.md``'s field tables from :mod:`convlens.trace.schema`.

Each document's section holds a block between ``<!-- schema: Name -->`` and
``<!-- /schema -->``; this fills it with the document's table and the tables of the models it
nests that no earlier block showed. Run ``python -m convlens.trace.schema_docs`` after changing
a schema (``--check`` exits 1 when the file is out of date; a test does the same).

>>> print(table(schema.Hit).splitlines()[2])
| `value` | number | the activation |
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from convlens.trace import schema

DOC = Path(__file__).resolve().parents[3] / "docs" / "web-api.md"
BLOCK = re.compile(r"(<!-- schema: (\w+) -->\n).*?(<!-- /schema -->)", re.DOTALL)
_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}


def type_name(annotation: Any) -> str:
    """A field's type as the tables write it: ``list of Tensor``, ``integer or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return "any"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if origin is typing.Literal:
        return " or ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"object: {type_name(args[0])} → {type_name(args[1])}"
    return str(annotation)


def nested(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The models ``model``'s fields use, depth first, each once."""
    found: list[type[BaseModel]] = []

    def visit(annotation: Any) -> None:
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if is_model and annotation not in found:
            found.append(annotation)
            for field in annotation.model_fields.values():
                visit(field.annotation)
        for arg in typing.get_args(annotation):
            visit(arg)

    for field in model.model_fields.values():
        visit(field.annotation)
    return found


def table(model: type[BaseModel]) -> str:
    """One model as a Markdown table: field, type, meaning."""
    rows = ["| field | type | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {type_name(field.annotation)} | {meaning} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` with every schema block filled from the schemas (in the blocks' order)."""
    shown: set[str] = set()

    def title(model: type[BaseModel]) -> str:
        doc = " ".join((model.__doc__ or "").split()).replace("``", "`")
        return f"**{model.__name__}**: {doc}".strip()

    def fill(match: re.Match[str]) -> str:
        model = getattr(schema, match.group(2))
        parts = [title(model), "", table(model)]
        for inner in nested(model):
            if inner.__name__ in shown:
                continue
            shown.add(inner.__name__)
            parts += ["", title(inner), "", table(inner)]
        return f"{match.group(1)}{chr(10).join(parts)}\n{match.group(3)}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.path} is out of date: run python -m convlens.trace.schema_docs")
            return 1
        return 0
    args.path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
