"""convlens: see what a convolutional network does.

>>> import convlens
>>> model = convlens.load_model("tiny-vgg")
>>> model.graph.total_params
19920
"""

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model import Model, load_model

__version__ = "0.1.0"
__all__ = ["ConvlensError", "InputSpec", "Model", "__version__", "load_model"]
