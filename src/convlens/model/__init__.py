"""The model core: :class:`Model`, its layer graph, the zoo and the loaders."""

from convlens.model.checkpoint import load_checkpoint, save_checkpoint
from convlens.model.core import Model, Sample
from convlens.model.graph import Layer, LayerGraph, build_graph
from convlens.model.load import FORMATS, LoadOptions, ModelFormat, load_model
from convlens.model.receptive import ReceptiveField, output_size, tiling_problem
from convlens.model.zoo import ZOO, build, parse_arch

# Registers the Keras, TF.js, ONNX and PyTorch formats into FORMATS (after load.py defines it).
from convlens.model import formats as formats  # isort: skip

__all__ = [
    "FORMATS",
    "ZOO",
    "Layer",
    "LayerGraph",
    "LoadOptions",
    "Model",
    "ModelFormat",
    "ReceptiveField",
    "Sample",
    "build",
    "build_graph",
    "load_checkpoint",
    "load_model",
    "output_size",
    "parse_arch",
    "save_checkpoint",
    "tiling_problem",
]
