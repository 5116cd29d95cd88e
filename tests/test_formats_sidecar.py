"""Sidecars and class-name files travel with untrusted model files: bounded and depth-checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from convlens.errors import ConvlensError
from convlens.model.formats.base import parse_class_list, read_classes, read_sidecar


def test_sidecar_is_read(tmp_path: Path) -> None:
    model = tmp_path / "net.onnx"
    model.write_bytes(b"")
    (tmp_path / "net.convlens.json").write_text('{"classes": ["a", "b"]}')
    assert read_sidecar(model) == {"classes": ["a", "b"]}


def test_deeply_nested_sidecar_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "net.onnx"
    model.write_bytes(b"")
    (tmp_path / "net.convlens.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ConvlensError, match="nests deeper"):
        read_sidecar(model)


def test_sidecar_fifo_is_passed_over_without_blocking(tmp_path: Path) -> None:
    model = tmp_path / "net.onnx"
    model.write_bytes(b"")
    os.mkfifo(tmp_path / "convlens.json")  # opening it for reading would wait for a writer
    assert read_sidecar(model) == {}


def test_oversized_class_file_is_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "classes.txt"
    with p.open("wb") as f:
        f.truncate(17 << 20)  # sparse: the size alone must refuse it
    with pytest.raises(ConvlensError, match="at most"):
        read_classes(p)


def test_class_file_forms(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"classes": ["x", "y"]}')
    (tmp_path / "b.txt").write_text("x\n\ny\n")
    assert read_classes(tmp_path / "a.json") == read_classes(tmp_path / "b.txt") == ["x", "y"]
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ConvlensError, match="JSON list of strings"):
        read_classes(tmp_path / "c.json")


def test_metadata_class_list_with_hostile_nesting_is_ignored() -> None:
    assert parse_class_list("[" * 100_000 + "]" * 100_000) is None
    assert parse_class_list('["cat", "dog"]') == ["cat", "dog"]
