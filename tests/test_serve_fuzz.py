"""Property-based fuzzing of the service from its own OpenAPI schema (Schemathesis).

Every generated request, valid or not, must get a response that is not a server
error (5xx) and that conforms to the schema: documented status code, content
type, headers and body.

The schema comes from ``APP.openapi()``, which needs no model, so collecting this
module trains nothing; the model is put in place before the first request starts
the application. (Schemathesis' lazy ``from_fixture`` loader does not run under
pytest 9, and ``from_asgi`` would start the application at import.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from test_serve import small_run

from clvtier.serve import Settings, create_app

pytestmark = pytest.mark.slow

API_KEY = "fuzz-key"

# With a key configured, Schemathesis also checks that requests without it are refused.
APP = create_app(Settings(model_dir=Path("trained-by-the-fixture"), api_key=API_KEY))
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP
schema.config.update(headers={"X-API-Key": API_KEY})
# Invalid data may also be refused as too large (the documented 413) rather than unprocessable.
_negative = schema.config.checks.negative_data_rejection
_negative.expected_statuses = [*_negative.expected_statuses, "413"]


@pytest.fixture(scope="module", autouse=True)
def _model(tmp_path_factory: pytest.TempPathFactory) -> None:
    _, run_dir = small_run(tmp_path_factory.getbasetemp() / "serve-model")
    APP.state.settings = APP.state.settings.model_copy(update={"model_dir": run_dir})


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_responses_match_the_schema(case: Case) -> None:
    case.call_and_validate()
