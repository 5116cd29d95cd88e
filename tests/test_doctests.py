"""The examples in convlens's docstrings run and print what they say (``>>>`` lines)."""

from __future__ import annotations

import doctest
import importlib
import io
import unittest
from pathlib import Path

import pytest

import convlens

ROOT = Path(convlens.__file__).resolve().parent


def _modules_with_examples() -> list[str]:
    """Modules whose source has a ``>>>`` example (found as text, so nothing else is imported)."""
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_examples_are_found() -> None:
    assert len(MODULES) >= 30 and "convlens.web.server" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    suite = doctest.DocTestSuite(module, optionflags=doctest.ELLIPSIS)
    out = io.StringIO()
    result = unittest.TextTestRunner(stream=out, verbosity=0).run(suite)
    assert result.wasSuccessful(), out.getvalue()[-4000:]
