"""Synthetic EcomX tables from a known buy-till-you-die process, with the ground truth.

:func:`generate` writes the four EcomX tables (customers, transactions, engagements,
marketing) in exactly the shape of the real files, plus ``ground_truth`` holding every
customer's latent state. :func:`expected_horizon_spend` and
:func:`oracle_tier_probabilities` turn that state into the best possible predictions,
which bound what any model trained on the tables can reach.

Generative process
------------------
Time runs in days. Customer ``i`` (ids ``1..n``) draws, independently:

* join time ``J ~ Uniform(0, D - 7)`` days after ``start`` (``D`` = days in
  ``[start, end]``; ``D - D/2`` for windows under two weeks); ``join_date`` is its
  date;
* first purchase at ``t0 = J + L`` with ``L ~ Exponential(mean 3 days)`` truncated to
  ``[0, D - J)``, so the first purchase falls on or after ``join_date`` and by ``end``;
* purchase rate ``lambda ~ Gamma(shape 6, mean 0.0215 per day)`` (7.9 a year);
* dropout rate ``mu ~ Gamma(shape 2.5, mean 1/1300 per day)`` and lifetime
  ``tau ~ Exponential(rate mu)`` counted from ``t0`` (Pareto/NBD); the customer is
  active on ``[t0, t0 + tau)``;
* spend level ``m ~ Gamma(shape 16, mean 600)``;
* product-category preferences ``pi ~ Dirichlet(2, 2, 2)`` over
  Electronics / Clothing / Home Goods;
* engagement factor ``z ~ Normal(0, 1)``.

Repeat purchases form a Poisson process with intensity ``lambda * s(month(t))`` on
``(t0, t0 + tau)``, simulated by thinning a homogeneous process of rate
``lambda * max(s)``. The monthly multipliers ``s`` (January..December) are
0.90, 0.85, 0.95, 0.95, 1.00, 0.95, 0.95, 0.95, 0.95, 1.00, 1.25, 1.30 (day-weighted
mean 1.00). Only purchases before the end of ``end`` are written. Each purchase has an
amount ``Gamma(shape 5, mean m)`` rounded to cents (at least 0.01) and a category
drawn from ``pi``.

The other tables depend on the latents, so they carry signal:

* engagements (lifetime totals up to ``end``): with ``A`` the days from ``J`` to the
  dropout or the end of the window, whichever comes first,
  ``count = 1 + Poisson(k * (A + 1) * (lambda / 0.0215)**a * (m / 600)**b
  * exp(0.35 z - 0.06125) * G)``, ``G ~ Gamma(shape 6, mean 1)`` per channel, with
  ``(k, a, b)`` = (0.180, 0.6, 0.0) for site visits, (0.0706, 0.3, 0.2) for emails
  opened and (0.0339, 0.5, 0.4) for clicks;
* marketing: 1 to 4 offers (uniform), each dated uniformly between ``join_date`` and
  ``last_purchase_date``, promotion type uniform over Discount / Buy One Get One /
  Free Shipping, response ``Yes`` with probability ``sigmoid(eta + e_promo)`` where
  ``eta = 0.8 (log lambda - E log lambda) + 0.5 (log m - E log m)
  - 0.5 (log mu - E log mu) + 0.3 z`` and ``e_promo`` = +0.1 / 0 / -0.1;
* customers: age uniform on 18..69 (10.09 % missing), gender Male / Female
  (5.33 % missing) and a location from a pool of 18,000 syllable-built city names;
  these carry no signal, as in the real data.

Transactions are written sorted by customer, then date, and numbered in that order;
offers are numbered in the order drawn.

Ground truth
------------
``ground_truth`` has one row per customer: ``customer_id``, ``join_date``,
``first_purchase_date``, ``first_purchase_time`` (``t0`` in days since 1970-01-01,
fractional), ``purchase_rate`` (``lambda``), ``dropout_rate`` (``mu``),
``lifetime_days`` (``tau``), ``dropout_date`` (date of ``t0 + tau``, capped at
9999-12-31), ``alive_at_end`` (``t0 + tau`` after the end of ``end``),
``spend_mean`` (``m``), ``spend_shape`` (5), ``p_electronics``, ``p_clothing``,
``p_home_goods`` (``pi``), ``engagement_factor`` (``z``), ``response_logit``
(``eta``), and the observed ``n_transactions`` and ``total_spend``.

Randomness comes from ``numpy.random.SeedSequence(seed)``: the city pool uses the
child key ``(0,)`` and customers ``1000 b + 1 .. 1000 (b + 1)`` use ``(1, b)``, so the
data depend only on ``seed``, ``n_customers``, ``start`` and ``end``, not on
``chunk_size``.
"""

from __future__ import annotations

import math
import operator
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from scipy.special import digamma, expit

from clvtier.errors import InputError

__all__ = [
    "GeneratedData",
    "expected_horizon_spend",
    "generate",
    "oracle_tier_probabilities",
    "read_ground_truth",
]

_TABLES: tuple[str, ...] = ("customers", "transactions", "engagements", "marketing", "ground_truth")
_FILE_STEMS = {
    "customers": "customers_final",
    "transactions": "transactions_final",
    "engagements": "engagements_final",
    "marketing": "marketing_final",
    "ground_truth": "ground_truth",
}

#: Purchase-rate multipliers by calendar month, January first.
SEASONALITY: tuple[float, ...] = (
    0.90, 0.85, 0.95, 0.95, 1.00, 0.95, 0.95, 0.95, 0.95, 1.00, 1.25, 1.30,
)  # fmt: skip

CATEGORIES: tuple[str, ...] = ("Electronics", "Clothing", "Home Goods")
PROMOTIONS: tuple[str, ...] = ("Discount", "Buy One Get One", "Free Shipping")
GENDERS: tuple[str, ...] = ("Male", "Female")

_BLOCK = 1000  # customers per random stream; chunks are whole blocks
_JOIN_MARGIN_DAYS = 7.0
_FIRST_LAG_MEAN = 3.0
_RATE_SHAPE, _RATE_MEAN = 6.0, 0.0215
_DROPOUT_SHAPE, _DROPOUT_MEAN = 2.5, 1.0 / 1300.0
_SPEND_SHAPE, _SPEND_MEAN = 16.0, 600.0
_AMOUNT_SHAPE = 5.0
_CATEGORY_CONCENTRATION = 2.0
_AGE_RANGE = (18, 69)
_AGE_MISSING, _GENDER_MISSING = 0.1009, 0.0533
_N_CITIES = 18_000
_ENGAGEMENT_SD = 0.35
_CHANNEL_SHAPE = 6.0
# (base rate per active day, exponent of lambda, exponent of m)
_ENGAGEMENT = {
    "number_of_site_visits": (0.180, 0.6, 0.0),
    "number_of_emails_opened": (0.0706, 0.3, 0.2),
    "number_of_clicks": (0.0339, 0.5, 0.4),
}
_OFFERS = (1, 4)
_RESPONSE_COEF = {"rate": 0.8, "spend": 0.5, "dropout": -0.5, "engagement": 0.3}
_PROMO_EFFECT = (0.1, 0.0, -0.1)
_MAX_EPOCH_DAY = 2_932_896  # 9999-12-31; later dropout dates are written as this
_SIMS_PER_BATCH = 2_000_000

_PREFIXES = ("North", "South", "East", "West", "Port", "Lake", "New")
_SYLLABLES = (
    "al", "an", "ar", "bel", "ben", "bri", "car", "cha", "dal", "den", "dor", "el", "en",
    "fal", "fen", "gar", "gle", "ham", "har", "hol", "is", "ka", "kel", "ken", "la", "lan",
    "ler", "li", "lo", "lyn", "ma", "mar", "mel", "mer", "mil", "mon", "na", "nel", "nor",
    "o", "ra", "ran", "ren", "ri", "ro", "ros", "sa", "sel", "son", "ta", "tan", "ter",
    "tho", "ton", "va", "ver", "wil", "win", "wyn", "zel",
)  # fmt: skip
_SUFFIXES = (
    "burgh", "bury", "chester", "fort", "furt", "haven", "land", "mouth", "port", "shire",
    "side", "stad", "ton", "town", "view", "ville", "berg", "borough", "field", "ford",
)  # fmt: skip


@dataclass(frozen=True)
class GeneratedData:
    """What :func:`generate` wrote.

    Attributes
    ----------
    out : Path
        The output directory.
    files : dict of str to Path
        File of each table: ``customers``, ``transactions``, ``engagements``,
        ``marketing`` and ``ground_truth``.
    n_customers : int
        Rows in the customers table.
    n_transactions : int
        Rows in the transactions table.
    """

    out: Path
    files: dict[str, Path]
    n_customers: int
    n_transactions: int


@dataclass(frozen=True)
class _Calendar:
    start_epoch: int  # days from 1970-01-01 to ``start``
    n_days: int  # days in [start, end]
    day_season: np.ndarray  # seasonality multiplier of every day in the window


# --------------------------------------------------------------------------- validation


def _as_int(name: str, value: Any, minimum: int, fix: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be an integer >= {minimum:,}, got {value!r}.", fix) from None
    if number < minimum:
        raise InputError(f"{name} must be an integer >= {minimum:,}, got {number!r}.", fix)
    return number


def _to_date(name: str, value: Any) -> date:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        stamp = pd.NaT
    if pd.isna(stamp):
        raise InputError(
            f"{name} must be a date such as '2024-05-31', got {value!r}.",
            f"pass {name} as an ISO date string 'YYYY-MM-DD' or a datetime.date.",
        )
    return stamp.date()


def _epoch_day(d: date) -> int:
    return d.toordinal() - date(1970, 1, 1).toordinal()


def _check_horizon(horizon_days: Any) -> int:
    return _as_int("horizon_days", horizon_days, 1, "pass the horizon as a whole number of days, e.g. 180.")


# --------------------------------------------------------------------------- calendar


def _month_segments(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Split epoch days ``[lo, hi)`` at month starts: boundaries and multipliers."""
    first = np.datetime64(lo, "D").astype("datetime64[M]")
    last = np.datetime64(hi - 1, "D").astype("datetime64[M]")
    months = np.arange(first, last + 1)
    starts = months.astype("datetime64[D]").astype(np.int64)
    bounds = np.concatenate([[lo], starts[1:], [hi]]).astype(np.float64)
    season = np.asarray(SEASONALITY)[months.astype(np.int64) % 12]
    return bounds, season


def _calendar(start: date, end: date) -> _Calendar:
    start_epoch = _epoch_day(start)
    n_days = _epoch_day(end) - start_epoch + 1
    days = np.arange(start_epoch, start_epoch + n_days).astype("datetime64[D]")
    month = days.astype("datetime64[M]").astype(np.int64) % 12
    return _Calendar(start_epoch, n_days, np.asarray(SEASONALITY)[month])


def _city_pool(seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n = 2 * _N_CITIES
    syllables = np.asarray(_SYLLABLES, dtype=object)
    n_syll = rng.integers(2, 4, n)
    parts = syllables[rng.integers(0, len(_SYLLABLES), (n, 3))]
    root = parts[:, 0] + parts[:, 1] + np.where(n_syll == 3, parts[:, 2], "")
    suffix = np.where(rng.random(n) < 0.7, np.asarray(_SUFFIXES, dtype=object)[rng.integers(0, len(_SUFFIXES), n)], "")
    prefix = np.where(
        rng.random(n) < 0.5,
        np.asarray([p + " " for p in _PREFIXES], dtype=object)[rng.integers(0, len(_PREFIXES), n)],
        "",
    )
    names = prefix + np.array([r.capitalize() for r in root], dtype=object) + suffix
    return pd.unique(names)[:_N_CITIES]


# --------------------------------------------------------------------------- simulation


def _simulate_block(
    block: int, n: int, seed: int, cal: _Calendar, cities: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Simulate customers ``_BLOCK * block + 1 .. + n``; ids of rows are added later."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, block)))
    n_days = cal.n_days
    ids = np.arange(_BLOCK * block + 1, _BLOCK * block + n + 1, dtype=np.int64)

    join = rng.random(n) * (n_days - min(_JOIN_MARGIN_DAYS, n_days / 2))
    room = n_days - join
    lag = -_FIRST_LAG_MEAN * np.log1p(rng.random(n) * np.expm1(-room / _FIRST_LAG_MEAN))
    t0 = np.minimum(join + lag, np.nextafter(float(n_days), 0.0))
    lam = rng.gamma(_RATE_SHAPE, _RATE_MEAN / _RATE_SHAPE, n)
    mu = rng.gamma(_DROPOUT_SHAPE, _DROPOUT_MEAN / _DROPOUT_SHAPE, n)
    tau = rng.standard_exponential(n) / mu
    spend = rng.gamma(_SPEND_SHAPE, _SPEND_MEAN / _SPEND_SHAPE, n)
    prefs = rng.gamma(_CATEGORY_CONCENTRATION, 1.0, (n, 3))
    prefs /= prefs.sum(axis=1, keepdims=True)
    z = rng.standard_normal(n)

    # Repeat purchases by thinning a rate-lambda*max(s) process on the observed lifetime.
    s_max = max(SEASONALITY)
    active_end = np.minimum(t0 + tau, n_days)
    exposure = active_end - t0
    n_cand = rng.poisson(lam * s_max * exposure)
    cand = np.repeat(np.arange(n), n_cand)
    times = t0[cand] + rng.random(cand.size) * exposure[cand]
    cand_day = np.minimum(times.astype(np.int64), n_days - 1)
    keep = rng.random(cand.size) * s_max < cal.day_season[cand_day]
    cust = np.concatenate([np.arange(n), cand[keep]])
    times = np.concatenate([t0, times[keep]])
    order = np.lexsort((times, cust))
    cust, times = cust[order], times[order]
    tx_day = np.minimum(times.astype(np.int64), n_days - 1)
    amount = rng.gamma(_AMOUNT_SHAPE, spend[cust] / _AMOUNT_SHAPE)
    amount = np.maximum(np.round(amount, 2), 0.01)
    cum = np.cumsum(prefs, axis=1)[cust]
    u = rng.random(cust.size)
    category = (u >= cum[:, 0]).astype(np.int64) + (u >= cum[:, 1])

    n_tx = np.bincount(cust, minlength=n)
    last_day = tx_day[np.cumsum(n_tx) - 1]
    join_day = join.astype(np.int64)
    total = np.round(np.bincount(cust, weights=amount, minlength=n), 2)

    age = rng.integers(_AGE_RANGE[0], _AGE_RANGE[1] + 1, n).astype(np.float64)
    age[rng.random(n) < _AGE_MISSING] = np.nan
    gender = np.asarray(GENDERS, dtype=object)[rng.integers(0, 2, n)]
    gender[rng.random(n) < _GENDER_MISSING] = None
    location = cities[rng.integers(0, cities.size, n)]

    active_days = active_end - join
    level = np.exp(_ENGAGEMENT_SD * z - _ENGAGEMENT_SD**2 / 2)
    engagements = {"customer_id": ids}
    for column, (base, a, b) in _ENGAGEMENT.items():
        mean = base * (active_days + 1) * (lam / _RATE_MEAN) ** a * (spend / _SPEND_MEAN) ** b
        noise = rng.gamma(_CHANNEL_SHAPE, 1.0 / _CHANNEL_SHAPE, n)
        engagements[column] = 1 + rng.poisson(mean * level * noise)

    coef = _RESPONSE_COEF
    eta = (
        coef["rate"] * (np.log(lam) - digamma(_RATE_SHAPE) - math.log(_RATE_MEAN / _RATE_SHAPE))
        + coef["spend"] * (np.log(spend) - digamma(_SPEND_SHAPE) - math.log(_SPEND_MEAN / _SPEND_SHAPE))
        + coef["dropout"] * (np.log(mu) - digamma(_DROPOUT_SHAPE) - math.log(_DROPOUT_MEAN / _DROPOUT_SHAPE))
        + coef["engagement"] * z
    )
    n_offers = rng.integers(_OFFERS[0], _OFFERS[1] + 1, n)
    offer_cust = np.repeat(np.arange(n), n_offers)
    span = last_day - join_day + 1
    offer_day = join_day[offer_cust] + (rng.random(offer_cust.size) * span[offer_cust]).astype(np.int64)
    promo = rng.integers(0, 3, offer_cust.size)
    p_yes = expit(eta[offer_cust] + np.asarray(_PROMO_EFFECT)[promo])
    response = np.where(rng.random(offer_cust.size) < p_yes, "Yes", "No").astype(object)

    first_epoch = cal.start_epoch + t0
    dropout_day = np.minimum(np.floor(first_epoch + tau), _MAX_EPOCH_DAY).astype(np.int64)
    return {
        "customers": {
            "customer_id": ids,
            "join_date": _dates(cal.start_epoch + join_day),
            "last_purchase_date": _dates(cal.start_epoch + last_day),
            "age": age,
            "gender": gender,
            "location": location,
        },
        "transactions": {
            "customer_id": ids[cust],
            "transaction_date": _dates(cal.start_epoch + tx_day),
            "transaction_amount": amount,
            "product_category": np.asarray(CATEGORIES, dtype=object)[category],
        },
        "engagements": engagements,
        "marketing": {
            "customer_id": ids[offer_cust],
            "response": response,
            "promotion_type": np.asarray(PROMOTIONS, dtype=object)[promo],
            "campaign_date": _dates(cal.start_epoch + offer_day),
        },
        "ground_truth": {
            "customer_id": ids,
            "join_date": _dates(cal.start_epoch + join_day),
            "first_purchase_date": _dates(cal.start_epoch + t0.astype(np.int64)),
            "first_purchase_time": first_epoch,
            "purchase_rate": lam,
            "dropout_rate": mu,
            "lifetime_days": tau,
            "dropout_date": _dates(dropout_day),
            "alive_at_end": t0 + tau >= n_days,
            "spend_mean": spend,
            "spend_shape": np.full(n, _AMOUNT_SHAPE),
            "p_electronics": prefs[:, 0],
            "p_clothing": prefs[:, 1],
            "p_home_goods": prefs[:, 2],
            "engagement_factor": z,
            "response_logit": eta,
            "n_transactions": n_tx.astype(np.int64),
            "total_spend": total,
        },
    }


def _dates(epoch_days: np.ndarray) -> np.ndarray:
    return np.asarray(epoch_days, dtype=np.int64).astype("datetime64[D]")


# --------------------------------------------------------------------------- writers


class _CsvSink:
    """Append chunks to CSV files with pyarrow, formatted like the real EcomX files."""

    _OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="none")

    def __init__(self, files: dict[str, Path]) -> None:
        self._files = files
        self._handles: dict[str, IO[bytes]] = {}

    def write(self, table: str, columns: dict[str, np.ndarray]) -> None:
        if table not in self._handles:
            handle = self._handles[table] = open(self._files[table], "wb")  # noqa: SIM115
            handle.write((",".join(columns) + "\n").encode())
        data = pa.table({name: _csv_array(name, values) for name, values in columns.items()})
        pacsv.write_csv(data, self._handles[table], self._OPTIONS)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()


def _csv_array(name: str, values: np.ndarray) -> pa.Array:
    """One column as pyarrow will write it: amounts with 2 decimals, ages as ``34.0``."""
    if name == "transaction_amount":
        cents = np.rint(values * 100).astype(np.int64)
        text = np.char.add(np.char.add((cents // 100).astype(str), "."), np.char.zfill((cents % 100).astype(str), 2))
        return pa.array(text, type=pa.string())
    if name == "age":
        missing = np.isnan(values)
        text = np.char.add(np.where(missing, 0, values).astype(np.int64).astype(str), ".0")
        return pa.array(text, type=pa.string(), mask=missing)
    if values.dtype.kind == "b":
        return pa.array(np.where(values, "True", "False"), type=pa.string())
    return pa.array(values, type=_arrow_type(values))


class _ParquetSink:
    def __init__(self, files: dict[str, Path]) -> None:
        self._files = files
        self._writers: dict[str, pq.ParquetWriter] = {}

    def write(self, table: str, columns: dict[str, np.ndarray]) -> None:
        # from_pandas: a missing age (NaN) is written as a Parquet null, as it is an empty CSV cell.
        arrays = {name: pa.array(values, type=_arrow_type(values), from_pandas=True)
                  for name, values in columns.items()}
        data = pa.table(arrays)
        if table not in self._writers:
            self._writers[table] = pq.ParquetWriter(self._files[table], data.schema)
        self._writers[table].write_table(data)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def _arrow_type(values: np.ndarray) -> pa.DataType:
    kind = values.dtype.kind
    if kind == "M":
        return pa.date32()
    if kind == "O":
        return pa.string()
    if kind == "b":
        return pa.bool_()
    if kind in "iu":
        return pa.int64()
    return pa.float64()


def _concat(blocks: list[dict[str, dict[str, np.ndarray]]], table: str) -> dict[str, np.ndarray]:
    names = blocks[0][table].keys()
    return {name: np.concatenate([b[table][name] for b in blocks]) for name in names}


# --------------------------------------------------------------------------- public API


def generate(
    n_customers: int,
    seed: int,
    out: str | Path,
    fmt: Literal["csv", "parquet"] = "csv",
    start: str = "2020-01-01",
    end: str = "2024-05-31",
    progress: Callable[[int], None] | None = None,
    chunk_size: int = 50_000,
) -> GeneratedData:
    """Write synthetic EcomX tables and their ground truth.

    The process is described in the module docstring and in ``docs/generator.md``.
    Customers are simulated and written in chunks, so memory stays bounded for any
    ``n_customers``.

    Parameters
    ----------
    n_customers : int
        Number of customers, ``>= 1``; ids are ``1..n_customers``.
    seed : int
        Non-negative seed. The same seed and arguments give byte-identical files.
    out : str or Path
        Output directory, created if needed. Existing files are overwritten.
    fmt : {"csv", "parquet"}, default "csv"
        File format. Parquet stores ids and counts as int64, dates as date32 and
        amounts as float64, under the same column names.
    start, end : str, default "2020-01-01", "2024-05-31"
        The observation window (inclusive). Every written date lies in it.
    progress : callable, optional
        Called after each chunk with the number of customers just written.
    chunk_size : int, default 50_000
        Customers per chunk, rounded up to whole blocks of 1,000. It changes memory
        use and Parquet row groups, never the data.

    Returns
    -------
    GeneratedData
        The directory, the file of each table and the row counts.

    Raises
    ------
    InputError
        If ``n_customers < 1``, ``seed < 0``, ``chunk_size < 1``, ``fmt`` is unknown,
        or ``end`` is not after ``start``.

    Examples
    --------
    >>> import tempfile
    >>> data = generate(500, seed=1, out=tempfile.mkdtemp())
    >>> sorted(data.files)
    ['customers', 'engagements', 'ground_truth', 'marketing', 'transactions']
    >>> data.n_customers
    500
    """
    n_customers = _as_int("n_customers", n_customers, 1, "pass a positive number of customers, e.g. 10_000.")
    seed = _as_int("seed", seed, 0, "pass a non-negative integer seed, e.g. 0.")
    chunk_size = _as_int("chunk_size", chunk_size, 1, "pass a positive number of customers per chunk.")
    if fmt not in ("csv", "parquet"):
        raise InputError(f"fmt must be 'csv' or 'parquet', got {fmt!r}.", "pass fmt='csv' or fmt='parquet'.")
    first, last = _to_date("start", start), _to_date("end", end)
    if last <= first:
        raise InputError(
            f"end ({last.isoformat()}) must be after start ({first.isoformat()}).",
            "pass an end date later than the start date, e.g. start='2020-01-01', end='2024-05-31'.",
        )

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a directory.", "Pass a directory to write the tables to (out=...).")
    out.mkdir(parents=True, exist_ok=True)
    files = {t: out / f"{_FILE_STEMS[t]}.{fmt}" for t in _TABLES}
    # Written to a temporary directory inside ``out`` and moved into place at the end, so
    # a failed or interrupted run leaves no partial tables (nor replaces earlier ones).
    with tempfile.TemporaryDirectory(prefix=".clvtier-generate-", suffix=".tmp", dir=out) as work:
        partial = {t: Path(work) / f.name for t, f in files.items()}
        n_tx = _write_tables(partial, n_customers, seed, _calendar(first, last), _city_pool(seed),
                             chunk_size, fmt, progress)
        for t in _TABLES:
            os.replace(partial[t], files[t])
    return GeneratedData(out=out, files=files, n_customers=n_customers, n_transactions=n_tx)


def _write_tables(files: dict[str, Path], n_customers: int, seed: int, cal: Any, cities: Any,
                  chunk_size: int, fmt: str, progress: Callable[[int], None] | None) -> int:
    """Simulate the customers in chunks and write every table to ``files``; return the transactions."""
    blocks_per_chunk = max(1, math.ceil(chunk_size / _BLOCK))
    n_blocks = math.ceil(n_customers / _BLOCK)
    sink: _CsvSink | _ParquetSink = _CsvSink(files) if fmt == "csv" else _ParquetSink(files)
    n_tx = n_offers = 0
    try:
        for chunk_start in range(0, n_blocks, blocks_per_chunk):
            blocks = [
                _simulate_block(b, min(_BLOCK, n_customers - _BLOCK * b), seed, cal, cities)
                for b in range(chunk_start, min(chunk_start + blocks_per_chunk, n_blocks))
            ]
            tables = {t: _concat(blocks, t) for t in _TABLES}
            tx, offers = tables["transactions"], tables["marketing"]
            size_tx, size_offers = tx["customer_id"].size, offers["customer_id"].size
            tables["transactions"] = {
                "transaction_id": np.arange(n_tx + 1, n_tx + size_tx + 1, dtype=np.int64),
                **tx,
            }
            tables["marketing"] = {
                "campaign_id": np.arange(n_offers + 1, n_offers + size_offers + 1, dtype=np.int64),
                **offers,
            }
            n_tx, n_offers = n_tx + size_tx, n_offers + size_offers
            for t in _TABLES:
                sink.write(t, tables[t])
            if progress is not None:
                progress(tables["customers"]["customer_id"].size)
    finally:
        sink.close()
    return n_tx


_GT_DATES = ("join_date", "first_purchase_date", "dropout_date")


def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """Read a ground-truth file written by :func:`generate`.

    Parameters
    ----------
    path : str or Path
        ``ground_truth.csv`` or ``ground_truth.parquet``.

    Returns
    -------
    pandas.DataFrame
        One row per customer; ``customer_id`` as str, date columns as
        ``datetime64[us]`` (``dropout_date`` may be far in the future), the rest
        numeric or bool. The same frame whichever format was read.

    Raises
    ------
    InputError
        If the file does not exist.

    Examples
    --------
    >>> import tempfile
    >>> data = generate(50, seed=1, out=tempfile.mkdtemp())
    >>> truth = read_ground_truth(data.files["ground_truth"])
    >>> truth.shape[0], truth["customer_id"].iloc[0]
    (50, '1')
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"ground truth file {str(path)!r} does not exist.",
            "pass the ground_truth.csv or ground_truth.parquet written by generate().",
        )
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        frame = pd.DataFrame({name: table.column(name).to_numpy() for name in table.column_names})
    else:
        frame = pd.read_csv(path, dtype={name: str for name in ("customer_id", *_GT_DATES)})
    if missing := [c for c in ("customer_id", *_GT_DATES) if c not in frame.columns]:
        raise InputError(f"{path} is not a ground-truth file: it lacks the columns {missing}.",
                         "pass the ground_truth.csv or ground_truth.parquet written by generate().")
    for name in frame.columns:
        if name == "customer_id":
            frame[name] = frame[name].astype(str)
        elif name in _GT_DATES:
            days = np.asarray(frame[name].to_numpy(), dtype="datetime64[D]")
            frame[name] = days.astype("datetime64[us]")
        elif name == "alive_at_end":
            frame[name] = frame[name].astype(bool)
        elif name == "n_transactions":
            frame[name] = frame[name].astype(np.int64)
        else:
            frame[name] = frame[name].astype(np.float64)
    return frame


def _latent_state(ground_truth: pd.DataFrame, cutoff: Any, horizon_days: Any) -> dict[str, Any]:
    """Arrays describing every customer at the cutoff, shared by both predictors."""
    c = _epoch_day(_to_date("cutoff", cutoff))
    h = _check_horizon(horizon_days)
    missing = [
        col
        for col in (
            "customer_id",
            "first_purchase_time",
            "lifetime_days",
            "purchase_rate",
            "dropout_rate",
            "spend_mean",
            "spend_shape",
        )
        if col not in ground_truth.columns
    ]
    if missing:
        raise InputError(
            f"the ground truth lacks column(s) {', '.join(missing)}.",
            "pass the frame returned by read_ground_truth().",
        )

    def col(name: str) -> np.ndarray:
        return ground_truth[name].to_numpy(dtype=np.float64)

    t0 = col("first_purchase_time")
    horizon_end = float(c + h)
    born_in = (t0 >= c) & (t0 < horizon_end)
    alive = born_in | ((t0 < c) & (t0 + col("lifetime_days") > c))
    return {
        "index": pd.Index(ground_truth["customer_id"].astype(str), name="customer_id"),
        "cutoff": c,
        "end": horizon_end,
        "start_at": np.where(born_in, t0, float(c)),
        "born_in": born_in,
        "alive": alive,
        "lam": col("purchase_rate"),
        "mu": col("dropout_rate"),
        "m": col("spend_mean"),
        "shape": col("spend_shape"),
    }


def expected_horizon_spend(ground_truth: pd.DataFrame, cutoff: str | date, horizon_days: int) -> pd.Series:
    """Exact expected spend of each customer in ``[cutoff, cutoff + horizon_days)``.

    The expectation is over the process given the latent state at the cutoff: rates
    ``purchase_rate``, ``dropout_rate``, ``spend_mean`` and whether the customer is
    alive then (``first_purchase_time + lifetime_days > cutoff``); the remaining
    lifetime of a live customer is ``Exponential(dropout_rate)``. A customer dropped
    out before the cutoff expects 0. A customer whose first purchase falls inside the
    window expects that purchase plus repeats from it; one whose first purchase is
    later expects 0. With monthly seasonality ``s`` the repeat part is, in closed form,
    ``spend_mean * purchase_rate * sum_k s_k * integral over month k of exp(-mu (t - a))``
    where ``a`` is the cutoff (or the first purchase).

    Parameters
    ----------
    ground_truth : pandas.DataFrame
        As returned by :func:`read_ground_truth`.
    cutoff : str or datetime.date
        First day of the horizon.
    horizon_days : int
        Length of the horizon in days, ``>= 1``.

    Returns
    -------
    pandas.Series
        Expected spend (before rounding amounts to cents), indexed by ``customer_id``
        as str.

    Raises
    ------
    InputError
        If the cutoff is not a date, ``horizon_days < 1`` or columns are missing.

    Examples
    --------
    >>> import tempfile
    >>> data = generate(200, seed=1, out=tempfile.mkdtemp())
    >>> truth = read_ground_truth(data.files["ground_truth"])
    >>> spend = expected_horizon_spend(truth, "2023-06-01", 180)
    >>> bool((spend >= 0).all()), spend.index[0]
    (True, '1')
    """
    state = _latent_state(ground_truth, cutoff, horizon_days)
    bounds, season = _month_segments(state["cutoff"], int(state["end"]))
    a = state["start_at"][:, None]
    mu = state["mu"][:, None]
    lo = np.maximum(bounds[None, :-1], a)
    width = np.clip(bounds[None, 1:] - lo, 0.0, None)
    # exp(-mu (lo - a)) * (1 - exp(-mu width)) / mu, written to stay exact for tiny mu.
    integral = np.exp(-mu * (lo - a)) * -np.expm1(-mu * width) / mu
    count = state["lam"] * (integral * season).sum(axis=1) + state["born_in"]
    spend = np.where(state["alive"], state["m"] * count, 0.0)
    return pd.Series(spend, index=state["index"], name="expected_spend")


def _simulate_horizon_spend(state: dict[str, Any], rows: slice, n_sims: int, rng: np.random.Generator) -> np.ndarray:
    """Spend of ``n_sims`` futures of customers ``rows`` from their state at the cutoff."""
    bounds, season = _month_segments(state["cutoff"], int(state["end"]))
    cum = np.concatenate([[0.0], np.cumsum(season * np.diff(bounds))])
    alive = state["alive"][rows]
    a = state["start_at"][rows][:, None]
    remaining = rng.standard_exponential((alive.size, n_sims)) / state["mu"][rows][:, None]
    stop = np.minimum(a + remaining, state["end"])
    exposure = np.interp(stop, bounds, cum) - np.interp(a, bounds, cum)
    count = rng.poisson(state["lam"][rows][:, None] * exposure) + state["born_in"][rows][:, None]
    count = np.where(alive[:, None], count, 0)
    shape = state["shape"][rows][:, None]
    # The sum of k Gamma(shape, scale) amounts is Gamma(k * shape, scale).
    total = rng.gamma(np.maximum(count, 1) * shape, state["m"][rows][:, None] / shape)
    return np.where(count > 0, total, 0.0)


def oracle_tier_probabilities(
    ground_truth: pd.DataFrame,
    cutoff: str | date,
    horizon_days: int,
    low_cut: float,
    high_cut: float,
    n_sims: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Probability of each tier for each customer, by simulation from the latent state.

    Each customer's future in ``[cutoff, cutoff + horizon_days)`` is simulated
    ``n_sims`` times from the same state :func:`expected_horizon_spend` conditions
    on, and the simulated spends are binned: Low if ``spend < low_cut``, High if
    ``spend >= high_cut``, Medium otherwise.

    Parameters
    ----------
    ground_truth : pandas.DataFrame
        As returned by :func:`read_ground_truth`.
    cutoff : str or datetime.date
        First day of the horizon.
    horizon_days : int
        Length of the horizon in days, ``>= 1``.
    low_cut, high_cut : float
        Tier thresholds, ``low_cut <= high_cut``.
    n_sims : int, default 200
        Simulated futures per customer.
    seed : int, default 0
        Non-negative seed; the result is deterministic for a seed.

    Returns
    -------
    pandas.DataFrame
        Columns ``p_low``, ``p_medium``, ``p_high`` (each row sums to 1), indexed by
        ``customer_id`` as str.

    Raises
    ------
    InputError
        On a bad cutoff, horizon, cuts, ``n_sims`` or ``seed``.

    Examples
    --------
    >>> import tempfile
    >>> data = generate(200, seed=1, out=tempfile.mkdtemp())
    >>> truth = read_ground_truth(data.files["ground_truth"])
    >>> probs = oracle_tier_probabilities(truth, "2023-06-01", 180, 500.0, 3000.0)
    >>> list(probs.columns), bool(probs.sum(axis=1).round(9).eq(1).all())
    (['p_low', 'p_medium', 'p_high'], True)
    """
    n_sims = _as_int("n_sims", n_sims, 1, "pass a positive number of simulations, e.g. 200.")
    seed = _as_int("seed", seed, 0, "pass a non-negative integer seed, e.g. 0.")
    try:
        low, high = float(low_cut), float(high_cut)
    except (TypeError, ValueError):
        raise InputError(
            f"low_cut and high_cut must be numbers, got {low_cut!r} and {high_cut!r}.",
            "pass the tier thresholds as amounts, e.g. low_cut=500, high_cut=3000.",
        ) from None
    if not low <= high:
        raise InputError(
            f"low_cut ({low}) must be <= high_cut ({high}).",
            "pass the Low/Medium threshold first and the Medium/High threshold second.",
        )
    state = _latent_state(ground_truth, cutoff, horizon_days)
    n = state["alive"].size
    probs = np.zeros((n, 3))
    batch = max(1, _SIMS_PER_BATCH // n_sims)
    for i, lo in enumerate(range(0, n, batch)):
        rows = slice(lo, min(lo + batch, n))
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        spend = _simulate_horizon_spend(state, rows, n_sims, rng)
        p_low = (spend < low).mean(axis=1)
        p_high = (spend >= high).mean(axis=1)
        p_medium = ((spend >= low) & (spend < high)).mean(axis=1)
        probs[rows] = np.column_stack([p_low, p_medium, p_high])
    return pd.DataFrame(probs, index=state["index"], columns=["p_low", "p_medium", "p_high"])
