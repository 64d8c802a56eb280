"""Bounded load run of ``clvtier serve`` on loopback (at most about a minute of load).

1. Single-customer requests sent at a fixed rate (open loop: a slow answer does not
   delay the next request), latency measured from the scheduled send time; with
   ``reasons=true`` (the default) and then ``reasons=false``.
2. 1,000-customer batches, with ``reasons=false`` and ``reasons=true``: customers/s, from
   ``--concurrency`` requests in flight (default two per server process).

The server runs in its own process(es) on a free loopback port (``--workers``, default one
per core); when ``--model`` is not given, a model is trained first on the generated data
with the default candidates, as a user would. The last line is machine-readable::

    serve p50_ms=... p99_ms=... errors=... batch_customers_per_s=...

(p50/p99 are single-customer requests with the default ``reasons=true``;
``batch_customers_per_s`` is the ``reasons=false`` batch figure. The other figures are
printed above it.) The load comes from aiohttp in this process, on the same cores as the
server; the CPU time it used is printed with the single-customer figures (about 1 ms per
request; an httpx client took about 4 ms, and added some 40 ms to the p50 it measured).
Under each single-customer line, the p50 / p99 of the durations the server logged for the
same requests: the time inside the server, without the wait in the socket queues and the
load generator's own delays.

Usage::

    python benchmarks/serve.py [--model RUN_DIR] [--rate 50] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

from clvtier.serve.process import free_port, start_server

#: A single-customer request slower than this counts as an error (and bounds the run).
REQUEST_TIMEOUT_S = 10.0
#: Distinct batch bodies of a batch phase, sent in turn for its whole duration.
BATCH_BODIES = 32


def make_data(workdir: Path, n_customers: int, seed: int) -> Path:
    from clvtier.generate import generate

    out = workdir / "data"
    generate(n_customers, seed=seed, out=out)
    return out


def train_model(data_dir: Path, workdir: Path) -> Path:
    from clvtier.persist import write_run
    from clvtier.train import TrainConfig, train
    from clvtier.validate import load

    run_dir = workdir / "run"
    # The default candidates, as a user trains: the service then serves the model users get.
    result = train(load(data_dir), TrainConfig(cv_folds=3, n_boot=20, backtests=0))
    write_run(result, run_dir)
    return run_dir


def customer_records(data_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """Every customer of a data set as a request customer, and the as-of date after its last transaction."""
    from clvtier.validate import load

    ds = load(data_dir)
    frames = {name: ds.con.execute(t) for name, t in ds.tables.items()}

    def iso(v: Any) -> str | None:
        return None if pd.isna(v) else pd.Timestamp(v).date().isoformat()

    def opt(v: Any) -> Any:
        return None if pd.isna(v) else v

    out: dict[str, dict[str, Any]] = {}

    def get(cid: Any) -> dict[str, Any]:
        return out.setdefault(str(cid), {"customer_id": str(cid), "transactions": [], "offers": []})

    for r in frames.get("customers", pd.DataFrame()).itertuples(index=False):
        get(r.customer_id)["profile"] = {"join_date": iso(r.join_date), "age": opt(r.age),
                                         "gender": opt(r.gender), "location": opt(r.location)}
    for r in frames["transactions"].itertuples(index=False):
        get(r.customer_id)["transactions"].append({
            "date": iso(r.transaction_date), "amount": float(r.transaction_amount), "category": opt(r.product_category),
        })
    for r in frames.get("engagements", pd.DataFrame()).itertuples(index=False):
        get(r.customer_id)["engagement"] = {"site_visits": int(r.number_of_site_visits),
                                            "emails_opened": int(r.number_of_emails_opened),
                                            "clicks": int(r.number_of_clicks)}
    for r in frames.get("marketing", pd.DataFrame()).itertuples(index=False):
        get(r.customer_id)["offers"].append({"date": iso(r.campaign_date), "response": r.response,
                                             "promotion_type": r.promotion_type})
    return list(out.values()), (ds.last_date + dt.timedelta(days=1)).isoformat()


async def post(client: aiohttp.ClientSession, url: str, body: bytes, reasons: bool, timeout: float,
               request_id: str | None = None) -> int:
    """POST ``body`` to ``/v1/score`` (with ``X-Request-ID`` when given) and read the whole answer; its status."""
    headers = {"Content-Type": "application/json"}
    if request_id:
        headers["X-Request-ID"] = request_id
    async with client.post(f"{url}/v1/score", params={"reasons": str(reasons).lower()}, data=body,
                           headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        await r.read()
        return r.status


async def fixed_rate(client: aiohttp.ClientSession, url: str, bodies: list[bytes], rate: float, seconds: float,
                     reasons: bool, phase: str) -> dict[str, Any]:
    """Send single-customer requests at ``rate``/s for ``seconds``; latency from each scheduled send time.

    Request ids are ``{phase}-{i}``, so the server's own durations of the phase can be read
    from its log (:func:`server_latency`).
    """
    n = int(rate * seconds)
    cpu = time.process_time()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter() + 0.1

    async def one(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        try:
            status = await post(client, url, bodies[i % len(bodies)], reasons, REQUEST_TIMEOUT_S, f"{phase}-{i}")
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        latencies.append((time.perf_counter() - scheduled) * 1000)

    await asyncio.gather(*(one(i) for i in range(n)))
    lat = np.array(latencies)
    return {"requests": n, "errors": sum(errors.values()), "error_kinds": errors,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "seconds": time.perf_counter() - start,
            "client_cpu_s": time.process_time() - cpu}


async def batches(client: aiohttp.ClientSession, url: str, bodies: list[bytes], size: int, reasons: bool,
                  seconds: float, concurrency: int) -> dict[str, Any]:
    """Post ``size``-customer batches (cycling through ``bodies``) from ``concurrency`` clients for ``seconds``."""
    done = errors = sent = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal done, errors, sent
        while time.perf_counter() - start < seconds:
            body = bodies[sent % len(bodies)]
            sent += 1
            try:
                if await post(client, url, body, reasons, 300) == 200:
                    done += 1
                else:
                    errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"batches": done, "errors": errors, "seconds": wall, "customers_per_s": done * size / wall}


async def load_run(url: str, customers: list[dict[str, Any]], as_of: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    singles = [json.dumps({"as_of": as_of, "customers": [c]}).encode() for c in rng.sample(customers, 500)]
    batch_bodies = []
    for _ in range(BATCH_BODIES):
        picked = [dict(c, customer_id=f"{k}-{c['customer_id']}")
                  for k, c in enumerate(rng.choices(customers, k=args.batch_size))]
        batch_bodies.append(json.dumps({"as_of": as_of, "customers": picked}).encode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as client:
        for body in singles[:20]:  # warm up
            await post(client, url, body, True, 60)
        single = await fixed_rate(client, url, singles, args.rate, args.seconds, reasons=True, phase="single-reasons")
        single_plain = await fixed_rate(client, url, singles, args.rate, args.seconds, reasons=False,
                                        phase="single-plain")
        plain = await batches(client, url, batch_bodies, args.batch_size, False, args.batch_seconds, args.concurrency)
        explained = await batches(client, url, batch_bodies, args.batch_size, True, args.batch_seconds,
                                  args.concurrency)
    return {"single": single, "single_no_reasons": single_plain, "batch_no_reasons": plain,
            "batch_reasons": explained}


def log_entries(log: Path) -> list[dict[str, Any]]:
    """The server's JSON log lines (other lines skipped)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def server_latency(entries: list[dict[str, Any]], phase: str) -> str:
    """p50 / p99 of the durations the server logged for the requests of ``phase``: time spent inside it."""
    ms = [e["duration_ms"] for e in entries
          if str(e.get("request_id", "")).startswith(f"{phase}-") and isinstance(e.get("duration_ms"), int | float)]
    if not ms:
        return "none logged"
    return f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms ({len(ms)} requests)"


def per_process(entries: list[dict[str, Any]]) -> str:
    """How many scoring requests each server process answered (from the JSON log lines)."""
    counts: Counter[int] = Counter(e["pid"] for e in entries if e.get("path") == "/v1/score" and "pid" in e)
    return ", ".join(f"{n:,}" for _, n in counts.most_common()) or "none logged"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="run directory (default: train a small model first)")
    parser.add_argument("--data", type=Path, help="data directory for the payloads (default: generated)")
    parser.add_argument("--customers", type=int, default=2000, help="customers to generate")
    parser.add_argument("--rate", type=float, default=50.0, help="single-customer requests per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of the fixed-rate phase")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-seconds", type=float, default=6.0,
                        help=f"duration of each batch phase ({BATCH_BODIES} distinct batches, sent in turn)")
    parser.add_argument("--concurrency", type=int,
                        help="batch requests in flight (default: two per server process; the kernel gives a "
                             "new connection to whichever process accepts it first, so two connections often "
                             "share one process and leave the other idle)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="server processes (default: one per core)")
    parser.add_argument("--max-concurrency", type=int,
                        help="scoring calls at a time in each server process (CLVTIER_MAX_CONCURRENCY; "
                             "default: the service's)")
    args = parser.parse_args()
    args.concurrency = args.concurrency or 2 * args.workers

    with tempfile.TemporaryDirectory(prefix="clvtier-bench-") as tmp:
        work = Path(tmp)
        data_dir = args.data or make_data(work, args.customers, args.seed)
        run_dir = args.model or train_model(data_dir, work)
        customers, as_of = customer_records(data_dir)
        port = free_port()
        log = work / "server.log"
        try:
            limits = {} if args.max_concurrency is None else {"CLVTIER_MAX_CONCURRENCY": str(args.max_concurrency)}
            proc = start_server(run_dir, port, log, ["--workers", str(args.workers)], env=limits)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        model = json.loads((run_dir / "metadata.json").read_text()).get("chosen_model")
        load_before = os.getloadavg()[0]
        try:
            result = asyncio.run(load_run(f"http://127.0.0.1:{port}", customers, as_of, args))
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        each = "" if args.max_concurrency is None else f", {args.max_concurrency} scoring call(s) at a time in each"
        print(f"model {model}; {args.workers} server worker(s){each}; load average {load_before:.1f} before the "
              f"load, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
        s, plain, explained = result["single"], result["batch_no_reasons"], result["batch_reasons"]
        entries = log_entries(log)
        for label, phase, x in (("reasons=true", "single-reasons", s),
                                ("reasons=false", "single-plain", result["single_no_reasons"])):
            print(f"single customers ({label}): {x['requests']} requests at {args.rate:g}/s over "
                  f"{x['seconds']:.1f} s: p50 {x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms, "
                  f"max {x['max_ms']:.1f} ms, errors {x['errors']} {x['error_kinds'] or ''}"
                  f"(load generator CPU {x['client_cpu_s']:.1f} s)")
            print(f"  inside the server (its log): {server_latency(entries, phase)}")
        for label, b in (("reasons=false", plain), ("reasons=true", explained)):
            print(f"batches of {args.batch_size} ({label}, {args.concurrency} in flight): {b['batches']} in "
                  f"{b['seconds']:.1f} s, {b['customers_per_s']:,.0f} customers/s, errors {b['errors']}")
        print(f"scoring requests per server process: {per_process(entries)}")
        print(f"server exit code after SIGTERM: {code}")
        errors = s["errors"] + result["single_no_reasons"]["errors"] + plain["errors"] + explained["errors"]
        print(f"serve p50_ms={s['p50_ms']:.1f} p99_ms={s['p99_ms']:.1f} errors={errors} "
              f"batch_customers_per_s={plain['customers_per_s']:.0f}")


if __name__ == "__main__":
    main()
