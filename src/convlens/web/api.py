"""The JSON API under ``/api/v1`` (contract: ``docs/web-api.md``).

Routes are thin: they look up the image, check every parameter against its bound, and hand
the model work to a small pool of its own (:class:`convlens.web.state.WorkPool`: uploads'
decoding, traces, explanations), so a request waiting for the model holds no request thread
and ``GET /model`` answers while an explanation runs. Explanations run on a private copy of
the model under a time budget; traces share the served model under the read lock.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Body, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from convlens.errors import ConvlensError, NotFoundError, unknown_name
from convlens.io.color import Scale
from convlens.io.figure import overlay, png_bytes
from convlens.model.core import Model
from convlens.trace import (
    TraceOptions,
    build_trace,
    encode_tensor,
    kernel_of,
    png_data_url,
    weights_document,
)
from convlens.trace.document import _capped_size
from convlens.web import features, schemas
from convlens.web.errors import ApiError
from convlens.web.state import ServerState, TimeBudgetExceededError, time_budget
from convlens.web.store import StoredImage
from convlens.web.uploads import MULTIPART_OVERHEAD, decode_upload, multipart_file, read_body

PREFIX = "/api/v1"
RENDER_CACHE = 256  # feature visualizations kept per server
MAX_CAP = 4096  # largest max_channels / max_size a trace may name


class ExplainRequest(BaseModel):
    """Body of ``POST /api/v1/explain``."""

    # strict: ``"target": false`` is not class 0 (found by schemathesis); unknown keys refused
    model_config = ConfigDict(strict=True, extra="forbid")

    image_id: str = Field(
        max_length=200, description="a sample id (sample-N) or an id from POST /images"
    )
    method: str = Field(max_length=100, description="a method name from /model's methods")
    target: int | str | None = Field(None, description="class index or name; null: predicted")
    layer: str | None = Field(
        None, max_length=1000, description="a layer name; null: the method's default"
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the method's parameters; bounded numbers must lie within the "
        "minimum..maximum that /model lists for them",
    )


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.Error, "description": "bad parameter or corrupt image"},
    401: {"model": schemas.Error, "description": "this server needs its access token"},
    403: {"model": schemas.Error, "description": "Host or Origin is not this server"},
    404: {"model": schemas.Error, "description": "unknown image, layer or sample"},
    413: {"model": schemas.Error, "description": "request body too large"},
    415: {"model": schemas.Error, "description": "wrong Content-Type for this route"},
    422: {"model": schemas.Error, "description": "malformed request or value out of range"},
    503: {"model": schemas.Error, "description": "busy: too many requests of this kind"},
}


def model_document(state: ServerState) -> dict[str, Any]:
    """The body of ``GET /model`` (computed once per server)."""
    model, cfg = state.model, state.config
    samples = [
        {
            "id": s.id,
            "name": s.name,
            "label": s.label,
            "label_name": model.classes[s.label] if s.label is not None else None,
            "url": f"{PREFIX}/samples/{s.id}.png",
        }
        for s in state.store.samples.values()
    ]
    return {
        "name": model.name,
        "classes": model.classes,
        "input_spec": model.spec.to_dict(),
        "outputs": model.outputs,
        "graph": model.graph.to_dict(),
        "samples": samples,
        "capabilities": {
            "methods": features.method_catalogue(),
            "scan": state.scan is not None and state.scan.dataset is not None,
            "featurevis": features.featurevis_available(),
        },
        "limits": {
            "max_upload_bytes": cfg.max_upload_bytes,
            "max_upload_pixels": cfg.max_upload_pixels,
            "max_channels": state.trace_max_channels,
            "max_size": state.trace_max_size,
            "max_aspect": cfg.max_aspect,
            "max_json_bytes": cfg.max_json_bytes,
            "trace_max_numbers": cfg.trace_max_numbers,
            "explain_seconds": cfg.explain_seconds,
        },
    }


def upload_document(stored: StoredImage) -> dict[str, Any]:
    return {
        "image_id": stored.image_id,
        "width": stored.width,
        "height": stored.height,
        "original": png_data_url(stored.original),
        "processed": stored.processed_url,
    }


def _check_layer(state: ServerState, layer: str) -> None:
    if layer not in state.model.graph:
        state.model.graph[layer]  # raises the NotFoundError listing the known layers


def class_index(model: Model, target: int | str) -> int:
    """A class by index or name; 400 naming the range for anything else (``"²"``, 2**70)."""
    numeral = isinstance(target, str) and target.isascii() and target.lstrip("-").isdigit()
    if isinstance(target, str) and target not in model.classes and not numeral:
        # "²", "٣": digits to str.isdigit (and int("٣") is 3), but not class indices
        raise unknown_name("class", target, model.classes)
    try:
        return model.class_index(target)
    except ConvlensError:  # its own message (out of range, unknown name with suggestions)
        raise
    except (ValueError, OverflowError):  # str.isdigit() is true for "²", int("²") is not
        raise ConvlensError(
            f"unknown class {target!r}; give a class index 0..{len(model.classes) - 1} or a "
            "class name from /model's classes"
        ) from None


def check_chunk(state: ServerState, params: dict[str, Any]) -> None:
    """Refuse (422) a ``chunk_size`` whose batch of images would pass the server's pixel
    budget per pass (a method's own bound allows thousands of small images, not of large)."""
    chunk = params.get("chunk_size")
    if not isinstance(chunk, int) or isinstance(chunk, bool):
        return  # absent, or a type the method's bound refuses
    spec = state.model.spec
    per_image = spec.height * spec.width
    limit = state.config.max_chunk_pixels
    if chunk * per_image > limit:
        raise ApiError(
            422,
            f"chunk_size {chunk} × {spec.height}×{spec.width} pixels is more than this "
            f"server's {limit:,} pixels per pass; at most {max(1, limit // per_image)} here",
        )


def check_trace_caps(state: ServerState, options: TraceOptions) -> None:
    """Refuse (422) caps whose trace would send more than the server's number budget."""
    names = options.layers if options.layers is not None else state.model.graph.names()
    graph = state.model.graph
    numbers = sum(
        _capped_size(graph[n].output_shape, options.max_channels, options.max_size)
        for n in dict.fromkeys(names)
        if n in graph
    )
    limit = state.config.trace_max_numbers
    if numbers > limit:
        raise ApiError(
            422,
            f"a trace with max_channels={options.max_channels}, max_size={options.max_size} "
            f"would send {numbers:,} numbers; this server sends at most {limit:,} (lower "
            "max_channels or max_size, or ask for fewer layers)",
        )


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix=PREFIX, responses=_ERRORS)
    model = state.model

    @router.get(
        "/model",
        summary="The model: classes, input spec, layer graph, samples",
        response_class=Response,
        responses={200: {"model": schemas.ModelDoc, "content": {"application/json": {}}}},
    )
    async def get_model() -> Response:
        # encoded once and answered from the event loop: no thread, no validation pass, so it
        # answers at once however busy the model's workers are
        body = state.cache.get("model")
        if body is None:
            doc = schemas.ModelDoc.model_validate(model_document(state)).model_dump(mode="json")
            body = state.cache["model"] = json_bytes(doc)
        return Response(body, media_type="application/json")

    @router.get(
        "/samples/{sample_id}.png",
        summary="A sample image as PNG",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def get_sample(sample_id: str) -> Response:
        return Response(png_bytes(state.store.sample_image(sample_id)), media_type="image/png")

    @router.post(
        "/images",
        summary="Upload an image (multipart/form-data, form field 'file')",
        openapi_extra=_UPLOAD_BODY,
        response_model=schemas.Upload,
        responses={
            413: {"model": schemas.Error, "description": "too many bytes or pixels"},
            415: {"model": schemas.Error, "description": "not an image, or not multipart"},
        },
    )
    async def post_image(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        limit = state.config.max_upload_bytes + MULTIPART_OVERHEAD
        declared = request.headers.get("content-length", "")
        size = int(declared) if declared.isascii() and declared.isdigit() else None  # not "²"
        with state.upload_slots():  # a bounded number of bodies in memory at once
            body = await read_body(request.stream(), limit, size)

            def work() -> dict[str, Any]:  # parsing and decoding: on the bounded decode pool
                data = multipart_file(body, content_type)
                img = decode_upload(data, state.config.decode_limits)
                return upload_document(state.store.add_upload(img))

            return await state.decode_pool.run(work)

    @router.get(
        "/trace",
        summary="Every layer's output, stats and prediction for an image",
        response_class=Response,
        responses={200: {"model": schemas.Trace, "content": {"application/json": {}}}},
    )
    async def get_trace(
        image: Annotated[
            str, Query(max_length=200, description="image id: sample-N or from POST /images")
        ],
        max_channels: Annotated[
            int | None, Query(ge=1, le=MAX_CAP, description="channels per layer")
        ] = None,
        max_size: Annotated[
            int | None, Query(ge=1, le=MAX_CAP, description="largest map side sent")
        ] = None,
        layers: Annotated[
            str | None, Query(max_length=100_000, description="comma-separated layer names")
        ] = None,
    ) -> Response:
        options = TraceOptions(
            max_channels=max_channels or state.trace_max_channels,
            max_size=max_size or state.trace_max_size,
            layers=[n.strip() for n in layers.split(",") if n.strip()] if layers else None,
        )
        check_trace_caps(state, options)

        def work() -> bytes:
            stored = state.store.get(image)
            # a traced graph runs without hooks, so traces share the model; an untraceable
            # model is recorded with hooks (probe.record_all's fallback) and needs it alone
            shared = model.graph.traced is not None
            with state.model_lock.read() if shared else state.model_lock.write():
                doc = build_trace(
                    model,
                    stored.tensor,
                    image_id=image,
                    options=options,
                    processed_url=stored.processed_url,
                )
            return json_bytes(doc)

        return Response(await state.trace_pool.run(work), media_type="application/json")

    @router.get(
        "/weights/{layer:path}",
        summary="Weight and bias of a conv or linear layer",
        response_model=schemas.Weights,
    )
    def get_weights(layer: str) -> dict[str, Any]:
        _check_layer(state, layer)
        return weights_document(model, layer)

    @router.post(
        "/explain",
        summary="An explanation map for an image, a method and a target class",
        response_model=schemas.Explanation,
        responses={
            422: {
                "model": schemas.Error,
                "description": "a parameter out of its range, or the explanation ran past "
                "the server's time budget",
            },
            503: {"model": schemas.Error, "description": "busy, or no explanation methods"},
        },
    )
    async def post_explain(req: Annotated[ExplainRequest, Body()]) -> dict[str, Any]:
        budget = state.config.explain_seconds
        stored = await run_in_threadpool(state.store.get, req.image_id)  # unknown: 404
        try:
            features.check_request(req.method, req.params)  # before any work is queued
            check_chunk(state, req.params)
            if req.layer is not None:
                _check_layer(state, req.layer)
            # a named or numbered class is checked here; None lets the method use the prediction
            target = None if req.target is None else class_index(model, req.target)
        except features.UnavailableError as e:
            raise ApiError(503, str(e)) from None
        except ConvlensError as e:  # out of its bound: 422; unknown method, layer, class: 400
            raise ApiError(422 if _is_param_error(e) else 400, str(e)) from None

        def work() -> dict[str, Any]:  # on the explanation pool, on the private model copy
            start = time.perf_counter()
            with state.work_lock, time_budget(budget):
                result = features.explain(
                    state.work_model(), stored.tensor, req.method, target, req.layer, req.params
                )
            seconds = time.perf_counter() - start
            amap = result.map.detach().float()
            if not bool(torch.isfinite(amap).all()):
                raise ApiError(
                    422,
                    f"the {req.method} map has NaN or infinite values (the model's output or "
                    "the parameters overflowed); try other parameters",
                )
            scale = Scale.fit(amap, "rdbu" if result.signed else "viridis")
            return {
                "method": req.method,
                "target": result.target,
                "target_name": model.classes[result.target],
                "layer": result.layer,
                "map": encode_tensor(amap),
                "signed": result.signed,
                "overlay": png_data_url(overlay(stored.processed, amap, scale)),
                "seconds": round(seconds, 4),
            }

        try:
            return await state.explain_pool.run(work)
        except TimeBudgetExceededError:
            raise ApiError(
                422,
                f"the {req.method} explanation ran past this server's time budget of "
                f"{budget:g} s; ask for less work (fewer samples or steps, a larger window "
                "or stride)",
            ) from None
        except features.UnavailableError as e:
            raise ApiError(503, str(e)) from None
        except ConvlensError as e:  # out-of-range parameter: 422; unknown name: 400
            raise ApiError(422 if _is_param_error(e) else 400, str(e)) from None

    @router.get(
        "/units/{layer:path}/{channel}",
        summary="One unit: kernel, feature visualization, top dataset patches",
        response_model=schemas.Unit,
    )
    async def get_unit(
        layer: str,
        channel: int,
        featurevis: Annotated[
            bool, Query(description="render the feature visualization (slow the first time)")
        ] = True,
    ) -> dict[str, Any]:
        _check_layer(state, layer)
        lay = model.graph[layer]
        channels = lay.output_shape[0]
        if not 0 <= channel < channels:
            raise ConvlensError(
                f"channel {channel} is out of range for layer {layer!r} (0..{channels - 1})"
            )
        fv = (
            await state.explain_pool.run(lambda: _cached_render(state, layer, channel))
            if featurevis
            else None
        )

        def read_patches() -> Any:
            with state.scan_lock:  # data sets read files and may cache; one reader at a time
                return features.top_patches(
                    state.scan, model, layer, channel, n=state.config.top_patches
                )

        patches = await run_in_threadpool(read_patches)
        return {
            "layer": layer,
            "channel": channel,
            "featurevis": png_data_url(fv) if fv is not None else None,
            "kernel": kernel_of(model, layer, channel),
            "top_patches": [png_data_url(p) for p in patches[0]] if patches else None,
            "top_hits": patches[1] if patches else None,
        }

    @router.api_route("/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    def unknown_route(rest: str, request: Request) -> None:
        raise NotFoundError(
            f"no API route {request.method} /api/v1/{rest}; see /api/v1/openapi.json"
        )

    return router


def _cached_render(state: ServerState, layer: str, channel: int) -> Any:
    """The unit's feature visualization, rendered once per server on a private model copy."""
    key = ("featurevis", layer, channel)
    with state.cache_lock:
        if key in state.cache:
            return state.cache[key]
    with state.work_lock:
        with state.cache_lock:  # another request may have rendered it while we waited
            if key in state.cache:
                return state.cache[key]
        image = features.render_unit(
            state.work_model(), layer, channel, state.config.featurevis_steps
        )
    with state.cache_lock:
        state.cache[key] = image
        renders = [k for k in state.cache if isinstance(k, tuple) and k[0] == "featurevis"]
        for stale in renders[: max(0, len(renders) - RENDER_CACHE)]:  # oldest first
            del state.cache[stale]
    return image


def json_bytes(doc: dict[str, Any]) -> bytes:
    """JSON without FastAPI's validation pass (a trace is large and already plain data)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _is_param_error(e: ConvlensError) -> bool:
    try:
        from convlens.methods import ParamError
    except ImportError:
        return False
    return isinstance(e, ParamError)
