"""What a unit looks for: activation maximization, inversion, adversarial examples, filter views.

>>> from convlens.model.zoo import build
>>> import convlens.featurevis as fv
>>> m = build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()
>>> fv.render(m, fv.channel("conv_1_1", [0, 1]), steps=2).images.shape
torch.Size([2, 1, 28, 28])
"""

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
from convlens.featurevis.transforms import Compose, Jitter, Pad, Rotate, Scale, standard_transforms

__all__ = [
    "Compose",
    "Context",
    "ImageParam",
    "Jitter",
    "Objective",
    "Pad",
    "RenderResult",
    "Rotate",
    "Scale",
    "blur",
    "channel",
    "class_logit",
    "class_prob",
    "direction",
    "diversity",
    "evaluate",
    "image_param",
    "l1",
    "l2",
    "layer",
    "neuron",
    "parse_channels",
    "redirected_relus",
    "render",
    "render_channels",
    "standard_transforms",
    "total_variation",
]
