"""Settings of the scoring service: which model to serve, the API key and the request limits.

Read once from arguments or ``CLVTIER_*`` environment variables, stored on the app
and injected into the routes with ``Depends(get_settings)`` (tests override it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from clvtier.errors import InputError
from clvtier.serve.schemas import MAX_CUSTOMERS, MAX_RECORDS

#: Environment variable -> settings field.
ENV_VARS = {
    "CLVTIER_MODEL": "model_dir",
    "CLVTIER_API_KEY": "api_key",
    "CLVTIER_MAX_BODY_BYTES": "max_body_bytes",
    "CLVTIER_MAX_CUSTOMERS": "max_customers",
    "CLVTIER_MAX_RECORDS": "max_records_per_customer",
    "CLVTIER_MAX_CONCURRENCY": "max_concurrency",
    "CLVTIER_MAX_QUEUED": "max_queued_customers",
}


class Settings(BaseModel):
    """Configuration of one service instance (immutable).

    Attributes
    ----------
    model_dir : Path
        Run directory written by ``clvtier train``.
    api_key : str or None
        When set, every ``/v1`` request must carry it in the ``X-API-Key`` header.
    max_body_bytes : int
        Larger request bodies are refused with 413 before they are parsed.
    max_customers : int
        Customers per scoring request (413 beyond).
    max_records_per_customer : int
        Transactions plus offers of one customer (413 beyond).
    max_concurrency : int
        Most scoring computations running at the same time; a second one starts only
        next to large ones (see :class:`clvtier.serve.batching.MicroBatcher`).
    max_queued_customers : int
        Customers allowed to wait for scoring; beyond, requests get 503 at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: Path
    api_key: str | None = Field(default=None, repr=False, min_length=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_customers: int = Field(default=MAX_CUSTOMERS, ge=1)
    max_records_per_customer: int = Field(default=MAX_RECORDS, ge=1)
    max_concurrency: int = Field(default=2, ge=1, le=64)
    max_queued_customers: int = Field(default=50_000, ge=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, object] | None = None) -> Settings:
        """Settings from ``CLVTIER_*`` environment variables; ``overrides`` win (a None value is unset)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {
            field: environ[var] for var, field in ENV_VARS.items() if environ.get(var, "") != ""
        }
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        if "model_dir" not in values:
            raise InputError("no model to serve.", "Pass --model RUN_DIR or set CLVTIER_MODEL.")
        try:
            return cls.model_validate(values)
        except ValueError as exc:
            raise InputError(f"invalid service settings: {exc}", "Check the CLVTIER_* variables.") from None

    def to_env(self) -> dict[str, str]:
        """The ``CLVTIER_*`` variables that give back these settings (for worker processes)."""
        values = self.model_dump()
        return {var: str(values[field]) for var, field in ENV_VARS.items() if values.get(field) is not None}


def get_settings(request: Request) -> Settings:
    """The app's settings (a dependency; override it in tests)."""
    return request.app.state.settings
