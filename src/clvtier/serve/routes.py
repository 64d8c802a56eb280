"""The HTTP routes: ``/healthz``, ``/v1/model`` and ``/v1/score``."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any

import anyio
import pyarrow.compute as pc
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader

from clvtier.predict import Model
from clvtier.serve.batching import MicroBatcher, Overloaded
from clvtier.serve.handlers import ApiError
from clvtier.serve.schemas import (
    ErrorBody,
    Health,
    ModelInfo,
    ScoreBatch,
    ScoreResponse,
    parse_score_request,
)
from clvtier.serve.settings import Settings, get_settings
from clvtier.target import TIERS

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Required when the service was started with an API key.")


def get_model(request: Request) -> Model:
    return request.app.state.model


def get_batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """401 unless the service has no key, or ``X-API-Key`` matches it (compared in constant time)."""
    if settings.api_key is None:
        return
    if key is None or not hmac.compare_digest(key.encode("utf-8"), settings.api_key.encode("utf-8")):
        raise ApiError(401, "missing or wrong API key.", "Send the service's key in the X-API-Key header.",
                       headers={"WWW-Authenticate": "APIKey"})


def only_query(*names: str) -> Callable[[Request], None]:
    """A dependency: 422 for query parameters other than ``names`` (a misspelt ``reasons`` must not pass)."""
    allowed = frozenset(names)

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise RequestValidationError([
                {"loc": ("query", name), "msg": "unknown query parameter", "type": "extra_forbidden"}
                for name in unknown
            ])

    return check


#: Bodies up to this size are parsed on the event loop; larger ones in a worker thread.
_SMALL_BODY = 64 * 1024


async def score_request(request: Request) -> ScoreBatch:
    """The request body, parsed and validated straight from JSON bytes (see :func:`parse_score_request`).

    A body declared as anything but JSON is refused (415) before it is read; no
    Content-Type at all is taken as JSON.
    """
    declared = request.headers.get("content-type")
    if declared is not None and declared.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, f"the body is declared as '{declared[:60]}', not JSON.",
                       "Send the body as JSON with the header Content-Type: application/json.")
    raw = await request.body()
    if len(raw) <= _SMALL_BODY:
        return parse_score_request(raw)
    return await anyio.to_thread.run_sync(parse_score_request, raw)


#: The body is parsed by :func:`score_request`, not by FastAPI: document it by hand.
SCORE_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}}}}

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong X-API-Key."},
    500: {"model": ErrorBody, "description": "Internal error (details in the log, under the request id)."},
}

_UNKNOWN_QUERY: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "Unknown query parameter."},
}

router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)


@router.get("/healthz", tags=["service"], dependencies=[Depends(only_query())], responses=_UNKNOWN_QUERY)
async def healthz(model: Annotated[Model, Depends(get_model)]) -> Health:
    """Liveness and readiness: the model is loaded."""
    return Health(status="ok", model=str(model.metadata.get("chosen_model", "")))


@v1.get("/model", tags=["model"], dependencies=[Depends(only_query())], responses=_UNKNOWN_QUERY)
async def model_info(model: Annotated[Model, Depends(get_model)]) -> ModelInfo:
    """The served model: mode, target, cutoff, horizon, tier thresholds, headline metrics, features, versions."""
    meta = model.metadata
    return ModelInfo(
        chosen_model=str(meta.get("chosen_model", "")),
        mode=str(meta.get("mode", "")),
        target=str(meta.get("target", "")),
        cutoff=str(meta.get("cutoff", "")),
        horizon_days=int(meta.get("horizon_days", 0)),
        created=meta.get("created"),
        thresholds=dict(meta.get("thresholds", {})),
        headline=dict(meta.get("headline", {})),
        feature_names=list(model.feature_names),
        feature_spec={k: list(v) for k, v in meta.get("feature_spec", {}).items()},
        not_time_bounded=list(meta.get("not_time_bounded", [])),
        versions={k: str(v) for k, v in meta.get("versions", {}).items()},
        tiers=list(TIERS),
    )


@v1.post(
    "/score",
    tags=["model"],
    response_model=ScoreResponse,
    openapi_extra=SCORE_REQUEST_BODY,
    dependencies=[Depends(only_query("reasons"))],
    responses={
        413: {"model": ErrorBody, "description": "Body, batch or a customer's records over the limits."},
        415: {"model": ErrorBody, "description": "The body is declared as something other than JSON."},
        422: {"model": ErrorBody, "description": "Invalid payload: every problem with its field path."},
        503: {"model": ErrorBody, "description": "Too many customers waiting to be scored; retry (Retry-After)."},
    },
)
async def score(
    body: Annotated[ScoreBatch, Depends(score_request)],
    model: Annotated[Model, Depends(get_model)],
    settings: Annotated[Settings, Depends(get_settings)],
    batcher: Annotated[MicroBatcher, Depends(get_batcher)],
    reasons: Annotated[bool, Query(description="Compute the top three reasons per customer "
                                               "(one extra prediction per feature group).")] = True,
) -> dict[str, Any]:
    """Tier, P(Low/Medium/High) and top reasons for each customer, in request order.

    Features are built from the records with the same definition as ``clvtier predict``
    (events strictly before ``as_of``), so the scores equal the batch scores. Every
    customer in the request is scored, including one without any event before ``as_of``.
    """
    if len(body) > settings.max_customers:
        raise ApiError(413, f"{len(body):,} customers in one request; the limit is {settings.max_customers:,}.",
                       f"Split the customers into requests of at most {settings.max_customers:,}.")
    records = pc.add(*(pc.list_value_length(body.customers.field(f)).fill_null(0) for f in ("transactions", "offers")))
    over = pc.indices_nonzero(pc.greater(records, settings.max_records_per_customer))
    if len(over):
        i = over[0].as_py()
        raise ApiError(413, f"customers[{i}] has {records[i].as_py():,} transactions and offers; "
                            f"the limit is {settings.max_records_per_customer:,} per customer.",
                       "Send only the customer's recent records, or score such customers in batch "
                       "with 'clvtier predict'.")
    try:
        scores = await batcher.score(body.customers, body.as_of, reasons)
    except Overloaded as exc:
        raise ApiError(503, f"the service is overloaded: {exc}",
                       "Retry after the Retry-After seconds, or send fewer customers at a time.",
                       headers={"Retry-After": "1"}) from None
    # A plain dict: FastAPI validates it against ScoreResponse and serialises it in pydantic-core.
    return {"model": str(model.metadata.get("chosen_model", "")), "as_of": body.as_of, "scores": scores}
