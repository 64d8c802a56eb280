"""Write the corpus of malformed inputs into this directory, one sub-directory per case.

Run it again after changing a case (``python tests/data/bad/make_corpus.py``); the
output is deterministic and ``tests/test_bad_inputs.py`` checks that the committed
files are what this script writes. The expected behaviour of every case is in
``cases.toml`` next to this script, and in ``docs/bad-inputs.md``.

Every case is built from one small, valid table of transactions (``TX``: three
customers, four purchases, no warning as of 2024-06-30), changed in one way.
"""

from __future__ import annotations

import gzip
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent

HEADER = "transaction_id,customer_id,transaction_date,transaction_amount,product_category"
ROWS = [
    "1,1,2023-01-10,100.0,Electronics",
    "2,1,2023-03-01,50.5,Clothing",
    "3,2,2023-07-04,200.0,Clothing",
    "4,3,2023-12-31,10.0,Home Goods",
]
TX = HEADER + "\n" + "\n".join(ROWS) + "\n"

CUSTOMERS = (
    "customer_id,join_date,last_purchase_date,age,gender,location\n"
    "1,2023-01-01,2023-03-01,30,Female,Paris\n"
    "2,2023-06-01,2023-07-04,41,Male,Lyon\n"
    "3,2023-11-01,2023-12-31,45,Female,Nice\n"
)

MARKETING = (
    "campaign_id,customer_id,response,promotion_type,campaign_date\n"
    "1,1,yes,Discount,2023-05-01\n"
    "2,2,N,Free Shipping,2023-08-01\n"
    "3,3,TRUE,Discount,2023-10-01\n"
    "4,1,No,Discount,2023-11-01\n"
)

Files = dict[str, bytes]


def _epoch(timestamp: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(timestamp).timestamp())


def tx(*replacements: tuple[str, str], header: str = HEADER, rows: list[str] | None = None) -> str:
    """``TX`` with text replaced (each replacement applied once, in order)."""
    text = header + "\n" + "\n".join(ROWS if rows is None else rows) + "\n"
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def text(**files: str) -> Files:
    return {name: content.encode("utf-8") for name, content in files.items()}


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def mapping(section: str) -> bytes:
    return ("[transactions]\n" + section.strip() + "\n").encode("utf-8")


def parquet(**columns: object) -> bytes:
    """A one-table Parquet file with exactly the given Arrow columns."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)  # type: ignore[arg-type]
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="NONE")
    return sink.getvalue()


def tx_parquet(**overrides: object) -> Files:
    import pyarrow as pa

    columns: dict[str, object] = {
        "transaction_id": pa.array(["1", "2", "3", "4"]),
        "customer_id": pa.array(["1", "1", "2", "3"]),
        "transaction_date": pa.array(["2023-01-10", "2023-03-01", "2023-07-04", "2023-12-31"]),
        "transaction_amount": pa.array([100.0, 50.5, 200.0, 10.0]),
        "product_category": pa.array(["Electronics", "Clothing", "Clothing", "Home Goods"]),
    }
    columns.update(overrides)
    return {"transactions.parquet": parquet(**columns)}


def duckdb_without_transactions() -> Files:
    """A small DuckDB database (16 kB blocks) holding only a customers table."""
    import tempfile

    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shop.duckdb"
        with duckdb.connect() as con:
            con.execute(f"ATTACH '{path}' AS shop (BLOCK_SIZE 16384)")
            con.execute("CREATE TABLE shop.customers (customer_id VARCHAR, join_date DATE)")
            con.execute("INSERT INTO shop.customers VALUES ('1', DATE '2023-01-01'), ('2', DATE '2023-06-01')")
            con.execute("DETACH shop")
        return {"shop.duckdb": path.read_bytes()}


def _pa() -> object:
    import pyarrow as pa

    return pa


def cases() -> dict[str, Callable[[], Files]]:
    """Case name -> a function returning the case's files (name -> bytes)."""
    pa = _pa()
    long_text = "x" * 100_000
    garbage = random.Random(8).randbytes(2048)
    return {
        # -- encodings and bytes ---------------------------------------------------------
        "utf8-bom": lambda: {"transactions.csv": b"\xef\xbb\xbf" + TX.encode()},
        "latin1": lambda: {"transactions.csv": tx(("Electronics", "Électronique")).encode("latin-1")},
        "windows-1252": lambda: {"transactions.csv": tx(("Home Goods", "Home Goods \u20ac")).encode("cp1252")},
        "utf16-le-bom": lambda: {"transactions.csv": TX.encode("utf-16")},
        "utf16-be-no-bom": lambda: {"transactions.csv": TX.encode("utf-16-be")},
        "binary-garbage": lambda: {"transactions.csv": garbage},
        "empty-file": lambda: {"transactions.csv": b""},
        "blank-lines-only": lambda: {"transactions.csv": b"\n   \n\n"},
        "header-only": lambda: text(**{"transactions.csv": HEADER + "\n"}),
        "gzip-csv": lambda: {"transactions.csv.gz": gz(TX.encode())},
        "corrupt-gzip": lambda: {"transactions.csv.gz": b"\x1f\x8b\x08\x00" + garbage[:300]},
        "truncated-gzip": lambda: {"transactions.csv.gz": gz((TX * 3).encode())[:-25]},
        "gzip-named-csv": lambda: {"transactions.csv": gz(TX.encode())},
        "plain-text-named-gz": lambda: text(**{"transactions.csv.gz": TX}),
        "line-over-2mb": lambda: {"transactions.csv.gz": gz(tx(("Home Goods", "x" * 3_000_000)).encode())},
        # -- delimiters, quoting, line structure ---------------------------------------------
        "semicolon-delimiter": lambda: text(**{"transactions.csv": TX.replace(",", ";")}),
        "semicolon-decimal-comma": lambda: text(**{"transactions.csv": TX.replace(",", ";").replace(
            "50.5", "50,5")}),
        "tab-delimiter": lambda: text(**{"transactions.csv": TX.replace(",", "\t")}),
        "pipe-delimiter": lambda: text(**{"transactions.csv": TX.replace(",", "|")}),
        "semicolon-with-mapping": lambda: {
            **text(**{"export.csv": TX.replace(",", ";")}),
            "mapping.toml": mapping('path = "export.csv"\ndelimiter = ";"'),
        },
        "tab-with-mapping": lambda: {
            **text(**{"export.txt": TX.replace(",", "\t")}),
            "mapping.toml": mapping('path = "export.txt"\ndelimiter = "\\t"'),
        },
        "tsv-extension": lambda: text(**{"transactions.tsv": TX.replace(",", "\t")}),
        "unclosed-quote": lambda: text(**{"transactions.csv": tx(("Clothing", '"Clothing'))}),
        "stray-quote": lambda: text(**{"transactions.csv": tx(("Home Goods", 'Home "Goods'))}),
        "ragged-short-row": lambda: text(**{"transactions.csv": tx(("2,1,2023-03-01,50.5,Clothing",
                                                                     "2,1,2023-03-01"))}),
        "ragged-long-row": lambda: text(**{"transactions.csv": tx(("3,2,2023-07-04,200.0,Clothing",
                                                                    "3,2,2023-07-04,200.0,Clothing,extra"))}),
        "trailing-delimiter": lambda: text(**{"transactions.csv": "\n".join(
            line + "," if line else line for line in TX.split("\n"))}),
        "crlf-line-endings": lambda: text(**{"transactions.csv": TX.replace("\n", "\r\n")}),
        "quoted-commas-and-newlines": lambda: text(**{"transactions.csv": tx(
            ("Home Goods", '"Home, Garden"'), ("Electronics", '"Electronics\nand more"'))}),
        "no-header": lambda: text(**{"transactions.csv": "\n".join(ROWS) + "\n"}),
        # -- headers -----------------------------------------------------------------------
        "header-case-space-variants": lambda: text(**{"transactions.csv": tx(header=(
            "Transaction_ID, Customer ID ,TRANSACTION-DATE,Transaction Amount,product_category "))}),
        "duplicate-headers": lambda: text(**{"transactions.csv": tx(
            ("product_category", "transaction_amount"), header=HEADER)}),
        "duplicate-headers-after-normalising": lambda: text(**{"transactions.csv": tx(
            ("product_category", "Customer ID"))}),
        "missing-required-column": lambda: text(**{"transactions.csv": tx(("transaction_amount", "amount"))}),
        "extra-columns": lambda: text(**{"transactions.csv": tx(
            (HEADER, HEADER + ",store,notes"), *((r, r + ",Paris,") for r in ROWS))}),
        # -- keys and ids ------------------------------------------------------------------
        "empty-key-cells": lambda: text(**{"transactions.csv": tx(("3,2,2023", "3,,2023"))}),
        "whitespace-only-key": lambda: text(**{"transactions.csv": tx(("3,2,2023", "3,   ,2023"))}),
        "duplicate-transaction-ids": lambda: text(**{"transactions.csv": tx(("4,3,2023", "2,3,2023"))}),
        "duplicate-customers": lambda: text(**{"transactions.csv": TX, "customers.csv": CUSTOMERS
                                                + "2,2023-06-02,,50,Male,Lyon\n"}),
        "orphan-ids": lambda: text(**{"transactions.csv": tx(("4,3,2023", "4,9,2023")), "customers.csv": CUSTOMERS}),
        "leading-zero-ids": lambda: text(**{"transactions.csv": tx(("3,2,2023", "3,00001,2023"))}),
        "padded-ids": lambda: text(**{"transactions.csv": tx(("3,2,2023", "3,  1 ,2023"))}),
        "formula-strings": lambda: text(**{
            "transactions.csv": tx(("4,3,2023", "4,=1+1,2023"),
                                   ("Home Goods", '"=HYPERLINK(""http://example.com"",""click"")"')),
            "customers.csv": CUSTOMERS.replace("3,2023-11-01", "=1+1,2023-11-01").replace("Nice", "@SUM(A1:A9)"),
        }),
        "long-strings": lambda: text(**{
            "transactions.csv": tx(("Home Goods", long_text)),
            "customers.csv": CUSTOMERS.replace("Nice", long_text),
        }),
        "missing-age-gender": lambda: text(**{"transactions.csv": TX, "customers.csv": CUSTOMERS.replace(
            ",30,Female,", ",,Female,").replace(",41,Male,", ",,,")}),
        "response-variants": lambda: text(**{"transactions.csv": TX, "marketing.csv": MARKETING}),
        # -- numbers -----------------------------------------------------------------------
        "thousands-separator": lambda: text(**{"transactions.csv": tx(("200.0", '"1,234.50"'))}),
        "currency-symbol": lambda: text(**{"transactions.csv": tx(("200.0", "$12"))}),
        "decimal-comma": lambda: text(**{"transactions.csv": tx(("50.5", '"50,5"'))}),
        "scientific-notation": lambda: text(**{"transactions.csv": tx(("200.0", "12e3"))}),
        "nan-amount": lambda: text(**{"transactions.csv": tx(("200.0", "NaN"))}),
        "inf-amount": lambda: text(**{"transactions.csv": tx(("200.0", "inf"), ("10.0", "-Infinity"))}),
        "overflowing-amount": lambda: text(**{"transactions.csv": tx(("200.0", "1e309"))}),
        "placeholder-strings": lambda: text(**{"transactions.csv": tx(("100.0", "N/A"), ("200.0", "NULL"))}),
        "negative-amounts": lambda: text(**{"transactions.csv": tx(("200.0", "-20.0"))}),
        "zero-amounts": lambda: text(**{"transactions.csv": tx(("200.0", "0"))}),
        # -- dates -------------------------------------------------------------------------
        "dates-dd-mm-yyyy": lambda: text(**{"transactions.csv": tx(
            ("2023-01-10", "10/01/2023"), ("2023-03-01", "01/03/2023"), ("2023-07-04", "04/07/2023"),
            ("2023-12-31", "31/12/2023"))}),
        "dates-mm-dd-yyyy": lambda: text(**{"transactions.csv": tx(
            ("2023-01-10", "01/10/2023"), ("2023-03-01", "03/01/2023"), ("2023-07-04", "07/04/2023"),
            ("2023-12-31", "12/31/2023"))}),
        "dates-dd-mm-yyyy-with-mapping": lambda: {
            **text(**{"export.csv": tx(("2023-01-10", "10/01/2023"), ("2023-03-01", "1/3/2023"),
                                       ("2023-07-04", "04/07/2023"), ("2023-12-31", "31/12/2023"))}),
            "mapping.toml": mapping('path = "export.csv"\ndate_format = "%d/%m/%Y"'),
        },
        "dates-mm-dd-yyyy-with-mapping": lambda: {
            **text(**{"export.csv": tx(("2023-01-10", "01/10/2023"), ("2023-03-01", "3/1/2023"),
                                       ("2023-07-04", "07/04/2023"), ("2023-12-31", "12/31/2023"))}),
            "mapping.toml": mapping('path = "export.csv"\ndate_format = "%m/%d/%Y"'),
        },
        "timestamps-with-time-zone": lambda: text(**{"transactions.csv": tx(
            ("2023-01-10", "2023-01-10T23:30:00-05:00"), ("2023-03-01", "2023-03-01 08:15:00+01:00"),
            ("2023-07-04", "2023-07-04T00:00:00Z"))}),
        "excel-serial-dates": lambda: text(**{"transactions.csv": tx(
            ("2023-01-10", "44936"), ("2023-03-01", "44986"))}),
        "impossible-dates": lambda: text(**{"transactions.csv": tx(("2023-03-01", "2023-02-30"))}),
        "future-dates": lambda: text(**{"transactions.csv": tx(("2023-12-31", "2031-12-31"))}),
        # -- Parquet with the wrong column types ---------------------------------------------
        "parquet-amount-junk-strings": lambda: tx_parquet(
            transaction_amount=pa.array(["100.0", "abc", "200", "12 EUR"])),  # type: ignore[attr-defined]
        "parquet-amount-numeric-strings": lambda: tx_parquet(
            transaction_amount=pa.array(["100.0", "50.5", " 200 ", "1e1"])),  # type: ignore[attr-defined]
        "parquet-date-as-int": lambda: tx_parquet(
            transaction_date=pa.array([20230110, 20230301, 20230704, 20231231])),  # type: ignore[attr-defined]
        "parquet-timestamp-tz": lambda: tx_parquet(transaction_date=pa.array(  # type: ignore[attr-defined]
            [_epoch("2023-01-10T10:00:00-05:00"), _epoch("2023-03-01T12:00:00-05:00"),
             _epoch("2023-07-04T12:00:00-04:00"), _epoch("2023-12-31T22:00:00-05:00")],
            pa.timestamp("s", tz="America/New_York"))),  # type: ignore[attr-defined]
        "parquet-nan-amount": lambda: tx_parquet(
            transaction_amount=pa.array([100.0, float("nan"), 200.0, 10.0])),  # type: ignore[attr-defined]
        "parquet-corrupt": lambda: {"transactions.parquet": b"PAR1" + garbage[:500] + b"PAR1"},
        # -- databases, directories, files ---------------------------------------------------
        "duckdb-missing-transactions": duckdb_without_transactions,
        "duckdb-not-a-database": lambda: {"shop.duckdb": garbage},
        "empty-directory": lambda: {".gitkeep": b""},
        "no-read-permission": lambda: text(**{"transactions.csv": TX}),
        "mapping-missing-file": lambda: {"mapping.toml": mapping('path = "missing.csv"')},
        "mapping-not-toml": lambda: {"mapping.toml": b"[transactions\npath = export.csv\n"},
    }


def build(root: Path = HERE) -> list[str]:
    """Write every case under ``root`` (replacing what was there); return the case names."""
    made = cases()
    for name, make in made.items():
        case_dir = root / name
        if case_dir.exists():
            shutil.rmtree(case_dir)
        case_dir.mkdir(parents=True)
        for file, data in make().items():
            (case_dir / file).write_bytes(data)
    return list(made)


if __name__ == "__main__":
    names = build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"wrote {len(names)} cases")
