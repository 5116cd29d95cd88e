"""``convlens export``: the explainer for a model and a few images as ONE self-contained HTML
file that opens from ``file://`` with no server and no network.

The file is the web front end (:mod:`convlens.offline.page`) with an embedded transport: the
answers the page needs were recorded at export time by asking the server's own routes, in
process (:class:`~convlens.offline.bridge.InProcessApi`), exactly as the page asks them:

- ``GET /model`` (its sample list: the chosen images; its methods: those precomputed);
- one ``GET /trace`` per image at the server's caps (``convlens.trace.default_caps``: the same
  budget of numbers as a served trace), from which the page's overview and detail requests are
  answered layer by layer;
- ``GET /weights/<layer>`` of every conv and linear layer whose detail view the file can show
  (the caps cut neither the layer nor its inputs), up to ``max_weight_numbers`` each;
- ``POST /explain`` for every image and method at the method's default parameters, for the
  predicted class (an explanation the server refuses is recorded with its error line).

What was not recorded (units, uploads, other parameters) is answered with a line saying so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError
from convlens.model.core import Model
from convlens.offline.bridge import ApiResponse, InProcessApi, with_samples
from convlens.offline.page import build_page, js_asset

MAX_IMAGES = 16  # images in one export: each adds one capped trace and its explanations
MAX_WEIGHT_NUMBERS = 1_000_000  # weights of one layer kept (4 MB of float32, ~5.3 MB base64)
DISPLAY_SIDE = 384  # longer side of a chosen image as the picker shows it
# An exported page runs no new images and shows no units: hide those controls rather than have
# every use of them answer "not in this file".
EXPORT_HEAD = "<style>#inputs .upload, #unit-panel { display: none !important; }</style>"


@dataclass
class ExportReport:
    """What ``export_explainer`` wrote."""

    path: Path
    bytes: int
    images: list[str]
    parts: dict[str, int]  # bytes of JSON per kind of answer
    explanations: int  # recorded successfully
    refused: list[str] = field(default_factory=list)  # "method on image: error line"
    skipped_weights: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        parts = ", ".join(f"{k} {_size(v)}" for k, v in self.parts.items())
        return (
            f"wrote {self.path} ({_size(self.bytes)}: {parts}); {len(self.images)} image(s), "
            f"{self.explanations} explanation(s) in {self.seconds:.1f} s"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def check_images(images: Sequence[str | Path]) -> list[Path]:
    """Each image decodes (with the server's limits for its sample files), else one line
    naming the file and what was wrong."""
    from dataclasses import replace

    from convlens.io.image import FILE_FORMATS, DecodeLimits, decode_image

    if len(images) > MAX_IMAGES:
        raise ConvlensError(f"{len(images)} images given; an export holds at most {MAX_IMAGES}")
    limits = replace(DecodeLimits(), formats=FILE_FORMATS)
    paths = []
    for image in images:
        path = Path(image)
        try:
            decode_image(path, limits)
        except ConvlensError as e:
            raise ConvlensError(f"cannot read image {str(path)!r}: {e}") from None
        paths.append(path)
    return paths


def _ok(answer: ApiResponse, what: str) -> Any:
    if not answer.ok:
        raise ConvlensError(f"{what}: {answer.error()}")
    return answer.json()


def _recorded(answer: ApiResponse) -> dict[str, Any]:
    """An answer as the page would read it: its status and its JSON body."""
    return {"status": answer.status, "body": answer.json()}


def explain_key(image_id: str, method: str) -> str:
    """The key the embedded transport looks an explanation up by (see ``embedded.js``)."""
    doc: list[Any] = [image_id, method, None, None, {}]
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _display_url(api: InProcessApi, sample_id: str) -> str:
    """A chosen image as the picker shows it, at most ``DISPLAY_SIDE`` px on its longer side."""
    from convlens.trace.encode import display_copy, png_data_url

    return png_data_url(display_copy(api.state.store.sample_image(sample_id), DISPLAY_SIDE))


def record(
    api: InProcessApi,
    *,
    methods: Sequence[str] | None = None,
    max_channels: int | None = None,
    max_size: int | None = None,
    max_weight_numbers: int = MAX_WEIGHT_NUMBERS,
    progress: Any = None,
) -> tuple[dict[str, Any], ExportReport]:
    """Ask ``api`` what the page will need; returns the embedded data and a partial report."""
    say = progress or (lambda _msg: None)
    model_doc = _ok(api.get("/model"), "the model document")
    catalogue = [m["name"] for m in model_doc["capabilities"]["methods"]]
    chosen = catalogue if methods is None else list(methods)
    for name in chosen:
        if name not in catalogue:
            raise ConvlensError(
                f"unknown method {name!r} for --methods; the methods are {', '.join(catalogue)}"
            )
    # the page offers only the methods this file holds
    caps = model_doc["capabilities"]
    caps["methods"] = [m for m in caps["methods"] if m["name"] in chosen]
    report = ExportReport(Path(), 0, [s["name"] for s in model_doc["samples"]], {}, 0)
    data: dict[str, Any] = {
        "version": 1,
        "responses": {"GET /model": {"status": 200, "body": model_doc}},
        "traces": {},
        "explanations": {},
        "assets": {},
    }
    query = "".join(
        f"&{k}={v}" for k, v in (("max_channels", max_channels), ("max_size", max_size)) if v
    )
    for sample in model_doc["samples"]:
        sid = sample["id"]
        say(f"tracing {sample['name']}")
        data["traces"][sid] = _ok(api.get(f"/trace?image={sid}{query}"), f"the trace of {sid}")
        data["assets"][sample["url"]] = _display_url(api, sid)
    # a detail view needs its layer and the layer's inputs whole: where the caps cut either,
    # the view says so, and the layer's weights would be dead weight in the file
    cut = {name for doc in data["traces"].values() for name in doc["caps"]}
    for layer in model_doc["graph"]["layers"]:
        if layer["kind"] not in ("conv", "linear"):
            continue
        if cut & {layer["name"], *layer["inputs"]}:
            continue
        if layer.get("params", 0) > max_weight_numbers:
            report.skipped_weights.append(layer["name"])
            continue
        answer = api.get(f"/weights/{layer['name']}")
        if answer.ok:
            data["responses"][f"GET /weights/{layer['name']}"] = _recorded(answer)
    for sample in model_doc["samples"]:
        for name in chosen:
            say(f"{name} on {sample['name']}")
            body = {"image_id": sample["id"], "method": name, "target": None, "params": {}}
            answer = api.post_json("/explain", body)
            data["explanations"][explain_key(sample["id"], name)] = _recorded(answer)
            if answer.ok:
                report.explanations += 1
            else:
                report.refused.append(f"{name} on {sample['name']}: {answer.error()}")
    report.parts = {
        "traces": len(json.dumps(data["traces"])),
        "weights": len(json.dumps(data["responses"])) - len(json.dumps(model_doc)),
        "explanations": len(json.dumps(data["explanations"])),
        "images": len(json.dumps(data["assets"])),
    }
    return data, report


def export_explainer(
    model: Model,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    methods: Sequence[str] | None = None,
    max_channels: int | None = None,
    max_size: int | None = None,
    progress: Any = None,
) -> ExportReport:
    """Write the explainer for ``model`` on ``images`` (the model's own samples when none) to
    ``out`` as one self-contained HTML file; returns what was written and its size."""
    from convlens.io.atomic import write_bytes_atomic

    start = time.perf_counter()
    paths = check_images(images)
    view = with_samples(model, paths, keep_own=False) if paths else model
    if not view.samples:
        raise ConvlensError(
            f"model {model.name!r} has no sample images; name the images to export (--images)"
        )
    notes = []
    if len(view.samples) > MAX_IMAGES:
        notes.append(
            f"the model has {len(view.samples)} sample images; the file holds the first "
            f"{MAX_IMAGES} (name others with --images)"
        )
        view = with_samples(model, [s.path for s in model.samples[:MAX_IMAGES]], keep_own=False)
    api = InProcessApi(view)
    try:
        data, report = record(
            api,
            methods=methods,
            max_channels=max_channels,
            max_size=max_size,
            progress=progress,
        )
    finally:
        api.close()
    html = build_page(js_asset("embedded.js"), data, head=EXPORT_HEAD)
    target = Path(out)
    encoded = html.encode("utf-8")
    write_bytes_atomic(target, encoded)
    report.notes = notes
    report.path = target
    report.bytes = len(encoded)
    report.seconds = time.perf_counter() - start
    return report
