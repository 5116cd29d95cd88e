"""Schemathesis over the server's own OpenAPI document: every operation, generated requests.

Short by default (a few examples per operation, well under 30 s, in CI); ``CONVLENS_FUZZ=long``
(``make fuzz``) runs 300 per operation (``CONVLENS_FUZZ=N``: N). Checks: no 5xx, only
documented status codes and content types, answers matching their documented schemas, and
requests the schema forbids refused with a 4xx. Every failure found so far is a regression
test in ``test_web_hostile.py``.
"""

from __future__ import annotations

import atexit
import collections
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from convlens.model import build
from convlens.web import ServerConfig, create_app
from convlens.web.guard import LOOPBACK_NAMES, Access

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

MODE = os.environ.get("CONVLENS_FUZZ", "").lower()  # "long", or a number of examples
LONG = MODE == "long" or MODE.isdigit()
EXAMPLES = int(MODE) if MODE.isdigit() else 300 if LONG else 6  # per operation

# a small model; explanations get a short time budget so no generated request can run long
_config = ServerConfig(explain_seconds=5.0 if LONG else 0.5, featurevis_steps=2, trace_workers=1)
_model = build("tiny-vgg:in_channels=3,input_size=16", seed=0).eval()
_images = Path(tempfile.mkdtemp(prefix="convlens-fuzz-"))
atexit.register(shutil.rmtree, _images, ignore_errors=True)
Image.new("RGB", (40, 30), (200, 40, 40)).save(_images / "a.png")
Image.new("L", (20, 50), 90).save(_images / "b.png")
# the ASGI transport addresses the app as "testserver"; the Host check stays on otherwise
_app = create_app(
    _model,
    images_dir=_images,
    config=_config,
    access=Access(LOOPBACK_NAMES | {"testserver"}),
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", _app)


def _method_for(params: Any) -> str:
    """The method whose bounded parameters the generated ``params`` name (the schema's
    ``anyOf`` branch they came from), so that they are checked by the method they belong to."""
    from convlens.methods import METHODS

    names = set(params) if isinstance(params, dict) else set()
    best = max(METHODS.items(), key=lambda item: len(names & set(item[1].bounds)))
    return best[0] if names & set(best[1].bounds) else "saliency"


def _known_image(value: Any) -> Any:
    """Generated image ids become a real sample, so the requests get past the image lookup to
    the methods' parameters (unknown ids are tested in test_web_api.py)."""
    if isinstance(value, str) and len(value) <= 200:  # longer: a negative case, kept
        return f"sample-{len(value) % 2}"
    return value


SEEN: collections.Counter[tuple[str, str, int]] = collections.Counter()


@schema.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    SEEN[(case.method, case.path, response.status_code)] += 1


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not LONG,  # CI runs the same examples every time
)
def test_api_answers_every_generated_request_with_a_documented_4xx_or_200(case: Any) -> None:
    body = case.body
    if isinstance(body, dict) and "image_id" in body:
        body["image_id"] = _known_image(body["image_id"])
        if body.get("method") == "":  # what the coverage phase sends: use a real method
            body["method"] = _method_for(body.get("params"))
            if body.get("layer") == "":
                body["layer"] = None
    if isinstance(case.query, dict) and "image" in case.query:
        case.query["image"] = _known_image(case.query["image"])
    path = case.path_parameters
    if isinstance(path, dict):  # real layers and samples half of the time
        if isinstance(path.get("sample_id"), str) and len(path["sample_id"]) % 2 == 0:
            path["sample_id"] = _known_image(path["sample_id"])
        if isinstance(path.get("layer"), str) and len(path["layer"]) % 2 == 0:
            names = _model.graph.names()
            path["layer"] = names[len(path["layer"]) % len(names)]
    case.call_and_validate(checks=CHECKS)


def test_the_fuzzer_reached_the_models_work() -> None:
    """Runs after the fuzzing above (file order): some generated explanations and traces were
    answered 200, so the fuzzing got past the image ids to the parameters."""
    if not SEEN:
        pytest.skip("the fuzzing test did not run in this session")
    print("fuzz:", sum(SEEN.values()), "requests;", dict(sorted(SEEN.items())))
    assert any(p.endswith("/explain") and s == 200 for _, p, s in SEEN)
    assert any(p.endswith("/trace") and s == 200 for _, p, s in SEEN)
