"""What a unit looks for: activation maximization, inversion, adversarial examples, filter views.

>>> from convlens.model.zoo import build
>>> import convlens.featurevis as fv
>>> m = build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()
>>> fv.render(m, fv.channel("conv_1_1", [0, 1]), steps=2).images.shape
torch.Size([2, 1, 28, 28])
"""

from convlens.featurevis.adversarial import AdversarialResult, amplify, fgsm, pgd
from convlens.featurevis.filters import conv_weights, filter_figure, roughness
from convlens.featurevis.inversion import (
    Inversion,
    correlation,
    inversion_figure,
    invert,
    invert_layers,
)
from convlens.featurevis.objectives import (
    Context,
    Objective,
    blur,
    channel,
    class_logit,
    class_prob,
    direction,
    diversity,
    l1,
    l2,
    layer,
    neuron,
    total_variation,
)
from convlens.featurevis.param import ImageParam, image_param
from convlens.featurevis.render import (
    RenderResult,
    evaluate,
    parse_channels,
    redirected_relus,
    render,
    render_channels,
)
from convlens.featurevis.transforms import (
    Compose,
    Jitter,
    Pad,
    Rotate,
    Scale,
    standard_transforms,
    strong_transforms,
)

__all__ = [
    "AdversarialResult",
    "Compose",
    "Context",
    "ImageParam",
    "Inversion",
    "Jitter",
    "Objective",
    "Pad",
    "RenderResult",
    "Rotate",
    "Scale",
    "amplify",
    "blur",
    "channel",
    "class_logit",
    "class_prob",
    "conv_weights",
    "correlation",
    "direction",
    "diversity",
    "evaluate",
    "fgsm",
    "filter_figure",
    "image_param",
    "inversion_figure",
    "invert",
    "invert_layers",
    "l1",
    "l2",
    "layer",
    "neuron",
    "parse_channels",
    "pgd",
    "redirected_relus",
    "render",
    "render_channels",
    "roughness",
    "standard_transforms",
    "strong_transforms",
    "total_variation",
]
