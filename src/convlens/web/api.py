"""The JSON API under ``/api/v1`` (contract: ``docs/web-api.md``).

Routes are thin: they look up the image, take the model lock for the model pass, and hand
the result to :mod:`convlens.trace` for encoding. Model work runs in plain ``def`` routes,
which FastAPI runs in its threadpool, so the event loop stays free while a model computes.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from convlens.errors import ConvlensError, NotFoundError
from convlens.io.color import Scale
from convlens.io.figure import overlay, png_bytes
from convlens.trace import (
    TraceOptions,
    build_trace,
    encode_tensor,
    kernel_of,
    png_data_url,
    weights_document,
)
from convlens.web import features, schemas
from convlens.web.errors import ApiError
from convlens.web.state import ServerState
from convlens.web.store import StoredImage
from convlens.web.uploads import MULTIPART_OVERHEAD, decode_upload, multipart_file, read_body

PREFIX = "/api/v1"
RENDER_CACHE = 256  # feature visualizations kept per server


class ExplainRequest(BaseModel):
    """Body of ``POST /api/v1/explain``."""

    image_id: str = Field(description="a sample id (sample-N) or an id from POST /images")
    method: str = Field(description="a method name from /model's capabilities.methods")
    target: int | str | None = Field(None, description="class index or name; null: predicted")
    layer: str | None = Field(None, description="a layer name; null: the method's default")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's parameters")


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
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.Error, "description": "bad parameter or corrupt image"},
    404: {"model": schemas.Error, "description": "unknown image, layer or sample"},
    413: {"model": schemas.Error, "description": "request body too large"},
    422: {"model": schemas.Error, "description": "malformed request"},
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


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix=PREFIX, responses=_ERRORS)
    model = state.model

    @router.get(
        "/model",
        summary="The model: classes, input spec, layer graph, samples",
        response_model=schemas.ModelDoc,
    )
    def get_model() -> dict[str, Any]:
        with state.cache_lock:
            doc = state.cache.get("model")
            if doc is None:
                doc = state.cache["model"] = model_document(state)
        return doc

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
        summary="Upload an image (multipart field 'file', or the raw bytes)",
        openapi_extra=_UPLOAD_BODY,
        response_model=schemas.Upload,
        responses={
            413: {"model": schemas.Error, "description": "too many bytes or pixels"},
            415: {"model": schemas.Error, "description": "not an image"},
        },
    )
    async def post_image(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        multipart = content_type.lower().startswith("multipart/form-data")
        limit = state.config.max_upload_bytes + (MULTIPART_OVERHEAD if multipart else 0)
        declared = request.headers.get("content-length")
        body = await read_body(
            request.stream(), limit, int(declared) if declared and declared.isdigit() else None
        )

        def work() -> dict[str, Any]:  # parsing and decoding are CPU work: off the event loop
            data = multipart_file(body, content_type) if multipart else body
            img = decode_upload(data, state.config.decode_limits)
            return upload_document(state.store.add_upload(img))

        return await run_in_threadpool(work)

    @router.get(
        "/trace",
        summary="Every layer's output, stats and prediction for an image",
        response_class=Response,
        responses={200: {"model": schemas.Trace, "content": {"application/json": {}}}},
    )
    def get_trace(
        image: Annotated[str, Query(description="image id: sample-N or from POST /images")],
        max_channels: Annotated[int | None, Query(ge=1, description="channels per layer")] = None,
        max_size: Annotated[int | None, Query(ge=1, description="largest map side sent")] = None,
        layers: Annotated[str | None, Query(description="comma-separated layer names")] = None,
    ) -> Response:
        stored = state.store.get(image)
        options = TraceOptions(
            max_channels=max_channels or state.trace_max_channels,
            max_size=max_size or state.trace_max_size,
            layers=[n.strip() for n in layers.split(",") if n.strip()] if layers else None,
        )
        # a traced graph runs without hooks, so traces share the model; an untraceable model is
        # recorded with hooks (probe.record_all's fallback) and needs it alone
        shared = model.graph.traced is not None
        with state.model_lock.read() if shared else state.model_lock.write():
            doc = build_trace(
                model,
                stored.tensor,
                image_id=image,
                options=options,
                processed_url=stored.processed_url,
            )
        return json_response(doc)

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
        responses={503: {"model": schemas.Error, "description": "no explanation methods"}},
    )
    def post_explain(req: Annotated[ExplainRequest, Body()]) -> dict[str, Any]:
        stored = state.store.get(req.image_id)  # an unknown image is a 404
        start = time.perf_counter()
        try:
            if req.layer is not None:
                _check_layer(state, req.layer)
            # a named or numbered class is checked here; None lets the method use the prediction
            target = None if req.target is None else model.class_index(req.target)
            with state.model_lock.write():  # hooks on the shared modules: alone
                result = features.explain(
                    model, stored.tensor, req.method, target, req.layer, req.params
                )
        except features.UnavailableError as e:
            raise ApiError(503, str(e)) from None
        except ConvlensError as e:  # unknown method, layer or class: 400, as the contract says
            raise ApiError(400, str(e)) from None
        seconds = time.perf_counter() - start
        amap = result.map.detach().float()
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

    @router.get(
        "/units/{layer:path}/{channel}",
        summary="One unit: kernel, feature visualization, top dataset patches",
        response_model=schemas.Unit,
    )
    def get_unit(
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
        fv = _cached_render(state, layer, channel) if featurevis else None
        with state.scan_lock:  # data sets read files and may cache; one reader at a time
            patches = features.top_patches(
                state.scan, model, layer, channel, n=state.config.top_patches
            )
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
    with state.fv_lock:
        with state.cache_lock:  # another request may have rendered it while we waited
            if key in state.cache:
                return state.cache[key]
        image = features.render_unit(
            state.featurevis_model(), layer, channel, state.config.featurevis_steps
        )
    with state.cache_lock:
        state.cache[key] = image
        renders = [k for k in state.cache if isinstance(k, tuple) and k[0] == "featurevis"]
        for stale in renders[: max(0, len(renders) - RENDER_CACHE)]:  # oldest first
            del state.cache[stale]
    return image


def json_response(doc: dict[str, Any]) -> Response:
    """JSON without FastAPI's validation pass (a trace is large and already plain data)."""
    body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, media_type="application/json")
