"""The application factory and the server: model loaded once in ``lifespan``, state on ``app.state``."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from clvtier.errors import ClvtierError, ModelError
from clvtier.predict import Model, load
from clvtier.serve import handlers
from clvtier.serve.batching import MicroBatcher
from clvtier.serve.logs import LOGGER, configure_logging
from clvtier.serve.middleware import BodyLimitMiddleware, RequestContextMiddleware
from clvtier.serve.routes import router, v1
from clvtier.serve.schemas import ScoreRequest
from clvtier.serve.scoring import Scorer
from clvtier.serve.settings import Settings

#: Seconds in-flight requests get to finish after SIGTERM / Ctrl-C.
GRACEFUL_SHUTDOWN_S = 10

DESCRIPTION = """\
Customer-lifetime-value tiers (Low / Medium / High) for customers given their raw records.

Scores equal those of `clvtier predict` for the same records and date. When the
service runs with an API key, send it in the `X-API-Key` header. Every response
carries an `X-Request-ID` header (yours when you send a safe one); quote it when
reporting a problem.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model and compile the features once; release them at shutdown."""
    settings: Settings = app.state.settings
    log = logging.getLogger(LOGGER)
    try:
        model = app.state.preloaded or load(settings.model_dir)
        scorer = Scorer(model)
    except ClvtierError as exc:
        app.state.startup_error = exc
        log.error("cannot start: %s", exc)
        raise
    batcher = MicroBatcher(scorer, workers=settings.max_concurrency, max_queued=settings.max_queued_customers)
    await batcher.start()
    if app.state.freeze_gc:
        tune_gc()
    app.state.model = model
    app.state.batcher = batcher
    loop, parser = server_stack()
    log.info("model %s loaded from %s (event loop: %s, HTTP parser: %s)", model.metadata.get("chosen_model"),
             settings.model_dir, loop, parser)
    try:
        yield
    finally:
        await batcher.stop()
        scorer.close()


def server_stack() -> tuple[str, str]:
    """The event loop and the HTTP parser this process serves with.

    uvicorn picks uvloop and httptools when they are installed (``clvtier[serve]``
    installs both): with them, 1,000-customer batches went about 30 % faster than with
    asyncio's loop and h11 (see ``benchmarks/RESULTS.md``). The parser is ``unknown``
    when the application runs without uvicorn (a test client).
    """
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    parsers = {"uvicorn.protocols.http.httptools_impl": "httptools", "uvicorn.protocols.http.h11_impl": "h11"}
    parser = next((name for module, name in parsers.items() if module in sys.modules), "unknown")
    return loop, parser


#: Allocations between two collections of the youngest generation (Python's default is 700).
GC_THRESHOLD = 20_000


def tune_gc() -> None:
    """Keep the garbage collector off the loaded model: a server process's settings, once loaded.

    A scoring request allocates tens of thousands of small objects (the parsed records),
    and every full collection walked the whole heap of the model, pandas and
    scikit-learn as well: it took more than half of a 1,000-customer request. What is
    alive after start-up is frozen (never scanned again), and the youngest generation is
    collected less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def create_app(settings: Settings, freeze_gc: bool = False, model: Model | None = None) -> FastAPI:
    """The scoring service as a FastAPI application.

    Parameters
    ----------
    settings : Settings
        The model is loaded from ``settings.model_dir`` when the application starts
        (``lifespan``), not here, unless ``model`` is given.
    freeze_gc : bool
        Call :func:`tune_gc` once the model is loaded: for a process that only serves
        (``clvtier serve``), not for one that embeds the application.
    model : Model, optional
        Already loaded (and so checked): served as it is.

    Examples
    --------
    >>> from fastapi.testclient import TestClient  # doctest: +SKIP
    >>> with TestClient(create_app(Settings(model_dir="runs/1"))) as client:  # doctest: +SKIP
    ...     client.get("/healthz").json()
    {'status': 'ok', 'model': 'logreg'}
    """
    from clvtier import __version__

    app = FastAPI(title="clvtier scoring service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.startup_error = None
    app.state.freeze_gc = freeze_gc
    app.state.preloaded = model
    app.include_router(router)
    app.include_router(v1)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    handlers.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)  # added last: runs first
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request body models, which the score route parses itself."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        body = ScoreRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["ScoreRequest"] = body
        schema["components"]["schemas"] = dict(sorted(components.items()))
        app.openapi_schema = schema
    return app.openapi_schema


def app_from_env() -> FastAPI:
    """The application with settings from the ``CLVTIER_*`` variables (each worker process calls it)."""
    configure_logging()
    return create_app(Settings.from_env(), freeze_gc=True)


def run(model_dir: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
        api_key: str | None = None, workers: int = 1, **limits: int) -> None:
    """Serve a model over HTTP until SIGTERM or Ctrl-C, then finish in-flight requests and return.

    Parameters
    ----------
    model_dir : path, optional
        Run directory written by ``clvtier train`` (default: ``CLVTIER_MODEL``).
    host, port : str, int
        Where to listen (loopback by default).
    api_key : str, optional
        Require it in ``X-API-Key`` (default: ``CLVTIER_API_KEY``).
    workers : int
        Server processes sharing the port (uvicorn's supervisor); each loads the model
        once. Scoring is CPU-bound and holds the GIL in parts, so up to one per core
        raises throughput.
    **limits
        Any other :class:`Settings` field, such as ``max_customers``.

    Raises
    ------
    ModelError
        When the model cannot be loaded or cannot score the example request.
    """
    import uvicorn

    settings = Settings.from_env(overrides={"model_dir": model_dir, "api_key": api_key, **limits})
    configure_logging()
    if workers > 1:
        _run_workers(settings, host, port, workers)
        return
    app = create_app(settings, freeze_gc=True, model=_checked_model(settings.model_dir))
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False)
    server = uvicorn.Server(config)
    # uvicorn finishes in-flight requests on SIGTERM, then re-raises the signal for the
    # previous handler: make that one a no-op, so a graceful stop exits with status 0.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stopped) if in_main else None
    try:
        server.run()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if app.state.startup_error is not None:
        raise app.state.startup_error
    if not server.started:
        raise ModelError("the service could not start (the log above says why).",
                         "Check the model directory and that the port is free.")


def _checked_model(model_dir: str | Path) -> Model:
    """Load the model and score the example request with it, before any server starts.

    A bad model then stops the service with its reason (:class:`ModelError`); in the
    server's start-up it would give a traceback in the log.
    """
    model = load(model_dir)
    Scorer(model).close()
    return model


def _run_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    """Several worker processes: the model is checked here first, so a bad model fails fast and clearly."""
    import os

    import uvicorn

    _checked_model(settings.model_dir)
    os.environ.update(settings.to_env())  # the workers read their settings from the environment
    try:
        uvicorn.run("clvtier.serve.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_config=None, access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                    server_header=False)
    except SystemExit as exc:  # uvicorn exits when it cannot bind the port
        if exc.code:
            raise ModelError(f"the service could not listen on {host}:{port}.",
                             "Check that the port is free and the address is this machine's.") from None


def _stopped(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
