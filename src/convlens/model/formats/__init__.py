"""Model formats beyond the zoo and checkpoints, each registered into ``FORMATS`` on import.

One module per family: TensorFlow.js and Keras (sharing :mod:`.keras_layers`), PyTorch
programs and archives, ONNX, and the named downloads (``cnn-explainer``). Optional
dependencies (``h5py``, ``onnx``: the ``formats`` extra) are imported only when a file of
that kind is loaded.
"""

from convlens.model.formats import download, keras, onnx_format, tfjs, torch_formats

__all__ = ["download", "keras", "onnx_format", "tfjs", "torch_formats"]
