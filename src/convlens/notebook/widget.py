"""The explainer as a notebook widget (anywidget): the web front end, unchanged, in a frame of
its own, whose API requests travel to the kernel as widget messages and are answered there by
the server's own routes, in process (:class:`~convlens.offline.bridge.InProcessApi`).

State kept in sync with the page both ways: ``image`` (the id of the image shown: ``sample-N``
in the order given, or an upload's id) and ``selected`` (``{"layer", "channel"}`` of the neuron
last clicked, or ``None``); ``height`` is the frame's height in pixels.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import anywidget
import traitlets

from convlens.offline.bridge import ApiResponse, InProcessApi, multipart, on_answer
from convlens.offline.page import build_page, js_asset

METHODS = ("GET", "POST")


def _refusal(message: str) -> ApiResponse:
    return ApiResponse(400, "application/json", json.dumps({"error": message}).encode())


class ExplainerWidget(anywidget.AnyWidget):
    """The interactive explainer for one model, computed by this kernel."""

    _esm = js_asset("widget.js")
    _page = traitlets.Unicode("").tag(sync=True)
    image = traitlets.Unicode("").tag(sync=True)
    selected = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)
    height = traitlets.Int(780).tag(sync=True)

    def __init__(self, api: InProcessApi, *, image: str = "", height: int = 780) -> None:
        super().__init__(_page=build_page(js_asset("widget-frame.js")), image=image, height=height)
        self._api = api
        self.on_msg(self._on_message)
        self._closer = weakref.finalize(self, api.close)

    @property
    def api(self) -> InProcessApi:
        """The in-process API this widget's page talks to."""
        return self._api

    def _on_message(self, _widget: Any, content: Any, buffers: list[Any] | None) -> None:
        if not isinstance(content, dict) or content.get("kind") != "request":
            return
        rid = {"view": content.get("view"), "id": content.get("id")}  # echoed to the asker
        answer = self._answer_later(content, buffers or [])
        if isinstance(answer, ApiResponse):
            self._reply(rid, answer)
        else:
            on_answer(answer, lambda a: self._reply(rid, a))

    def _answer_later(self, content: dict[str, Any], buffers: list[Any]) -> Any:
        """The request's answer, or a future of it (the model's work runs off the kernel's
        thread, so the kernel stays responsive meanwhile)."""
        method, path = content.get("method"), content.get("path")
        if method not in METHODS or not isinstance(path, str):
            return _refusal(f"bad request: method must be one of {METHODS} and path a string")
        file, body = content.get("file"), content.get("body")
        if isinstance(file, dict) and buffers:
            name = str(file.get("name") or "upload")
            data, content_type = multipart(bytes(buffers[0]), name, str(file.get("type") or ""))
            return self._api.submit(method, path, data, content_type)
        if isinstance(body, str):
            return self._api.submit(method, path, body.encode(), "application/json")
        return self._api.submit(method, path)

    def _reply(self, rid: dict[str, Any], answer: ApiResponse) -> None:
        meta = {"kind": "response", **rid, "status": answer.status}
        self.send({**meta, "contentType": answer.content_type}, [answer.body])

    def close(self) -> None:
        super().close()
        self._closer()
