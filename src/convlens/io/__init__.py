"""Images in and pictures out: decoding, the input spec, colormaps, figures, atomic files."""

from convlens.io.atomic import (
    atomic_write,
    ensure_writable_dir,
    write_bytes_atomic,
    write_text_atomic,
)
from convlens.io.color import Scale, colorize, colormap_names
from convlens.io.figure import (
    Figure,
    RichDisplay,
    caption,
    colorbar,
    grid,
    heatmap,
    hstack,
    overlay,
    overlay_panel,
    save_png,
    vstack,
)
from convlens.io.image import (
    DecodeLimits,
    decode_image,
    fit_to_spec,
    image_to_tensor,
    load_image,
    load_images,
    tensor_to_image,
)
from convlens.io.spec import InputSpec

__all__ = [
    "DecodeLimits",
    "Figure",
    "InputSpec",
    "RichDisplay",
    "Scale",
    "atomic_write",
    "caption",
    "colorbar",
    "colorize",
    "colormap_names",
    "decode_image",
    "ensure_writable_dir",
    "fit_to_spec",
    "grid",
    "heatmap",
    "hstack",
    "image_to_tensor",
    "load_image",
    "load_images",
    "overlay",
    "overlay_panel",
    "save_png",
    "tensor_to_image",
    "vstack",
    "write_bytes_atomic",
    "write_text_atomic",
]
