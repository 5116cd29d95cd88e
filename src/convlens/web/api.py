"""The JSON API under ``/api/v1`` (contract: ``docs/web-api.md``).

Routes are thin: they look up the image, check every parameter against its bound, and hand
the model work to a small pool of its own (:class:`convlens.web.state.WorkPool`: uploads'
decoding, traces, explanations), so a request waiting for the model holds no request thread
and ``GET /model`` answers while an explanation runs. Explanations run on a private copy of
the model under a time budget; traces share the served model under the read lock.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from convlens.errors import ConvlensError, NotFoundError
from convlens.io.figure import png_bytes
from convlens.methods import ParamError
from convlens.trace import (
    TraceOptions,
    UnusableMapError,
    capped_numbers,
    channel_document,
    check_request,
    class_index,
    explanation_document,
    image_document,
    unit_document,
    weights_document,
)
from convlens.trace.document import check_unit
from convlens.web import schemas
from convlens.web.errors import ApiError
from convlens.web.state import ServerState, TimeBudgetExceededError, time_budget
from convlens.web.traces import Encoding
from convlens.web.uploads import MULTIPART_OVERHEAD, decode_upload, multipart_file, read_body

PREFIX = "/api/v1"
ImageId = Annotated[
    str, Query(max_length=200, description="image id: sample-N or from POST /images")
]
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


def _errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses given as ``e404="what it means"``."""
    return {int(k[1:]): {"model": schemas.Error, "description": v} for k, v in described.items()}


_ERRORS = _errors(
    e400="bad parameter or corrupt image",
    e401="this server needs its access token",
    e403="Host or Origin is not this server",
    e404="unknown image, layer or sample",
    e413="request body too large",
    e415="wrong Content-Type for this route",
    e422="malformed request or value out of range",
    e503="busy: too many requests of this kind",
)


def _statused(e: ConvlensError) -> ApiError:
    """A refused explanation request: a value out of its range (or a map that overflowed) is
    422, anything else the registry refuses (unknown method, layer, class) 400."""
    return ApiError(422 if isinstance(e, ParamError | UnusableMapError) else 400, str(e))


def check_explain(state: ServerState, req: ExplainRequest) -> int | None:
    """Check an explanation request before any work is queued; its class index (or None)."""
    try:
        check_request(req.method, req.params)
        check_chunk(state, req.params)
        if req.layer is not None:
            state.model.graph[req.layer]  # unknown: the NotFoundError listing the layers
        # a named or numbered class is checked here; None lets the method use the prediction
        return None if req.target is None else class_index(state.model, req.target)
    except ConvlensError as e:
        raise _statused(e) from None


def unit_path(request: Request, layer: str, channel: int) -> tuple[str, int]:
    """A layer and one of its channels from the path (404 unknown layer, 400 out of range;
    FastAPI answers 422 for a channel that is not an integer)."""
    check_unit(request.app.state.convlens.model, layer, channel)
    return layer, channel


UnitPath = Annotated[tuple[str, int], Depends(unit_path)]


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
    numbers = capped_numbers(state.model, options)
    limit = state.config.trace_max_numbers
    if numbers > limit:
        raise ApiError(
            422,
            f"a trace with max_channels={options.max_channels}, max_size={options.max_size} "
            f"would send {numbers:,} numbers; this server sends at most {limit:,} (lower "
            "max_channels or max_size, or ask for fewer layers)",
        )


def trace_options(
    state: ServerState,
    max_channels: int | None,
    max_size: int | None,
    layers: str | None,
    encoding: Encoding = "float32",
    top_channels: int | None = None,
) -> TraceOptions:
    """The request's caps (the model's defaults where not given), checked against the budget."""
    options = TraceOptions(
        max_channels=max_channels or state.trace_max_channels,
        max_size=max_size or state.trace_max_size,
        layers=[n.strip() for n in layers.split(",") if n.strip()] if layers else None,
        encoding=encoding,
        top_channels=top_channels,
    )
    check_trace_caps(state, options)
    return options


def _time_budget_error(method: str, budget: float) -> ApiError:
    return ApiError(
        422,
        f"the {method} explanation ran past this server's time budget of {budget:g} s; ask "
        "for less work (fewer samples or steps, a larger window or stride)",
    )


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix=PREFIX, responses=_ERRORS)
    model = state.model
    recorded = state.traces.recorded

    @router.get(
        "/model",
        summary="The model: classes, input spec, layer graph, samples",
        response_class=Response,
        responses={200: {"model": schemas.ModelDoc, "content": {"application/json": {}}}},
    )
    async def get_model() -> Response:
        # encoded once and answered from the event loop: no thread, no validation pass, so it
        # answers at once however busy the model's workers are
        return Response(state.model_body(), media_type="application/json")

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
        responses=_errors(e413="too many bytes or pixels", e415="not an image, or not multipart"),
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
                stored = state.store.add_upload(decode_upload(data, state.config.decode_limits))
                return image_document(
                    stored.image_id,
                    stored.width,
                    stored.height,
                    stored.original,
                    stored.processed_url,
                )

            return await state.decode_pool.run(work)

    @router.get(
        "/trace",
        summary="Every layer's output, stats and prediction for an image",
        response_class=Response,
        responses={200: {"model": schemas.Trace, "content": {"application/json": {}}}},
    )
    async def get_trace(
        image: ImageId,
        max_channels: Annotated[
            int | None, Query(ge=1, le=MAX_CAP, description="channels per layer")
        ] = None,
        max_size: Annotated[
            int | None, Query(ge=1, le=MAX_CAP, description="largest map side sent")
        ] = None,
        layers: Annotated[
            str | None, Query(max_length=100_000, description="comma-separated layer names")
        ] = None,
        encoding: Annotated[
            Encoding, Query(description="uint8: maps quantized per channel, 4× smaller")
        ] = "float32",
        top_channels: Annotated[
            int | None,
            Query(ge=1, le=MAX_CAP, description="of each map's channels, only the most active"),
        ] = None,
    ) -> Response:
        options = trace_options(state, max_channels, max_size, layers, encoding, top_channels)
        # kept, in flight (the start-up's first trace, another page's request) or queued now;
        # shielded: a client going away does not cancel work that others may be waiting for
        flight = state.traces.body(image, options)
        body = await asyncio.shield(asyncio.wrap_future(flight))
        return Response(body, media_type="application/json")

    @router.get(
        "/activations/{layer:path}/{channel}",
        summary="One channel's exact float32 map for an image (neither capped nor quantized)",
        response_model=schemas.Channel,
    )
    async def get_channel(unit: UnitPath, image: ImageId) -> dict[str, Any]:
        layer, channel = unit

        def work() -> dict[str, Any]:
            stored = state.store.get(image)
            return channel_document(
                model, stored.tensor, layer, channel, image_id=image,
                recorded=recorded(image, stored.tensor),
            )  # fmt: skip

        return await state.trace_pool.run(work)

    @router.get(
        "/weights/{layer:path}",
        summary="Weight and bias of a conv or linear layer",
        response_model=schemas.Weights,
    )
    def get_weights(layer: str) -> dict[str, Any]:
        return weights_document(model, layer)

    @router.post(
        "/explain",
        summary="An explanation map for an image, a method and a target class",
        response_model=schemas.Explanation,
        responses=_errors(
            e422="a parameter out of its range, or the explanation ran past the server's time "
            "budget"
        ),
    )
    async def post_explain(req: Annotated[ExplainRequest, Body()]) -> dict[str, Any]:
        budget = state.config.explain_seconds
        stored = await run_in_threadpool(state.store.get, req.image_id)  # unknown: 404
        target = check_explain(state, req)

        def work() -> dict[str, Any]:  # on the explanation pool, on the private model copy
            with state.work_lock, time_budget(budget):
                return explanation_document(
                    state.work_model(), stored.tensor, req.method, target, req.layer,
                    req.params, processed=stored.processed,
                )  # fmt: skip

        try:
            return await state.explain_pool.run(work)
        except TimeBudgetExceededError:
            raise _time_budget_error(req.method, budget) from None
        except ConvlensError as e:
            raise _statused(e) from None

    @router.get(
        "/units/{layer:path}/{channel}",
        summary="One unit: kernel, feature visualization, top dataset patches",
        response_model=schemas.Unit,
    )
    async def get_unit(
        unit: UnitPath,
        featurevis: Annotated[
            bool, Query(description="render the feature visualization (slow the first time)")
        ] = True,
    ) -> dict[str, Any]:
        layer, channel = unit
        image = (
            await state.explain_pool.run(lambda: state.render(layer, channel))
            if featurevis
            else None
        )
        patches = await run_in_threadpool(state.top_patches, layer, channel)
        return unit_document(model, layer, channel, featurevis_image=image, patches=patches)

    @router.api_route("/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    def unknown_route(rest: str, request: Request) -> None:
        raise NotFoundError(
            f"no API route {request.method} /api/v1/{rest}; see /api/v1/openapi.json"
        )

    return router
