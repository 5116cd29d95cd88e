"""Schemathesis over the server's own OpenAPI document: every operation, generated requests.

Short by default (a few examples per operation, well under 30 s, in CI); ``CONVLENS_FUZZ=long``
(``make fuzz``) runs 300 per operation (``CONVLENS_FUZZ=N``: N). Checks: no 5xx, only documented status codes and
content types, answers matching their documented schemas, and requests the schema forbids
refused with a 4xx. Every failure found so far is a regression test in ``test_web_hostile.py``.
"""

from __future__ import annotations

import os
import warnings

import pytest
from hypothesis import HealthCheck, settings

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
_config = ServerConfig(explain_seconds=5.0, featurevis_steps=2, trace_workers=1)
_model = build("tiny-vgg:in_channels=3,input_size=32", seed=0).eval()
# the ASGI transport addresses the app as "testserver"; the Host check stays on otherwise
_app = create_app(_model, config=_config, access=Access(LOOPBACK_NAMES | {"testserver"}))

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", _app)

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
def test_api_answers_every_generated_request_with_a_documented_4xx_or_200(case: object) -> None:
    case.call_and_validate(checks=CHECKS)  # type: ignore[attr-defined]
