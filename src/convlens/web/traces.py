"""The server's traces: bodies and recorded forward passes, each computed once and kept.

A trace body is keyed by its image and caps; the image's recorded forward pass (every layer,
full size) is kept apart, so the exact channels a detail view asks for after the overview cost
no forward pass. Both are single-flight: a request for work already running waits for it.

At start-up :meth:`Traces.warm` computes the trace the page asks for first (the first sample
at the overview's caps), so the first page load finds it ready, or in flight.
"""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from convlens.model.core import Model
from convlens.trace import Recording, TraceOptions, capped_numbers, record, trace_document
from convlens.web.cache import LRUCache, SingleFlight
from convlens.web.errors import ApiError

if TYPE_CHECKING:
    from convlens.web.state import ServerState

log = logging.getLogger("convlens.web")

Encoding = Literal["float32", "uint8"]
# Kept per server: the last images' recorded forward passes (every layer, full size: ~120 MB
# for VGG-16 at 224×224, so few) and the last trace bodies.
RECORDINGS_KEPT = 2
TRACES_KEPT = 8
TRACE_KEPT_BYTES = 16 * 2**20  # a larger body (a whole big layer uncapped) is not kept
TraceKey = tuple[str, int | None, int | None, tuple[str, ...] | None, str, int | None]

# The page's overview trace, as static/js/config.js asks for it (OVERVIEW_MAX_SIZE,
# QUANTIZE_ABOVE; tests/test_web_bigtrace.py checks the two files agree).
OVERVIEW_MAX_SIZE = 64
QUANTIZE_ABOVE = 1_000_000
# A quantized overview trace sends each map's first page only (PAGE_SIZE, its most active
# channels); the page asks for a layer's other channels when it shows them.
PAGE_SIZE = 10


def activation_numbers(model: Model) -> int:
    """Every layer's output size in numbers, summed (main.js's ``activationNumbers``)."""
    return sum(math.prod(lay.output_shape) for lay in model.graph)


def overview_encoding(model: Model, asked: str | None = None) -> Encoding:
    """The encoding the page asks for its overview: ``asked`` (the page URL's ``?trace=``)
    when it names one, else uint8 above :data:`QUANTIZE_ABOVE` numbers (main.js's rule)."""
    if asked == "uint8":
        return "uint8"
    if asked == "float32":
        return "float32"
    return "uint8" if activation_numbers(model) > QUANTIZE_ABOVE else "float32"


def overview_trace_query(model: Model, image: str, asked: str | None = None) -> str:
    """The query of the page's first ``GET /trace``, byte for byte as api.js's ``getTrace``
    builds it (a preload is used only by a request for the very same URL)."""
    params = [("image", image), ("max_size", str(OVERVIEW_MAX_SIZE))]
    encoding = overview_encoding(model, asked)
    if encoding != "float32":
        params.append(("encoding", encoding))
    top = overview_top_channels(encoding)
    if top is not None:
        params.append(("top_channels", str(top)))
    return urlencode(params)


def overview_top_channels(encoding: Encoding) -> int | None:
    """How many channels of each map the page's overview trace asks for: the first page when
    it is quantized (a big model's), all otherwise (main.js's ``overviewTrace``)."""
    return PAGE_SIZE if encoding == "uint8" else None


def first_image(state: ServerState) -> str | None:
    """The image the page shows first (the first sample), or ``None`` without samples."""
    return next(iter(state.store.samples), None)


def trace_key(image: str, options: TraceOptions) -> TraceKey:
    layers = None if options.layers is None else tuple(options.layers)
    return (
        image,
        options.max_channels,
        options.max_size,
        layers,
        options.encoding,
        options.top_channels,
    )


def json_bytes(doc: dict[str, Any]) -> bytes:
    """JSON without FastAPI's validation pass (a trace is large and already plain data)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


class Traces:
    """Trace bodies and recordings of one server, computed on its trace pool."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        # keyed by image id and the model's identity: an id names one image for the server's
        # life (samples by index, uploads by a random token), and the served model never changes
        self._recordings: LRUCache[tuple[str, int], Recording] = LRUCache(RECORDINGS_KEPT)
        self._bodies: LRUCache[TraceKey, bytes] = LRUCache(TRACES_KEPT)
        self._recording_flights: SingleFlight[tuple[str, int], Recording] = SingleFlight()
        self._body_flights: SingleFlight[TraceKey, bytes] = SingleFlight()

    def recorded(self, image: str, x: Any) -> Recording:
        """The image's forward pass, kept, in flight, or run now (under the trace lock)."""
        key = (image, id(self.state.model))
        kept = self._recordings.get(key)
        if kept is not None:
            return kept

        def run() -> Recording:
            with self.state.trace_lock():
                done = record(self.state.model, x)
            self._recordings.put(key, done)
            return done

        return self._recording_flights.do(key, run)

    def body(self, image: str, options: TraceOptions) -> Future[bytes]:
        """The trace's JSON body: kept, in flight, or queued now on the trace pool (``503``
        when its queue is full; a failure, e.g. an evicted upload's 404, is not kept)."""
        self.state.store.check(image)  # an evicted upload is 404 even while its trace is kept
        key = trace_key(image, options)
        kept = self._bodies.get(key)
        if kept is not None:
            done: Future[bytes] = Future()
            done.set_result(kept)
            return done
        pool = self.state.trace_pool

        def start() -> Future[bytes]:
            return pool.submit(lambda: self._compute(image, options))

        return self._body_flights.run(key, start)

    def _compute(self, image: str, options: TraceOptions) -> bytes:
        key = trace_key(image, options)
        stored = self.state.store.get(image)  # first: an evicted upload is 404, not cached
        kept = self._bodies.get(key)  # kept by a flight that landed since body() looked
        if kept is not None:
            return kept
        doc = trace_document(
            self.state.model, stored.tensor, image_id=image, options=options,
            processed_url=stored.processed_url, recorded=self.recorded(image, stored.tensor),
        )  # fmt: skip
        body = json_bytes(doc)
        if len(body) <= TRACE_KEPT_BYTES:
            self._bodies.put(key, body)
        return body

    def warm(self) -> Future[bytes] | None:
        """Start computing the page's first trace (the first sample at the overview's caps) in
        the background; ``None`` when there is nothing to compute or the caps are refused."""
        state = self.state
        image = first_image(state)
        if image is None:
            return None
        encoding = overview_encoding(state.model)
        options = TraceOptions(
            max_channels=state.trace_max_channels,
            max_size=OVERVIEW_MAX_SIZE,
            encoding=encoding,
            top_channels=overview_top_channels(encoding),
        )
        if capped_numbers(state.model, options) > state.config.trace_max_numbers:
            return None  # the page's request is refused too (422); nothing to prepare
        try:
            flight = self.body(image, options)
        except ApiError:  # the trace pool is full: requests came first
            return None
        flight.add_done_callback(_report_warm_failure)
        return flight


def _report_warm_failure(flight: Future[bytes]) -> None:
    if not flight.cancelled() and flight.exception() is not None:
        log.warning("precomputing the first trace failed: %s", flight.exception())
