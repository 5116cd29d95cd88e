"""``convlens fool``: an adversarial example for an image, with the prediction before and after."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.checks import in_range, png_target
from convlens.cli.common import ModelArg, ModelFlags, with_model_flags
from convlens.errors import ConvlensError
from convlens.featurevis.adversarial import fgsm, pgd
from convlens.io.figure import save_png


@with_model_flags
def fool(
    image: Annotated[Path, typer.Argument(help="Image file to perturb.")],
    model: ModelArg = "demo",
    eps: Annotated[float, typer.Option(help="Budget in pixel units (images in [0, 1]).")] = 8 / 255,
    target: Annotated[
        str | None, typer.Option(help="Class (name or index) to aim for; untargeted if absent.")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="The true class; the model's prediction if absent.")
    ] = None,
    method: Annotated[str, typer.Option(help="'pgd' or 'fgsm'.")] = "pgd",
    norm: Annotated[str, typer.Option(help="PGD budget: 'linf' or 'l2'.")] = "linf",
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 20,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Figure PNG (or folder) to write.")
    ] = None,
    *,
    flags: ModelFlags,
) -> None:
    """Perturb IMAGE within a budget so that the model changes its mind."""
    if method not in ("pgd", "fgsm"):
        raise ConvlensError(f"unknown --method {method!r}; accepted: pgd, fgsm")
    if norm not in ("linf", "l2"):
        raise ConvlensError(f"unknown --norm {norm!r}; accepted: linf, l2")
    # An L∞ budget is a per-pixel change (pixels in [0, 1]); an L2 one a whole-image length.
    limit = 1.0 if norm == "linf" else 1000.0
    if not (math.isfinite(eps) and 0 <= eps <= limit):
        raise ConvlensError(
            f"--eps must be >= 0 and <= {limit:g} (a {norm} budget in pixel units), got {eps}"
        )
    in_range("--steps", steps, 1, 10_000)
    target_png = None if out is None else png_target(out, f"fool-{image.stem}.png")
    m = flags.open(model)
    x = m.load_image(image)
    if method == "fgsm":
        if norm != "linf":
            raise ConvlensError("FGSM has an L∞ budget only; use --method pgd for --norm l2")
        r = fgsm(m, x, eps, labels=label, target=target)
    elif method == "pgd":
        r = pgd(m, x, eps, norm=norm, steps=steps, labels=label, target=target)  # type: ignore[arg-type]
    else:
        raise ConvlensError(f"unknown method {method!r}; accepted: pgd, fgsm")
    kb, ka = int(r.pred_before[0]), int(r.pred_after[0])
    typer.echo(f"before: {m.classes[kb]} ({float(r.before[0, kb]):.3f})")
    typer.echo(f"after:  {m.classes[ka]} ({float(r.after[0, ka]):.3f})")
    typer.echo(
        f"{method} {norm} eps={eps:.4g}: max |change| {float(r.perturbation.abs().max()):.4g}, "
        f"L2 {float(r.perturbation.flatten().norm()):.4g}; "
        + ("fooled" if bool(r.success[0]) else "not fooled")
    )
    if target_png is not None:
        save_png(r.figure(m.classes), target_png)
        typer.echo(f"wrote {target_png}")


def register(app: typer.Typer) -> None:
    app.command()(fool)
