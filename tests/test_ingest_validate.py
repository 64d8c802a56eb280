"""Ingest and validation: discovery of the tables, every error and warning, and the CLI around them."""

from __future__ import annotations

import datetime as dt
import gzip
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import Result
from conftest import TINY, TINY_AS_OF, TINY_CUTOFF, write_ecomx
from typer.testing import CliRunner

from clvtier.cli import app
from clvtier.errors import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, DataError, InputError, Problem
from clvtier.features import build_features
from clvtier.ingest import discover
from clvtier.validate import Dataset, load

REAL_ECOMX = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecomx"
AS_OF = TINY_AS_OF.isoformat()
TX = TINY["transactions"]
TX_HEADER = TX.splitlines()[0] + "\n"
#: TINY's transactions and 3,000 more rows: longer than the sample DuckDB checks on reading.
LONG_TX = TX + "".join(f"{100 + i},1,2023-03-01,10.0,Electronics\n" for i in range(3000))


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def codes(problems: list[Problem]) -> dict[tuple[str, str, str | None], int]:
    """(code, table, column) -> count of every problem."""
    return {(p.code, p.table, p.column): p.count for p in problems}


def only_error(exc: DataError) -> Problem:
    errors = [p for p in exc.problems if p.severity == "error"]
    assert len(errors) == 1, [p.describe() for p in errors]
    return errors[0]


# -- errors --------------------------------------------------------------------------------
# Each case writes only the tables it needs (the transactions table, plus the table at fault):
# every load costs a few hundred milliseconds of query compilation.
def tx_and(table: str, content: str | bytes) -> Callable[[Path], Path]:
    """Build the transactions table (TINY) and ``table`` with ``content``."""
    return lambda root: write_ecomx(root, {"transactions": TX, table: content})


def tiny_without(table: str) -> Callable[[Path], Path]:
    return lambda root: write_ecomx(root, {k: v for k, v in TINY.items() if k != table})


def single_file(name: str, content: bytes) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
        return root

    return build


def parquet_table(table: str, **columns: list[object]) -> Callable[[Path], Path]:
    """``table`` of TINY as Parquet with ``columns`` replaced (as pandas writes them), next to the
    transactions table (TINY, CSV) unless it is the transactions table."""
    def build(root: Path) -> Path:
        write_ecomx(root, {} if table == "transactions" else {"transactions": TX})
        frame = pd.read_csv(io.StringIO(TINY[table])).assign(**columns)
        frame.to_parquet(root / f"{table}.parquet", index=False)
        return root

    return build


def customer_ids(text: str, ids: list[str]) -> str:
    """A TINY table (CSV text) with its customer_id column replaced by ``ids``."""
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    return frame.assign(customer_id=ids).to_csv(index=False)


@dataclass(frozen=True)
class ErrorCase:
    build: Callable[[Path], Path]
    code: str
    file: str | None  # name of the file the message must name (None: no single file)
    message: str  # a fragment of the message
    fix: str  # a fragment of the fix
    column: str | None = None
    count: int = 0
    rows: tuple[int, ...] = ()  # first offending lines; header = line 1


ERROR_CASES: dict[str, ErrorCase] = {
    "no-transactions-table": ErrorCase(
        tiny_without("transactions"), "missing_table", None,
        "required transactions table is missing (found: customers (customers_final.csv)",
        "Add transactions.csv",
    ),
    "empty-directory": ErrorCase(
        single_file("notes.txt.bak", b"no table here"), "no_tables", "data", "no data tables found",
        "Name the files transactions.csv",
    ),
    "missing-column": ErrorCase(
        tx_and("transactions", TX.replace("transaction_amount", "amount")), "missing_column",
        "transactions_final.csv", "missing required column(s) ['transaction_amount']; found",
        "map them in a mapping file", column="transaction_amount",
    ),
    "unparsable-dates": ErrorCase(
        tx_and("transactions", TX.replace("2023-09-15", "2023-13-45").replace("2024-02-05,80", "05/02/2024,80")),
        "parse", "transactions_final.csv", "2 value(s) do not parse as dates (YYYY-MM-DD)",
        "date_format in a mapping file", column="transaction_date", count=2, rows=(5, 12),
    ),
    "unparsable-amounts": ErrorCase(
        tx_and("transactions", TX.replace("40.0", "forty").replace("999.0", "$999")),
        "parse", "transactions_final.csv", "2 value(s) do not parse as numbers",
        "dot as decimal separator", column="transaction_amount", count=2, rows=(5, 7),
    ),
    "line-numbers-past-quoted-line-breaks-and-blank-lines": ErrorCase(
        # the 5th record starts on line 8: one quoted line break and one blank line come before it
        tx_and("transactions", TX.replace("100.0,Electronics", '100.0,"Electronics\nand more"')
               .replace("30.0,Electronics\n", "30.0,Electronics\n\n").replace("60.0", "sixty")),
        "parse", "transactions_final.csv", "1 value(s) do not parse as numbers",
        "dot as decimal separator", column="transaction_amount", count=1, rows=(8,),
    ),
    "unparsable-counts": ErrorCase(
        tx_and("engagements", TINY["engagements"].replace("10,5,1", "10,5,1.2.3")),
        "parse", "engagements_final.csv", "1 value(s) do not parse as numbers",
        "plain numbers", column="number_of_clicks", count=1, rows=(4,),
    ),
    "unparsable-join-dates": ErrorCase(
        tx_and("customers", TINY["customers"].replace("2023-06-01", "June 1st")),
        "parse", "customers_final.csv", "1 value(s) do not parse as dates",
        "Write dates as YYYY-MM-DD", column="join_date", count=1, rows=(3,),
    ),
    "unknown-response": ErrorCase(
        tx_and("marketing", TINY["marketing"].replace("No,Free", "Maybe,Free")),
        "parse", "marketing_final.csv", "1 value(s) do not parse as responses (Yes/No)",
        "true/false, 1/0 are accepted", column="response", count=1, rows=(3,),
    ),
    "empty-customer-id": ErrorCase(
        tx_and("transactions", TX.replace("8,2,", "8,,")), "empty_key", "transactions_final.csv",
        "1 row(s) have an empty customer_id", "Fill in customer_id", column="customer_id", count=1, rows=(9,),
    ),
    "duplicate-customers": ErrorCase(
        tx_and("customers", TINY["customers"] + "2,2023-01-01,,,,\n"), "duplicate_key",
        "customers_final.csv", "1 duplicate customer_id value(s); customer_id must be unique in customers",
        "Remove the duplicate rows", column="customer_id", count=1, rows=(3, 6),
    ),
    "duplicate-engagements": ErrorCase(
        tx_and("engagements", TINY["engagements"] + "3,1,1,1\n"), "duplicate_key",
        "engagements_final.csv", "customer_id must be unique in engagements",
        "Remove the duplicate rows", column="customer_id", count=1, rows=(4, 6),
    ),
    "duplicate-transaction-id": ErrorCase(
        tx_and("transactions", TX + "3,1,2023-03-01,30.0,Electronics\n"), "duplicate_key",
        "transactions_final.csv", "transaction_id must be unique in transactions",
        "give each row its own id", column="transaction_id", count=1, rows=(4, 14),
    ),
    "duplicate-campaign-id": ErrorCase(
        tx_and("marketing", TINY["marketing"] + "4,3,No,Discount,2023-12-01\n"), "duplicate_key",
        "marketing_final.csv", "campaign_id must be unique in marketing",
        "Remove the duplicate rows", column="campaign_id", count=1, rows=(5, 8),
    ),
    "float-id-with-a-fraction": ErrorCase(
        parquet_table("transactions", customer_id=[1.0, 1.0, 1.5] + [1.0] * 5 + [2.0**60] + [5.0, 4.0, 4.0]),
        "parse", "transactions.parquet", "2 value(s) do not parse as ids (whole numbers or text)",
        "Store ids as integers or text", column="customer_id", count=2, rows=(3, 9),
    ),
    "integer-response-not-1-or-0": ErrorCase(
        parquet_table("marketing", response=[1, 0, 1, 1, 2, 1]), "parse", "marketing.parquet",
        "1 value(s) do not parse as responses (Yes/No)", "true/false, 1/0 are accepted", column="response",
        count=1, rows=(5,),
    ),
    "header-only-transactions": ErrorCase(
        tx_and("transactions", TX_HEADER), "empty", "transactions_final.csv",
        "the table has a header but no rows", "Export the table again with its data",
    ),
    "header-only-optional-table": ErrorCase(
        tx_and("customers", TINY["customers"].splitlines()[0] + "\n"), "empty", "customers_final.csv",
        "the table has a header but no rows", "remove the file if the table is optional",
    ),
    "nan-and-inf-amounts": ErrorCase(
        tx_and("transactions", TX.replace("40.0", "NaN").replace("60.0", "inf")), "non_finite",
        "transactions_final.csv", "2 value(s) are NaN or infinite", "Replace them with real amounts",
        column="transaction_amount", count=2, rows=(5, 6),
    ),
    "minus-infinity": ErrorCase(
        tx_and("transactions", TX.replace("200.0", "-Infinity")), "non_finite",
        "transactions_final.csv", "1 value(s) are NaN or infinite", "Replace them",
        column="transaction_amount", count=1, rows=(8,),
    ),
    "amounts-too-large": ErrorCase(
        tx_and("transactions", TX.replace("40.0", "1e14").replace("200.0", "-3.5e15")), "amount_too_large",
        "transactions_final.csv", "2 amount(s) are 1e+14 or more in absolute value", "Check the column's unit",
        column="transaction_amount", count=2, rows=(5, 8),
    ),
    "empty-file": ErrorCase(
        tx_and("transactions", b""), "unreadable", "transactions_final.csv",
        "the file is empty (0 bytes)", "Export the table again, with a header",
    ),
    "blank-lines-only": ErrorCase(
        tx_and("customers", "\n \n"), "unreadable", "customers_final.csv",
        "the file has no header and no rows", "Export the table with a header",
    ),
    "semicolon-delimiter": ErrorCase(
        tx_and("transactions", TX.replace(",", ";")), "missing_column", "transactions_final.csv",
        "the file looks separated by semicolons", "comma-separated",
        column="customer_id, transaction_date, transaction_amount",
    ),
    "ragged-rows": ErrorCase(
        tx_and("transactions", TX + "13,1,2023-03-01\n"), "unreadable", "transactions_final.csv",
        "the file cannot be parsed as CSV", "every row has as many fields as the header",
    ),
    # DuckDB samples the first 2,048 records when the file is registered; it meets a bad
    # record past them only when validation first reads every record.
    "ragged-row-past-the-sample": ErrorCase(
        tx_and("transactions", LONG_TX + "3012 rows\n"), "unreadable", "transactions_final.csv",
        f"the file cannot be parsed as CSV (line {len(LONG_TX.splitlines()) + 1} has 1 field(s), the header has 5)",
        "a title, total or footer line is a row too",
    ),
    "unclosed-quote-past-the-sample": ErrorCase(
        single_file("transactions.csv.gz", gzip.compress(
            (LONG_TX + '9999,1,2023-03-01,10.0,"Electronics\n' + LONG_TX.split("\n", 1)[1]).encode())),
        "unreadable", "transactions.csv.gz",
        f"a quoted field starting on line {len(LONG_TX.splitlines()) + 1} is not closed",
        "every row has as many fields as the header",
    ),
    "two-digit-years": ErrorCase(
        # DuckDB alone reads 10/01/23 as the year 10 and 23-03-01 as the year 23
        tx_and("transactions", TX.replace("2023-01-10", "10/01/23").replace("2023-03-01,50", "23-03-01,50")),
        "parse", "transactions_final.csv", "2 value(s) do not parse as dates (YYYY-MM-DD)", "a four-digit year",
        column="transaction_date", count=2, rows=(2, 3),
    ),
    "placeholder-customer-ids": ErrorCase(
        tx_and("transactions", TX.replace("\n7,2,", "\n7,NULL,").replace("\n9,5,", "\n9,\\N,")),
        "placeholder_key", "transactions_final.csv", "2 row(s) have a customer_id that stands for no value",
        "Fill in customer_id or drop those rows", column="customer_id", count=2, rows=(8, 10),
    ),
    "counts-too-large": ErrorCase(
        tx_and("engagements", TINY["engagements"].replace("3,10,5,1", "3,1e200,5,1")), "value_too_large",
        "engagements_final.csv", "1 value(s) are 1e+14 or more in absolute value", "Check the export of",
        column="number_of_site_visits", count=1, rows=(4,),
    ),
    "semicolons-and-decimal-commas-in-every-row": ErrorCase(
        # a European export: DuckDB alone would skip the header as unlike the rows below it
        tx_and("transactions", TX.replace(",", ";").replace(".0;", ",5;")), "unreadable", "transactions_final.csv",
        "the file cannot be parsed as CSV (line 2 has 2 field(s), the header has 1)", 'set delimiter = ";"',
    ),
    "title-line-above-the-header": ErrorCase(
        tx_and("transactions", "Sales report\n" + TX), "unreadable", "transactions_final.csv",
        "the file cannot be parsed as CSV (line 2 has 5 field(s), the header has 1)", "a title, total or footer line",
    ),
    "binary-file": ErrorCase(
        tx_and("transactions", bytes(range(256)) * 8), "unreadable", "transactions_final.csv",
        "the file is binary or UTF-16 encoded, not UTF-8 text", "Save the table as UTF-8 CSV",
    ),
    "utf16-file": ErrorCase(
        tx_and("customers", TINY["customers"].encode("utf-16")), "unreadable", "customers_final.csv",
        "the file is UTF-16 encoded (Excel's 'Unicode text')", "iconv -f utf-16 -t utf-8",
    ),
    "latin1-file": ErrorCase(
        tx_and("customers", TINY["customers"].replace("Nice", "Orléans").encode("latin-1")), "unreadable",
        "customers_final.csv", "not UTF-8 text (invalid byte 0xe9 on line 4)", "iconv -f latin1 -t utf-8",
    ),
    "corrupt-gzip": ErrorCase(
        single_file("transactions.csv.gz", b"\x1f\x8b" + b"garbage" * 50), "unreadable",
        "transactions.csv.gz", "the gzip file is corrupt", "Compress the CSV again",
    ),
    "truncated-gzip": ErrorCase(
        single_file("transactions.csv.gz", gzip.compress(TX.encode())[:-30]), "unreadable",
        "transactions.csv.gz", "corrupt or truncated", "Compress the CSV again",
    ),
    "corrupt-parquet": ErrorCase(
        single_file("transactions.parquet", b"PAR1" + b"garbage" * 50), "unreadable",
        "transactions.parquet", "not a readable Parquet file", "Export the table again",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_is_reported_in_detail_with_exit_code_2(case: ErrorCase, tmp_path: Path) -> None:
    """``validate --json`` gives the structured findings; the exit code is 2."""
    data = case.build(tmp_path / "data")
    result = cli("validate", str(data), "--json", "--as-of", AS_OF)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "Traceback" not in result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    errors = [Problem(**{**p, "rows": tuple(p["rows"])}) for p in report["problems"] if p["severity"] == "error"]
    assert len(errors) == 1, [p.describe() for p in errors]
    [problem] = errors
    assert problem.code == case.code
    assert case.message in problem.message
    assert case.fix in problem.fix
    if case.file is None:
        assert problem.file is None
    else:
        assert problem.file is not None and Path(problem.file).name == case.file
    assert problem.column == case.column
    assert problem.count == case.count
    assert problem.rows == case.rows

    # the text the CLI prints (see test_every_error_is_reported_at_once)
    text = problem.describe()
    assert case.message in text and f"Fix: {problem.fix}" in text
    if case.file:
        assert case.file in text
    if case.column:
        assert f"column '{case.column}'" in text
    if case.rows:  # the count once (in the message, or in brackets when it is not), then the lines
        assert f"{case.count:,}" in text
        assert "first at line " + ", ".join(map(str, case.rows)) + ")" in text
    assert ".." not in text


# Validation runs before anything is written, whatever the error: a sample of kinds suffices.
NOTHING_WRITTEN = ["no-transactions-table", "empty-directory", "unparsable-dates", "duplicate-transaction-id",
                   "header-only-transactions", "nan-and-inf-amounts", "empty-file", "semicolon-delimiter",
                   "binary-file", "latin1-file", "ragged-row-past-the-sample"]


@pytest.mark.parametrize("case", [ERROR_CASES[k] for k in NOTHING_WRITTEN], ids=NOTHING_WRITTEN)
def test_features_on_bad_data_prints_the_error_and_writes_nothing(case: ErrorCase, tmp_path: Path) -> None:
    data = case.build(tmp_path / "data")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = cli("features", str(data), "--cutoff", "2024-01-01", "--out", str(out_dir / "f.parquet"),
                 "--as-of", AS_OF)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert case.message in line and case.fix in line
    assert "Stopped: 1 error(s); nothing was written." in result.output
    assert "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    tables = dict(TINY)
    tables["transactions"] = TX.replace("2023-09-15", "2023-09-31")
    tables["customers"] = TINY["customers"] + "1,2023-01-01,,,,\n"
    tables["engagements"] = TINY["engagements"].replace("1,100,20,10", "1,many,20,10")
    tables["marketing"] = TINY["marketing"] + "6,2,No,Discount,2023-12-01\n"
    data = write_ecomx(tmp_path, tables)
    with pytest.raises(DataError) as info:
        load(data, as_of=TINY_AS_OF)
    errors = {(p.code, p.table, p.column): p.rows for p in info.value.problems if p.severity == "error"}
    assert errors == {
        ("parse", "transactions", "transaction_date"): (5,),
        ("duplicate_key", "customers", "customer_id"): (2, 6),
        ("parse", "engagements", "number_of_site_visits"): (2,),
        ("duplicate_key", "marketing", "campaign_id"): (7, 8),
    }
    assert str(info.value).startswith("4 data errors found:")
    result = cli("validate", str(data), "--as-of", AS_OF)
    assert result.exit_code == EXIT_BAD_INPUT
    assert "Stopped: 4 error(s); nothing was written." in result.output
    for problem in info.value.problems:
        if problem.severity == "error":
            assert f"Error: {problem.describe()}" in result.output


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(InputError, match="no such file or directory"):
        load(missing)
    result = cli("validate", str(missing))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "no-such-dir: no such file or directory" in result.output
    assert "Fix: Check the path to the data." in result.output
    assert "Traceback" not in result.output


# -- warnings ------------------------------------------------------------------------------
TINY_WARNINGS = {
    ("missing_value", "customers", "age"): 1,
    ("missing_value", "customers", "gender"): 1,
    ("normalised", "marketing", "response"): 2,
    ("orphan", "transactions", "customer_id"): 2,
    ("orphan", "marketing", "customer_id"): 1,
    ("no_transactions", "customers", "customer_id"): 1,
}


def test_tiny_fixture_has_exactly_the_expected_warnings(tiny_dir: Path) -> None:
    ds = load(tiny_dir, as_of=TINY_AS_OF)
    assert all(p.severity == "warning" for p in ds.problems)
    assert codes(ds.problems) == TINY_WARNINGS
    messages = {(p.code, p.table, p.column): p.message for p in ds.problems}
    assert messages[("missing_value", "customers", "age")].startswith("age is missing in 1 row(s)")
    assert messages[("orphan", "transactions", "customer_id")].startswith(
        "2 row(s) of 1 customer(s) whose customer_id is not in customers"
    )
    assert messages[("orphan", "marketing", "customer_id")].startswith("1 row(s) of 1 customer(s)")
    assert messages[("no_transactions", "customers", "customer_id")].startswith("1 customer(s) have no transactions")

    result = cli("validate", str(tiny_dir), "--as-of", AS_OF)
    assert result.exit_code == 0, result.output
    for problem in ds.problems:
        assert f"Warning: {problem.describe()}" in result.output
    assert "OK: 6 warning(s), no errors." in result.output


RESPONSES = TINY["marketing"].replace("Yes,Discount,2023-05", "true,Discount,2023-05").replace(
    "No,Free", "NO,Free").replace("Yes,Discount,2024", "0,Discount,2024").replace("No,Discount", "FALSE,Discount")


@dataclass(frozen=True)
class WarningCase:
    tables: dict[str, str | bytes]
    code: str
    table: str
    column: str
    count: int
    text: str  # a fragment of the message
    as_of: dt.date = TINY_AS_OF
    rows: tuple[int, ...] = ()


NO_PROFILE = {"transactions": TX, "customers": TINY["customers"].replace("30.0,Female", ",")}
WARNING_CASES: dict[str, WarningCase] = {
    "missing-age": WarningCase(
        NO_PROFILE, "missing_value", "customers", "age", 2, "age is missing in 2 row(s); kept as missing",
    ),
    "missing-gender": WarningCase(
        NO_PROFILE, "missing_value", "customers", "gender", 2, "gender is missing in 2 row(s)",
    ),
    "negative-amounts": WarningCase(
        {"transactions": TX.replace("40.0", "-40.0").replace("10.0", "-10.0")},
        "negative_amount", "transactions", "transaction_amount", 2,
        "2 negative amount(s), treated as returns and netted into spend", rows=(5, 9),
    ),
    "zero-amounts": WarningCase(
        {"transactions": TX.replace("60.0", "0")}, "zero_amount", "transactions",
        "transaction_amount", 1, "1 zero amount(s); kept",
    ),
    "response-variants": WarningCase(
        {"transactions": TX, "marketing": RESPONSES}, "normalised", "marketing", "response", 6,
        "6 value(s) are spelled other than Yes/No; normalised",
    ),
    "transaction-dates-after-as-of": WarningCase(
        {"transactions": TX}, "future_date", "transactions", "transaction_date", 2,
        "2 date(s) are after the as-of date 2024-01-31", as_of=dt.date(2024, 1, 31),
    ),
    "join-dates-after-as-of": WarningCase(
        {"transactions": TX, "customers": TINY["customers"]}, "future_date", "customers", "join_date", 1,
        "1 date(s) are after the as-of date 2024-01-31", as_of=dt.date(2024, 1, 31),
    ),
    "no-transaction-of-a-known-customer": WarningCase(
        # "1.0" in a text file is text, not the customer "1": every transaction is an orphan
        {"transactions": customer_ids(TX, ["1.0"] * 6 + ["2.0"] * 2 + ["5.0"] * 2 + ["4.0"] * 2),
         "customers": TINY["customers"]},
        "no_common_customers", "transactions", "customer_id", 12,
        "transactions_final.csv has ids such as '1.0', customers_final.csv has ids such as '1'",
    ),
    "negative-counts": WarningCase(
        {"transactions": TX, "engagements": TINY["engagements"].replace("3,10,5,1", "3,10,5,-1")},
        "negative_count", "engagements", "number_of_clicks", 1, "1 negative count(s); kept as they are", rows=(4,),
    ),
    "ages-out-of-range": WarningCase(
        {"transactions": TX, "customers": TINY["customers"].replace("45.0", "450").replace("50.0", "-3")},
        "odd_age", "customers", "age", 2, "2 age(s) outside 0-120", rows=(4, 5),
    ),
    "offers-of-no-known-customer": WarningCase(
        # without a customers table, customers are known from the transactions
        {"transactions": TX, "marketing": customer_ids(TINY["marketing"], ["00001"] * 3 + ["00002", "00003", "00005"])},
        "no_common_customers", "marketing", "customer_id", 6,
        "marketing_final.csv has ids such as '00001', transactions_final.csv has ids such as '1'",
    ),
    "offers-after-as-of": WarningCase(
        {"transactions": TX, "marketing": TINY["marketing"]}, "future_date", "marketing", "campaign_date", 1,
        "1 date(s) are after the as-of date", as_of=dt.date(2024, 1, 31),
    ),
}


@pytest.mark.parametrize("case", WARNING_CASES.values(), ids=WARNING_CASES.keys())
def test_warning_is_counted_and_processing_continues(case: WarningCase, tmp_path: Path) -> None:
    data = write_ecomx(tmp_path / "data", case.tables)
    result = cli("validate", str(data), "--json", "--as-of", case.as_of.isoformat())
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    [problem] = [
        p for p in report["problems"] if (p["code"], p["table"], p["column"]) == (case.code, case.table, case.column)
    ]
    assert problem["severity"] == "warning"
    assert problem["count"] == case.count
    assert Path(problem["file"]).name == f"{case.table}_final.csv"
    assert problem["fix"]
    if case.rows:
        assert tuple(problem["rows"]) == case.rows
    assert case.text in problem["message"]


def test_response_variants_are_normalised_to_yes_no(tmp_path: Path) -> None:
    ds = load(write_ecomx(tmp_path, {"transactions": TX, "marketing": RESPONSES}), as_of=TINY_AS_OF)
    frame = ds.con.execute(ds.tables["marketing"]).sort_values("campaign_id")
    # true, NO, 0, yes, FALSE, 1
    assert frame["response"].tolist() == ["Yes", "No", "No", "Yes", "No", "Yes"]


def test_negative_amounts_are_netted_into_spend(tmp_path: Path) -> None:
    ds = load(write_ecomx(tmp_path, {"transactions": TX.replace("40.0", "-40.0")}), as_of=TINY_AS_OF)
    row = build_features(ds, TINY_CUTOFF).frame.set_index("customer_id").loc["1"]
    assert row["total_spend"] == 100 + 50 + 30 - 40 + 60
    assert row["n_transactions"] == 5


# -- discovery -----------------------------------------------------------------------------
def _frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).replace({"": None})


def _parquet_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    for name, text in TINY.items():
        _frame(text).to_parquet(root / f"{name}.parquet", index=False)
    return root


def _typed_parquet_dir(root: Path) -> Path:
    """Parquet files with native types (ints, floats, dates), as a database export writes them."""
    root.mkdir(parents=True)
    for name, text in TINY.items():
        frame = pd.read_csv(io.StringIO(text))
        for col in frame.columns:
            if col.endswith("_date"):
                frame[col] = pd.to_datetime(frame[col]).dt.date
        frame.to_parquet(root / f"{name}.parquet", index=False)
    return root


def _duckdb_file(root: Path) -> Path:
    root.mkdir(parents=True)
    path = root / "shop.duckdb"
    with duckdb.connect(str(path)) as con:
        for name, text in TINY.items():
            con.register("frame", _frame(text))
            con.execute(f"CREATE TABLE {name}_final AS SELECT * FROM frame")
            con.unregister("frame")
    return path


LAYOUTS: dict[str, Callable[[Path], Path]] = {
    "original-names-csv": lambda root: write_ecomx(root, names="final"),
    "short-names-csv": lambda root: write_ecomx(root, names="short"),
    "gzip-csv": lambda root: write_ecomx(root, names="short", ext=".csv.gz"),
    "parquet": _parquet_dir,
    "typed-parquet": _typed_parquet_dir,
    "duckdb-database": _duckdb_file,
}


def _tables_as_frames(ds: Dataset) -> dict[str, pd.DataFrame]:
    out = {}
    for name, table in ds.tables.items():
        frame = ds.con.execute(table)
        out[name] = frame.sort_values(list(frame.columns[:2])).reset_index(drop=True)
    return out


@pytest.fixture(scope="module")
def reference_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    return _tables_as_frames(load(write_ecomx(tmp_path_factory.mktemp("ref")), as_of=TINY_AS_OF))


@pytest.mark.parametrize("build", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_layouts_give_the_same_typed_tables(
    build: Callable[[Path], Path], tmp_path: Path, reference_tables: dict[str, pd.DataFrame]
) -> None:
    """Features are computed from the typed tables only: equal tables, equal features."""
    ds = load(build(tmp_path / "data"), as_of=TINY_AS_OF)
    assert sorted(ds.tables) == ["customers", "engagements", "marketing", "transactions"]
    assert codes(ds.problems) == TINY_WARNINGS
    for name, frame in _tables_as_frames(ds).items():
        pd.testing.assert_frame_equal(frame, reference_tables[name], obj=name)


SEVERAL_FILES = {  # in the order discovery looks for them
    "original-and-short-name": ("transactions_final.csv", "transactions.csv"),
    "parquet-and-csv": ("transactions.parquet", "transactions.csv"),
}


@pytest.mark.parametrize("files", SEVERAL_FILES.values(), ids=SEVERAL_FILES.keys())
def test_several_files_for_one_table_are_refused(files: tuple[str, str], tmp_path: Path) -> None:
    """Neither file is picked silently: both are named, and a mapping file picks one."""
    data = write_ecomx(tmp_path / "data", {"customers": TINY["customers"]})
    for name in files:
        if name.endswith(".parquet"):
            _frame(TX).to_parquet(data / name, index=False)
        else:
            (data / name).write_text(TX)
    result = cli("validate", str(data), "--json", "--as-of", AS_OF)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    report = json.loads(result.stdout)
    assert f"more than one file for the transactions table ({', '.join(files)})" in report["error"]
    assert "customers" not in report["error"]
    assert report["fix"].startswith("Keep one file per table in the directory, or map the table to a file")
    assert f'[transactions] and path = "{files[0]}"' in report["fix"]

    mapping = tmp_path / "shop.toml"
    mapping.write_text(f'[transactions]\npath = "data/{files[1]}"\n[customers]\npath = "data/customers_final.csv"\n')
    ds = load(mapping, as_of=TINY_AS_OF)
    assert Path(ds.sources["transactions"].path).name == files[1]
    assert ds.summary["transactions"]["rows"] == 12


def test_two_tables_for_one_table_in_a_duckdb_file_are_refused(tmp_path: Path) -> None:
    """A database holding both transactions_final and transactions: neither is picked silently."""
    path = tmp_path / "shop.duckdb"
    with duckdb.connect(str(path)) as con:
        con.register("tx", _frame(TX))
        con.execute("CREATE TABLE transactions_final AS SELECT * FROM tx")
        con.execute("CREATE VIEW transactions AS SELECT * FROM transactions_final LIMIT 3")
        con.register("cu", _frame(TINY["customers"]))
        con.execute("CREATE TABLE customers AS SELECT * FROM cu")
    result = cli("validate", str(path), "--json", "--as-of", AS_OF)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    report = json.loads(result.stdout)
    assert "more than one table or view for the transactions table (transactions_final, transactions)" in (
        report["error"])
    assert 'table = "transactions_final"' in report["fix"]

    mapping = tmp_path / "shop.toml"
    mapping.write_text('[transactions]\npath = "shop.duckdb"\ntable = "transactions"\n'
                       '[customers]\npath = "shop.duckdb"\n')
    ds = load(mapping, as_of=TINY_AS_OF)
    assert ds.summary["transactions"]["rows"] == 3


def test_several_files_for_several_tables_are_all_named(tmp_path: Path) -> None:
    write_ecomx(tmp_path, names="final")
    write_ecomx(tmp_path, {"customers": TINY["customers"], "marketing": TINY["marketing"]}, names="short",
                ext=".csv.gz")
    with pytest.raises(InputError) as info:
        discover(tmp_path)
    assert info.value.message == (
        f"{tmp_path}: more than one file for the customers table (customers_final.csv, customers.csv.gz) "
        "and the marketing table (marketing_final.csv, marketing.csv.gz); clvtier does not guess which one to read."
    )


def test_a_single_transactions_file(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(TX)
    ds = load(path, as_of=TINY_AS_OF)
    assert list(ds.tables) == ["transactions"]
    assert ds.problems == []
    frame = build_features(ds, TINY_CUTOFF).frame
    assert frame["customer_id"].tolist() == ["1", "2", "5"]
    assert "age" not in frame.columns and "offers_received" not in frame.columns


def test_column_names_are_normalised(tmp_path: Path) -> None:
    header = "Transaction ID,Customer-ID, transaction date ,TRANSACTION_AMOUNT,Product  Category\n"
    (tmp_path / "transactions.csv").write_text(header + TX.split("\n", 1)[1])
    ds = load(tmp_path, as_of=TINY_AS_OF)
    assert ds.tables["transactions"].columns == (
        "transaction_id", "customer_id", "transaction_date", "transaction_amount", "product_category"
    )
    assert ds.summary["transactions"]["rows"] == 12


def test_ids_are_trimmed_text_with_significant_leading_zeros(tmp_path: Path) -> None:
    (tmp_path / "transactions.csv").write_text(
        "transaction_id,customer_id,transaction_date,transaction_amount\n"
        "1, 7 ,2023-01-01,5\n2,7,2023-01-02,5\n3,007,2023-01-02,5\n4,07,2023-01-03,5\n5,\t7\t,2023-01-04,5\n"
    )
    ds = load(tmp_path, as_of=TINY_AS_OF)
    frame = build_features(ds, TINY_CUTOFF).frame
    assert frame["customer_id"].tolist() == ["007", "07", "7"]
    assert frame["n_transactions"].tolist() == [1, 1, 3]


def test_padded_text_in_parquet_is_trimmed_and_clean_text_is_read_as_it_is(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "transaction_id": [1, 2, 3, 4, 5],
        "customer_id": [" 7 ", "7", "007", "07", "\t7\t"],
        "transaction_date": [dt.date(2023, 1, d) for d in (1, 2, 2, 3, 4)],
        "transaction_amount": [5.0] * 5,
        "product_category": ["Books", "Books ", None, "", "Toys"],
    })
    padded = tmp_path / "padded"
    padded.mkdir()
    frame.to_parquet(padded / "transactions.parquet", index=False)
    ds = load(padded, as_of=TINY_AS_OF)
    features = build_features(ds, TINY_CUTOFF).frame
    assert features["customer_id"].tolist() == ["007", "07", "7"]
    assert features["n_transactions"].tolist() == [1, 1, 3]
    typed = ds.con.execute(ds.tables["transactions"]).sort_values("transaction_id")
    assert typed["product_category"].fillna("<NA>").tolist() == ["Books", "Books", "<NA>", "<NA>", "Toys"]

    clean = tmp_path / "clean"
    clean.mkdir()
    frame.assign(customer_id=["7", "7", "007", "07", "7"], product_category=["Books"] * 5).to_parquet(
        clean / "transactions.parquet", index=False)
    ds_clean = load(clean, as_of=TINY_AS_OF)
    # Without a value to trim, every later query reads the columns as they are.
    assert "trim" not in ds_clean.con.compile(ds_clean.tables["transactions"]).lower()
    assert build_features(ds_clean, TINY_CUTOFF).frame["n_transactions"].tolist() == [1, 1, 3]


def _float_ids_parquet(root: Path, transactions: pd.DataFrame, customers: pd.DataFrame) -> Path:
    root.mkdir(parents=True)
    transactions.to_parquet(root / "transactions.parquet", index=False)
    customers.to_csv(root / "customers.csv", index=False)
    return root


def _float_ids_duckdb(root: Path, transactions: pd.DataFrame, customers: pd.DataFrame) -> Path:
    root.mkdir(parents=True)
    path = root / "shop.duckdb"
    with duckdb.connect(str(path)) as con:
        for name, frame in (("transactions", transactions), ("customers", customers)):
            con.register("frame", frame)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
            con.unregister("frame")
        assert con.execute("SELECT data_type FROM duckdb_columns() WHERE column_name = 'customer_id' "
                           "ORDER BY table_name").fetchall() == [("VARCHAR",), ("DOUBLE",)]
    return path


@pytest.mark.parametrize("build", [_float_ids_parquet, _float_ids_duckdb], ids=["parquet", "duckdb"])
def test_float_ids_are_the_integers_they_hold(
    build: Callable[[Path, pd.DataFrame, pd.DataFrame], Path], tmp_path: Path
) -> None:
    """pandas writes an integer id column with missing values as float64: 1.0 is the customer "1"."""
    transactions = pd.DataFrame({
        "transaction_id": [1.0, 2.0, 3.0, 4.0],
        "customer_id": [1.0, 2.0, 123456789012.0, 2.0],
        "transaction_date": [dt.date(2023, 1, d) for d in (1, 2, 3, 4)],
        "transaction_amount": [5.0, 6.0, 7.0, 8.0],
    })
    customers = pd.DataFrame({"customer_id": ["1", "2", "123456789012"], "join_date": ["2022-12-01"] * 3})
    ds = load(build(tmp_path / "data", transactions, customers), as_of=TINY_AS_OF)
    assert ds.problems == []  # no orphan, no customer without transactions
    tx = ds.con.execute(ds.tables["transactions"]).sort_values("transaction_date")
    assert tx["customer_id"].tolist() == ["1", "2", "123456789012", "2"]
    assert tx["transaction_id"].tolist() == ["1", "2", "3", "4"]
    frame = build_features(ds, TINY_CUTOFF).frame
    assert sorted(frame["customer_id"]) == ["1", "123456789012", "2"]
    assert frame.set_index("customer_id").loc["2", "n_transactions"] == 2


RESPONSE_YES_NO = ["Yes", "No", "Yes", "Yes", "No", "Yes"]  # TINY marketing, by campaign_id


def _marketing_frame(response: list[object]) -> pd.DataFrame:
    frame = pd.read_csv(io.StringIO(TINY["marketing"])).assign(response=response)
    return frame.assign(campaign_date=pd.to_datetime(frame["campaign_date"]).dt.date)


def _responses_parquet(response: list[object]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        write_ecomx(root, {"transactions": TX})
        _marketing_frame(response).to_parquet(root / "marketing.parquet", index=False)
        return root

    return build


def _responses_duckdb(response: list[object]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        root.mkdir(parents=True)
        path = root / "shop.duckdb"
        with duckdb.connect(str(path)) as con:
            con.register("frame", _marketing_frame(response))
            con.execute("CREATE TABLE marketing AS SELECT * FROM frame")
            con.unregister("frame")
            con.register("frame", _frame(TX))
            con.execute("CREATE TABLE transactions AS SELECT * FROM frame")
        return path

    return build


def _responses_read_csv_auto(root: Path) -> Path:
    """A DuckDB table made with read_csv_auto, which types a Yes/No column as BOOLEAN."""
    write_ecomx(root, {"marketing": TINY["marketing"].replace(",yes,", ",Yes,").replace(",1,Free", ",Yes,Free")})
    path = root / "shop.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE marketing AS SELECT * FROM read_csv_auto(?)", [str(root / "marketing_final.csv")])
        con.register("frame", _frame(TX))
        con.execute("CREATE TABLE transactions AS SELECT * FROM frame")
        assert con.execute("SELECT data_type FROM duckdb_columns() WHERE column_name = 'response'").fetchall() == [
            ("BOOLEAN",)]
    (root / "marketing_final.csv").unlink()
    return path


TYPED_RESPONSES: dict[str, Callable[[Path], Path]] = {
    "parquet-boolean": _responses_parquet([r == "Yes" for r in RESPONSE_YES_NO]),
    "parquet-integer": _responses_parquet([int(r == "Yes") for r in RESPONSE_YES_NO]),
    "duckdb-integer": _responses_duckdb([int(r == "Yes") for r in RESPONSE_YES_NO]),
    "duckdb-read-csv-auto": _responses_read_csv_auto,
}


@pytest.mark.parametrize("build", TYPED_RESPONSES.values(), ids=TYPED_RESPONSES.keys())
def test_boolean_and_integer_responses_are_normalised_to_yes_no(build: Callable[[Path], Path], tmp_path: Path) -> None:
    ds = load(build(tmp_path / "data"), as_of=TINY_AS_OF)
    frame = ds.con.execute(ds.tables["marketing"]).sort_values("campaign_id", key=lambda s: s.astype(int))
    assert frame["response"].tolist() == RESPONSE_YES_NO
    assert codes(ds.warnings)[("normalised", "marketing", "response")] == 6


@pytest.mark.parametrize(
    ("ids", "dupes"),
    [
        ([1, 2, 3, 4, 5, 6], 0),  # in order: proven unique by one streamed pass
        ([1, 2, 3, 3, 4, 5], 1),  # in order but for one repeat
        ([6, 2, 5, 2, 4, 6], 2),  # out of order
        ([1, 2, 3, 1, 5, 6], 1),  # a repeat across a batch boundary of the streamed pass
    ],
)
@pytest.mark.parametrize("ids_as_text", [False, True], ids=["integer-ids", "text-ids"])
def test_duplicate_keys_in_parquet(ids: list[int], dupes: int, ids_as_text: bool, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    validate_module = importlib.import_module("clvtier.validate")
    monkeypatch.setattr(validate_module, "_ORDER_BATCH", 3)
    pd.DataFrame({
        "transaction_id": [f"T{i:03d}" for i in ids] if ids_as_text else ids,
        "customer_id": ["1", "2", "1", "2", "1", "2"],
        "transaction_date": [dt.date(2023, 1, d) for d in range(1, 7)],
        "transaction_amount": [5.0] * 6,
        "product_category": ["Books"] * 6,
    }).to_parquet(tmp_path / "transactions.parquet", index=False)
    if not dupes:
        assert load(tmp_path, as_of=TINY_AS_OF).summary["transactions"]["rows"] == 6
        return
    with pytest.raises(DataError) as err:
        load(tmp_path, as_of=TINY_AS_OF)
    problem = only_error(err.value)
    assert (problem.code, problem.column, problem.count) == ("duplicate_key", "transaction_id", dupes)
    assert problem.rows == tuple(i + 1 for i, v in enumerate(ids) if ids.count(v) > 1)


def test_transaction_id_defaults_to_the_line_number(tmp_path: Path) -> None:
    (tmp_path / "transactions.csv").write_text(
        "customer_id,transaction_date,transaction_amount\n1,2023-01-01,5\n1,2023-01-02,6\n"
    )
    ds = load(tmp_path, as_of=TINY_AS_OF)
    assert ds.con.execute(ds.tables["transactions"])["transaction_id"].tolist() == ["1", "2"]


# -- mapping files ---------------------------------------------------------------------------
CDNOW = (
    " 00001 19970101 1  11.77\n"
    " 00002 19970112 1  12.00\n"
    " 00002 19970112 5  77.00\n"
    " 00003 19970102 2  20.76\n"
    " 00003 19970330 2  20.76\n"
    "     1 19970105 1   5.00\n"
)
CDNOW_MAPPING = """\
[transactions]
path = "CDNOW_sample.txt"
delimiter = "whitespace"
header = false
names = ["customer_id", "date", "number_of_cds", "dollar_value"]
date_format = "%Y%m%d"

[transactions.columns]   # contract column = column in the file
transaction_date = "date"
transaction_amount = "dollar_value"
"""


def test_cdnow_log_through_a_mapping_file(tmp_path: Path) -> None:
    (tmp_path / "CDNOW_sample.txt").write_text(CDNOW)
    mapping = tmp_path / "cdnow.toml"
    mapping.write_text(CDNOW_MAPPING)
    ds = load(mapping, as_of=TINY_AS_OF)
    assert ds.problems == []
    assert ds.summary["transactions"]["rows"] == 6
    assert (ds.first_date, ds.last_date) == (dt.date(1997, 1, 1), dt.date(1997, 3, 30))
    tx = ds.con.execute(ds.tables["transactions"]).sort_values("transaction_id", key=lambda s: s.astype(int))
    assert tx["customer_id"].tolist() == ["00001", "00002", "00002", "00003", "00003", "1"]
    assert tx["transaction_amount"].tolist() == [11.77, 12.0, 77.0, 20.76, 20.76, 5.0]

    frame = build_features(ds, dt.date(1997, 4, 1)).frame.set_index("customer_id")
    # "00001" and "1" are different customers
    assert frame.index.tolist() == ["00001", "00002", "00003", "1"]
    assert frame.loc["00001", "total_spend"] == pytest.approx(11.77)
    assert frame.loc["1", "total_spend"] == pytest.approx(5.0)
    # two orders on the same day are one purchase day: no repeat purchase
    assert frame.loc["00002", ["n_transactions", "btyd_frequency"]].tolist() == [2, 0]
    assert frame.loc["00003", ["btyd_frequency", "btyd_recency", "btyd_T"]].tolist() == [1, 87, 89]

    result = cli("validate", str(mapping))
    assert result.exit_code == 0, result.output


def test_line_numbers_of_a_headerless_file(tmp_path: Path) -> None:
    (tmp_path / "CDNOW_sample.txt").write_text(CDNOW.replace("19970112 5", "1997-1-12 5"))
    (tmp_path / "cdnow.toml").write_text(CDNOW_MAPPING)
    with pytest.raises(DataError) as info:
        load(tmp_path / "cdnow.toml", as_of=TINY_AS_OF)
    problem = only_error(info.value)
    assert (problem.column, problem.rows) == ("transaction_date", (3,))
    assert "dates (%Y%m%d)" in problem.message


def test_mapping_with_another_delimiter_and_date_format(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text(
        "Order;Client;Day;Total\n1;A1;31/12/2023;10.5\n2;a1;01/01/2024;3\n"
    )
    (tmp_path / "shop.toml").write_text(
        '[transactions]\npath = "orders.csv"\ndelimiter = ";"\ndate_format = "%d/%m/%Y"\n'
        '[transactions.columns]\ntransaction_id = "Order"\ncustomer_id = "Client"\n'
        'transaction_date = "Day"\ntransaction_amount = "Total"\n'
    )
    ds = load(tmp_path / "shop.toml", as_of=TINY_AS_OF)
    tx = ds.con.execute(ds.tables["transactions"])
    assert tx["transaction_date"].tolist() == [pd.Timestamp("2023-12-31"), pd.Timestamp("2024-01-01")]
    assert tx["customer_id"].tolist() == ["A1", "a1"]


MAPPING_ERRORS = {
    "unknown-section": ('[orders]\npath = "x.csv"\n', "unknown table section(s) ['orders']"),
    "unknown-key": ('[transactions]\npath = "x.csv"\nsep = ";"\n', "has unknown key(s) ['sep']"),
    "no-path": ("[transactions]\nheader = false\n", "has no 'path'"),
    "bad-date-format": ('[transactions]\npath = "x.csv"\ndate_format = "%d-%b-%Y"\n', "date_format '%d-%b-%Y'"),
    "unknown-contract-column": (
        '[transactions]\npath = "x.csv"\n[transactions.columns]\namount = "Total"\n',
        "unknown contract column(s) ['amount']",
    ),
    "not-toml": ("[transactions\n", "not a valid TOML mapping file"),
    "missing-data-file": ('[transactions]\npath = "nowhere.csv"\n', "no such file"),
}


@pytest.mark.parametrize(("text", "message"), MAPPING_ERRORS.values(), ids=MAPPING_ERRORS.keys())
def test_bad_mapping_file(text: str, message: str, tmp_path: Path) -> None:
    mapping = tmp_path / "shop.toml"
    mapping.write_text(text)
    result = cli("validate", str(mapping))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert message in result.output
    assert "Traceback" not in result.output


# -- the real EcomX files ----------------------------------------------------------------------
@pytest.mark.skipif(not (REAL_ECOMX / "customers_final.csv").is_file(), reason="real EcomX files absent")
def test_real_ecomx_files_validate_with_exactly_the_expected_warnings(tmp_path: Path) -> None:
    for name in ("customers_final.csv", "engagements_final.csv", "marketing_final.csv"):
        shutil.copy(REAL_ECOMX / name, tmp_path / name)
    customers = pd.read_csv(tmp_path / "customers_final.csv", dtype=str)
    # The transactions file is not published: one purchase on the join date and one on the
    # last purchase date of every customer, positive amounts, so that it adds no warning.
    n = len(customers)
    tx = pd.DataFrame(
        {
            "transaction_id": range(1, 2 * n + 1),
            "customer_id": pd.concat([customers.customer_id, customers.customer_id], ignore_index=True),
            "transaction_date": pd.concat([customers.join_date, customers.last_purchase_date], ignore_index=True),
            "transaction_amount": [f"{10 + i % 990}.50" for i in range(2 * n)],
            "product_category": (["Electronics", "Clothing", "Home Goods"] * n)[: 2 * n],
        }
    )
    tx.to_csv(tmp_path / "transactions_final.csv", index=False)

    result = cli("validate", str(tmp_path), "--json", "--as-of", "2024-06-30")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {(p["code"], p["table"], p["column"]): p["count"] for p in report["problems"]} == {
        ("missing_value", "customers", "age"): 1009,
        ("missing_value", "customers", "gender"): 533,
    }
    assert {k: v["rows"] for k, v in report["summary"].items()} == {
        "customers": 10_000, "transactions": 20_000, "engagements": 10_000, "marketing": 25_200,
    }
    messages = [p["message"] for p in report["problems"]]
    assert messages[0].startswith("age is missing in 1,009 row(s)")
    assert messages[1].startswith("gender is missing in 533 row(s)")


@pytest.mark.parametrize("args", [["--as-of", "2024-13-45"], []], ids=["bad-option", "no-such-path"])
def test_validate_json_reports_errors_before_reading_as_json(args: list[str], tmp_path: Path) -> None:
    """Errors found before any table is read (a bad option, no such path) are JSON too under --json."""
    data = tmp_path / ("data" if args else "nowhere")
    if args:
        data.mkdir()
    result = cli("validate", str(data), "--json", *args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problems"] == []
    assert report["error"] and report["fix"]


@pytest.mark.parametrize("count, message, shown", [
    (2, "2 date(s) are after the as-of date 2024-01-31", False),
    (1, "dates after 2021", True),  # the 1 inside a year is not the count
    (1, "12 rows are odd", True),
    (1234, "1,234 values", False),
])
def test_a_problem_states_its_row_count_once(count: int, message: str, shown: bool) -> None:
    from clvtier.errors import Problem

    text = Problem("warning", "transactions", message, "Fix it.", count=count).describe()
    assert (f"({count:,} row" in text) is shown


@pytest.mark.parametrize("with_customers", [False, True], ids=["alone", "next-to-a-table"])
def test_a_spreadsheet_in_place_of_a_table_is_named(tmp_path: Path, with_customers: bool) -> None:
    (tmp_path / "transactions.xlsx").write_bytes(b"PK\x03\x04 a workbook")
    if with_customers:
        (tmp_path / "customers.csv").write_text(TINY["customers"])
    result = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "transactions.xlsx is a spreadsheet, which clvtier does not read: save each sheet as CSV UTF-8" \
        in result.output


@pytest.mark.parametrize("args", [[], ["--json"]], ids=["table", "json"])
def test_a_reader_that_stops_reading_ends_the_command_quietly(args: list[str], tiny_dir: Path) -> None:
    """`clvtier validate DATA | head`: no internal error when the reader has gone, and exit code 141."""
    read, write = os.pipe()
    os.close(read)  # gone before the first line
    try:
        proc = subprocess.run([sys.executable, "-m", "clvtier.cli", "validate", str(tiny_dir), "--as-of", AS_OF,
                               *args], stdout=write, stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    finally:
        os.close(write)
    assert proc.returncode == EXIT_BROKEN_PIPE, proc.stderr
    for noise in ("Internal error", "Traceback", "Exception ignored", "BrokenPipe"):
        assert noise not in proc.stderr
