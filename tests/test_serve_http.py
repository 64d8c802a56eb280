"""A real server: ``clvtier serve`` in a subprocess on a free loopback port, called over HTTP, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serve import records, small_run

from clvtier.serve import process
from clvtier.serve.process import free_port

pytestmark = pytest.mark.slow

API_KEY = "http-test-key"


def start_server(run_dir: Path, port: int, log: Path, api_key: str | None = None,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Start ``clvtier serve`` (with the API key) and wait until ``/healthz`` answers."""
    return process.start_server(run_dir, port, log, extra, env={"CLVTIER_API_KEY": api_key} if api_key else None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir, run_dir = small_run(tmp_path_factory.getbasetemp() / "serve-model")
    port = free_port()
    log = tmp_path_factory.mktemp("serve-http") / "server.log"
    proc = start_server(run_dir, port, log, api_key=API_KEY)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": log, "data_dir": data_dir, "run_dir": run_dir}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_score_over_http(server: dict[str, Any]) -> None:
    from clvtier.validate import load

    customers = list(records(load(server["data_dir"])).values())[:50]
    with httpx.Client(base_url=server["url"], headers={"X-API-Key": API_KEY}, timeout=60) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/v1/model").json()["chosen_model"] == "logreg"
        r = client.post("/v1/score", json={"as_of": "2024-01-01", "customers": customers},
                        headers={"X-Request-ID": "over-http-1"})
        assert r.status_code == 200
        assert r.headers["X-Request-ID"] == "over-http-1"
        assert [s["customer_id"] for s in r.json()["scores"]] == [c["customer_id"] for c in customers]
        assert client.post("/v1/score", json={"as_of": "2024-01-01", "customers": customers[:1]},
                           headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v1/score", content=b"{", headers={"Content-Type": "application/json"}).status_code == 422
        assert "server" not in r.headers  # no server banner


def test_server_runs_on_uvloop_and_httptools(server: dict[str, Any]) -> None:
    # The serve extra installs both, and uvicorn picks them: batches went about 30 % faster.
    started = [json.loads(line)["msg"] for line in server["log"].read_text().splitlines()
               if line.startswith("{") and "loaded from" in line]
    assert started and "(event loop: uvloop, HTTP parser: httptools)" in started[0]


def test_concurrent_requests_get_their_own_scores(server: dict[str, Any]) -> None:
    """Requests merged into one batch (same ids, different records) still get their own scores, in order."""
    def body(amount: float) -> dict[str, Any]:
        return {"as_of": "2024-01-01", "customers": [
            {"customer_id": "same", "transactions": [{"date": "2023-12-01", "amount": amount}]},
            {"customer_id": f"other-{amount}"},
        ]}

    amounts = [5.0, 50.0, 500.0, 5000.0, 50000.0] * 2
    with httpx.Client(base_url=server["url"], headers={"X-API-Key": API_KEY}, timeout=60) as client:
        alone = {a: client.post("/v1/score", json=body(a)).json()["scores"] for a in set(amounts)}
        results: dict[int, Any] = {}

        def call(i: int, a: float) -> None:
            results[i] = client.post("/v1/score", json=body(a)).json()["scores"]

        threads = [threading.Thread(target=call, args=(i, a)) for i, a in enumerate(amounts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, a in enumerate(amounts):
        assert_same_scores(results[i], alone[a])


def assert_same_scores(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal up to the last bits that BLAS may change with the batch size (1e-12)."""
    assert [(s["customer_id"], s["tier"], [r["feature"] for r in s["reasons"]]) for s in got] == \
        [(s["customer_id"], s["tier"], [r["feature"] for r in s["reasons"]]) for s in want]
    for g, w in zip(got, want, strict=True):
        for tier, p in w["probabilities"].items():
            assert abs(g["probabilities"][tier] - p) <= 1e-12
        for rg, rw in zip(g["reasons"], w["reasons"], strict=True):
            assert abs(rg["effect"] - rw["effect"]) <= 1e-12


def test_two_workers_give_the_same_scores_and_stop_cleanly(server: dict[str, Any], tmp_path: Path) -> None:
    """``--workers 2``: processes share the port, each with the model; the same scores; SIGTERM exits 0.

    (Before the SIGTERM test, which stops the module's server.)
    """
    from clvtier.validate import load

    customers = list(records(load(server["data_dir"])).values())[:40]
    body = {"as_of": "2024-01-01", "customers": customers}
    with httpx.Client(base_url=server["url"], headers={"X-API-Key": API_KEY}, timeout=60) as client:
        want = client.post("/v1/score", json=body).json()["scores"]
    run_dir = server["run_dir"]
    port = free_port()
    log = tmp_path / "workers.log"
    proc = start_server(run_dir, port, log, api_key=API_KEY, extra=("--workers", "2"))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY}, timeout=60) as c:
            for _ in range(6):
                assert_same_scores(c.post("/v1/score", json=body).json()["scores"], want)
            assert c.post("/v1/score", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        def loaded() -> list[dict[str, Any]]:
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip().startswith("{")]
            return [x for x in lines if x["msg"].startswith("model ") and "loaded" in x["msg"]]

        deadline = time.monotonic() + 120  # /healthz answers once the first worker is up
        while len(loaded()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(loaded()) == 2, log.read_text()[-2000:]  # once per worker process
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigterm_finishes_in_flight_request_and_exits_0(server: dict[str, Any]) -> None:
    from clvtier.validate import load

    once = list(records(load(server["data_dir"])).values())
    # Enough work to still be in flight 0.3 s after it was sent (under the 10,000-customer limit).
    customers = [{**c, "customer_id": f"{k}-{c['customer_id']}"} for k in range(12) for c in once]
    url, proc = server["url"], server["proc"]
    outcome: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            outcome["status"] = httpx.post(f"{url}/v1/score", json={"as_of": "2024-01-01", "customers": customers},
                                           headers={"X-API-Key": API_KEY}, timeout=120).status_code
        except httpx.HTTPError as exc:  # pragma: no cover - reported by the assertion below
            outcome["error"] = repr(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)  # the request is being parsed or scored (9,600 customers with reasons)
    proc.send_signal(signal.SIGTERM)
    thread.join(120)
    assert proc.wait(60) == 0
    assert outcome == {"status": 200}
    lines = [json.loads(line) for line in server["log"].read_text().splitlines() if line.strip()]
    requests = [x for x in lines if x["msg"] == "request"]
    assert requests and all({"request_id", "method", "path", "status", "duration_ms"} <= set(x) for x in requests)
    stop = next(i for i, x in enumerate(lines) if x["msg"] == "Shutting down")
    assert any(x.get("path") == "/v1/score" and x["status"] == 200 for x in lines[stop:]), \
        "the in-flight request was not finished after SIGTERM"
    assert lines[-1]["msg"].startswith("Finished server process")


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(("where", "code", "message"), [
    ("nowhere", 2, "nowhere does not exist"),
    ("not-a-run", 3, "not-a-run is not a clvtier model directory"),
])
def test_a_bad_model_fails_fast_without_a_traceback(tmp_path: Path, workers: str, where: str, code: int,
                                                     message: str) -> None:
    (tmp_path / "not-a-run").mkdir()
    cmd = [sys.executable, "-c", "from clvtier.cli import main; main()",
           "serve", "--model", str(tmp_path / where), "--port", str(free_port()), "--workers", workers]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith("CLVTIER_")})
    assert res.returncode == code
    assert "Traceback" not in res.stderr + res.stdout and message in res.stderr and "Fix:" in res.stderr
