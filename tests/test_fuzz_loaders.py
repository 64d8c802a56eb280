"""Fuzzing the loaders: whatever the input, clvtier validates it or raises its own error.

Any byte content, any CSV-like text, any pandas frame written to Parquet and any mapping
file either loads (``clvtier.validate.load`` returns) or raises
:class:`clvtier.errors.ClvtierError`, which the CLI turns into exit code 2. Anything else
(a DuckDB, pandas or Python exception) is a bug: the user would see "Internal error".
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clvtier.errors import ClvtierError, DataError
from clvtier.validate import Dataset, load

AS_OF = dt.date(2024, 6, 30)
TX = (
    "transaction_id,customer_id,transaction_date,transaction_amount,product_category\n"
    "1,1,2023-01-10,100.0,Electronics\n"
    "2,1,2023-03-01,50.5,Clothing\n"
    "3,2,2023-07-04,200.0,Clothing\n"
)
TX_COLUMNS = TX.splitlines()[0].split(",")
CUSTOMER_COLUMNS = ["customer_id", "join_date", "last_purchase_date", "age", "gender", "location"]

# CLVTIER_FUZZ_EXAMPLES=500 explores further, with fresh random examples each run.
_EXAMPLES = os.environ.get("CLVTIER_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXAMPLES or 25),
    deadline=None,
    derandomize=not _EXAMPLES,  # by default the same examples on every run: CI stays fast and stable
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def data_dir(files: dict[str, bytes]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, content in files.items():
            (root / name).write_bytes(content)
        yield root


def load_or_clvtier_error(source: Path) -> Dataset | ClvtierError:
    """Load ``source``; a ClvtierError is an accepted outcome, any other exception fails the test."""
    try:
        return load(source, as_of=AS_OF)
    except ClvtierError as exc:
        assert str(exc), "an error must say something"
        return exc


# -- strategies --------------------------------------------------------------------------------
CELLS = st.one_of(
    st.sampled_from([
        "", " ", "1", "00001", "-1", "0", "1e309", "NaN", "inf", "-Infinity", "1,234.50", "$12", "12e3",
        "2023-01-10", "2023-02-30", "10/01/2023", "44936", "2023-01-10T23:30:00-05:00", "9999-12-31",
        "0001-01-01", "=HYPERLINK(\"x\")", '"', '""', '"a,b"', "a\nb", "\t", ";", "|", "\\", "NULL", "N/A",
        "ü", "😀", "\x00", "\ufeff", "x" * 5000,
    ]),
    st.text(max_size=12),
)
HEADERS = st.lists(
    st.one_of(st.sampled_from(TX_COLUMNS + ["Customer ID", " TRANSACTION-DATE ", "", "amount"]), st.text(max_size=8)),
    min_size=1, max_size=7,
)


@st.composite
def csv_like(draw: st.DrawFn) -> bytes:
    """Text that looks like a CSV: a header (often the contract's) and rows of awkward cells."""
    header = draw(st.one_of(st.just(TX_COLUMNS), HEADERS))
    delim = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    n_fields = len(header)
    rows = draw(st.lists(
        st.lists(CELLS, min_size=max(n_fields - 1, 0), max_size=n_fields + 1), max_size=6,
    ))
    text = "\n".join(delim.join(r) for r in [header, *rows]) + draw(st.sampled_from(["\n", "", "\r\n"]))
    data = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"])),
                       errors="replace")
    return gzip.compress(data, mtime=0) if draw(st.booleans()) and len(data) % 5 == 0 else data


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid transactions file with a few bytes flipped, inserted or cut."""
    data = bytearray(TX.encode())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "cut"]))
        byte = draw(st.integers(0, 255))
        if action == "flip" and pos < len(data):
            data[pos] = byte
        elif action == "insert":
            data.insert(pos, byte)
        else:
            del data[pos:pos + draw(st.integers(1, 20))]
    return bytes(data)


ANY_BYTES = st.one_of(st.binary(max_size=400), csv_like(), mutated())


# -- CSV ---------------------------------------------------------------------------------------
@FUZZ
@given(content=ANY_BYTES)
def test_any_bytes_as_transactions_validate_or_raise_clvtier_error(content: bytes) -> None:
    with data_dir({"transactions.csv": content}) as root:
        load_or_clvtier_error(root)


@FUZZ
@given(content=ANY_BYTES)
def test_any_bytes_as_gzipped_transactions_validate_or_raise_clvtier_error(content: bytes) -> None:
    with data_dir({"transactions.csv.gz": content}) as root:
        load_or_clvtier_error(root)


@st.composite
def customers_like(draw: st.DrawFn) -> bytes:
    header = draw(st.one_of(st.just(CUSTOMER_COLUMNS), HEADERS))
    rows = draw(st.lists(st.lists(CELLS, min_size=len(header), max_size=len(header)), max_size=5))
    return ("\n".join(",".join(r) for r in [header, *rows]) + "\n").encode("utf-8", errors="replace")


@FUZZ
@given(content=st.one_of(st.binary(max_size=300), customers_like()))
def test_any_customers_next_to_valid_transactions_validate_or_raise_clvtier_error(content: bytes) -> None:
    with data_dir({"transactions.csv": TX.encode(), "customers.csv": content}) as root:
        outcome = load_or_clvtier_error(root)
    if isinstance(outcome, Dataset):  # a valid transactions table is never lost
        assert outcome.summary["transactions"]["rows"] == 3


# -- Parquet -----------------------------------------------------------------------------------
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0])
COLUMN_VALUES = st.sampled_from(["int", "float", "text", "bool", "date", "timestamp", "timestamp_tz", "null",
                                 "mixed"])


def column(kind: str, draw: st.DrawFn, n: int) -> pd.Series:
    if kind == "int":
        return pd.Series(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), dtype="int64")
    if kind == "float":
        return pd.Series(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype="float64")
    if kind == "text":
        return pd.Series(draw(st.lists(st.one_of(CELLS, st.none()), min_size=n, max_size=n)), dtype="object")
    if kind == "bool":
        return pd.Series(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype="bool")
    if kind == "date":
        return pd.Series(draw(st.lists(st.dates(), min_size=n, max_size=n)), dtype="object")
    if kind in ("timestamp", "timestamp_tz"):
        stamps = draw(st.lists(st.datetimes(min_value=dt.datetime(1700, 1, 1), max_value=dt.datetime(2200, 1, 1)),
                               min_size=n, max_size=n))
        series = pd.Series(pd.to_datetime(stamps), dtype="datetime64[us]")
        return series.dt.tz_localize("UTC").dt.tz_convert("Asia/Kolkata") if kind == "timestamp_tz" else series
    if kind == "null":
        return pd.Series([None] * n, dtype="object")
    # mixed: text and numbers in one column, written as text
    values = draw(st.lists(st.one_of(CELLS, st.integers(-5, 5).map(str), FLOATS.map(repr)), min_size=n, max_size=n))
    return pd.Series(values, dtype="object")


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 5))
    names = draw(st.lists(st.sampled_from(TX_COLUMNS + ["Customer ID", "extra", "amount"]), min_size=1,
                          max_size=6, unique=True))
    # usually the required columns, so that validation goes past the column check
    if draw(st.booleans()):
        names = list(dict.fromkeys(["customer_id", "transaction_date", "transaction_amount", *names]))
    return pd.DataFrame({name: column(draw(COLUMN_VALUES), draw, n) for name in names})


@FUZZ
@given(frame=frames())
def test_any_frame_as_parquet_validates_or_raises_clvtier_error(frame: pd.DataFrame) -> None:
    with data_dir({}) as root:
        try:
            frame.to_parquet(root / "transactions.parquet", index=False)
        except Exception:  # pyarrow cannot write it: not an input clvtier can receive
            assume(False)
        load_or_clvtier_error(root)


def test_huge_and_tiny_numbers_in_parquet_are_not_lost() -> None:
    """Tiny amounts stay valid; huge finite ones are refused by name (they cannot be summed exactly)."""
    frame = pd.DataFrame({
        "customer_id": ["a", "b", "c", "d", "e"],
        "transaction_date": [dt.date(2023, 1, 1)] * 5,
        "transaction_amount": [99_999_999_999_999.98, 5e-324, -1e-300, np.float64(1.5), -99_999_999_999_999.98],
    })
    with data_dir({}) as root:
        frame.to_parquet(root / "transactions.parquet", index=False)
        ds = load(root, as_of=AS_OF)
        assert ds.summary["transactions"]["rows"] == 5
        frame.loc[0, "transaction_amount"], frame.loc[4, "transaction_amount"] = 1e308, -1e14
        frame.to_parquet(root / "transactions.parquet", index=False)
        with pytest.raises(DataError) as err:
            load(root, as_of=AS_OF)
        [problem] = [p for p in err.value.problems if p.severity == "error"]
        # Parquet rows count from 1.
        assert problem.code == "amount_too_large" and problem.count == 2 and problem.rows == (1, 5)


# -- mapping files -------------------------------------------------------------------------------
@FUZZ
@given(text=st.one_of(
    st.text(max_size=200),
    st.builds(lambda key, value: f'[transactions]\npath = "tx.csv"\n{key} = {value}\n',
              st.sampled_from(["delimiter", "header", "names", "date_format", "format", "table", "columns"]),
              st.sampled_from(['";"', '"\\t"', '"whitespace"', "false", "3", '["a", "b"]', '"%d/%m/%Y"', '"xml"',
                               '""', '"ab"', "{customer_id = 1}", '"transactions"'])),
))
def test_any_mapping_file_loads_or_raises_clvtier_error(text: str) -> None:
    with data_dir({"tx.csv": TX.encode()}) as root:
        (root / "shop.toml").write_text(text, encoding="utf-8", errors="replace")
        load_or_clvtier_error(root / "shop.toml")


@pytest.mark.parametrize("content", [b"\xff\xfe", b"\x1f\x8b", b'"', b"\n\n\n,,,\n", b"\r", b"a\x00b"])
def test_tiny_edge_files(content: bytes) -> None:
    with data_dir({"transactions.csv": content}) as root:
        assert isinstance(load_or_clvtier_error(root), ClvtierError)
