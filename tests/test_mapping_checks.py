"""Mapping files, column names and discovery: what a mapping names must exist, an explicit entry
comes first, two columns for one contract column are refused in every format, and the files and
tables that discovery passes over are named."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import Result
from conftest import TINY, TINY_AS_OF, write_ecomx
from typer.testing import CliRunner

from clvtier.cli import app
from clvtier.errors import EXIT_BAD_INPUT, DataError, InputError, Problem
from clvtier.ingest import discover, read_mapping
from clvtier.validate import load

AS_OF = TINY_AS_OF.isoformat()
TX = TINY["transactions"]
AMOUNTS = [100.0, 50.0, 30.0, 40.0, 60.0, 999.0, 200.0, 10.0, 25.0, 70.0, 80.0, 20.0]


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def tx_frame(**renames: str) -> pd.DataFrame:
    """TINY's transactions as text, with a ``net_amount`` column (half the amount) and ``renames``."""
    frame = pd.read_csv(io.StringIO(TX), dtype=str)
    frame["net_amount"] = [f"{a / 2}" for a in AMOUNTS]
    return frame.rename(columns=renames)


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` as CSV, Parquet or a DuckDB table named ``orders``, by the suffix of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".duckdb":
        with duckdb.connect(str(path)) as con:
            con.register("frame", frame)
            con.execute("CREATE TABLE orders AS SELECT * FROM frame")
    else:
        frame.to_csv(path, index=False)
    return path


def mapping(root: Path, data: str, columns: str = "", extra: str = "") -> Path:
    """A mapping file of the transactions table in ``root``."""
    table = '\ntable = "orders"' if data.endswith(".duckdb") else ""
    text = f'[transactions]\npath = "{data}"{table}\n{extra}'
    if columns:
        text += f"[transactions.columns]\n{columns}\n"
    (root / "shop.toml").write_text(text)
    return root / "shop.toml"


def only_error(exc: DataError) -> Problem:
    errors = [p for p in exc.problems if p.severity == "error"]
    assert len(errors) == 1, [p.describe() for p in errors]
    return errors[0]


def refused(source: Path) -> Problem:
    with pytest.raises(DataError) as info:
        load(source, as_of=TINY_AS_OF)
    return only_error(info.value)


def amounts(source: Path) -> list[float]:
    ds = load(source, as_of=TINY_AS_OF)
    frame = ds.con.execute(ds.tables["transactions"])
    return frame.sort_values("transaction_id", key=lambda s: s.astype(int))["transaction_amount"].tolist()


# -- a mapped column must exist -------------------------------------------------------------------
MISSING = {
    "required-typo": ("orders.csv", {}, 'transaction_amount = "net_amout"', "transaction_amount", "net_amout",
                      'transaction_amount = "net_amount"'),
    "optional-typo": ("orders.csv", {"product_category": "Category"}, 'product_category = "Categry"',
                      "product_category", "Categry", 'product_category = "Category"'),
    "normalised-spelling": ("orders.csv", {"customer_id": "Client"}, 'customer_id = "client"', "customer_id",
                            "client", 'customer_id = "Client"'),
    "parquet": ("orders.parquet", {}, 'transaction_amount = "net_amout"', "transaction_amount", "net_amout",
                'transaction_amount = "net_amount"'),
    "duckdb": ("shop.duckdb", {}, 'transaction_amount = "net_amout"', "transaction_amount", "net_amout",
               'transaction_amount = "net_amount"'),
}


@pytest.mark.parametrize(("data", "renames", "entry", "column", "value", "suggestion"), MISSING.values(),
                         ids=MISSING.keys())
def test_a_mapped_column_the_file_lacks_is_refused(
    data: str, renames: dict[str, str], entry: str, column: str, value: str, suggestion: str, tmp_path: Path
) -> None:
    """Not ignored: the file's own column of that name (or none) would be read without a word."""
    write_table(tx_frame(**renames), tmp_path / data)
    shop = mapping(tmp_path, data, entry)
    result = cli("validate", str(shop), "--json", "--as-of", AS_OF)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    [problem] = json.loads(result.stdout)["problems"]
    assert problem["file"] == str(tmp_path / data)
    assert problem["column"] == column
    assert problem["message"].startswith(
        f"{shop} maps {column} to '{value}' in [transactions.columns], but the file has no such column "
        "(its columns: 'transaction_id', "
    )
    assert "'net_amount')" in problem["message"]
    assert problem["fix"] == (
        f"In [transactions.columns], write {suggestion} (the column name as the file writes it), "
        "or remove the entry if the file has no such column."
    )


def test_every_missing_mapped_column_is_named_at_once(tmp_path: Path) -> None:
    write_table(tx_frame(), tmp_path / "orders.csv")
    shop = mapping(tmp_path, "orders.csv", 'transaction_amount = "net_amout"\nproduct_category = "zzz"')
    problem = refused(shop)
    assert problem.column == "transaction_amount, product_category"
    assert problem.message.startswith(
        f"{shop} maps transaction_amount to 'net_amout' and product_category to 'zzz' in [transactions.columns], "
        "but the file has no such columns"
    )
    assert problem.fix == (
        'In [transactions.columns], write transaction_amount = "net_amount" and product_category = one of the '
        "file's columns (column names as the file writes them), or remove an entry if the file has no such column."
    )


def test_a_mapped_column_of_a_headerless_file_must_be_one_of_its_names(tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_text("1 2023-01-10 100.0\n2 2023-02-10 5.0\n")
    shop = mapping(tmp_path, "log.txt", 'transaction_amount = "amount"',
                   'delimiter = "whitespace"\nheader = false\n'
                   'names = ["customer_id", "transaction_date", "value"]\n')
    problem = refused(shop)
    assert "maps transaction_amount to 'amount'" in problem.message
    assert "(its columns: 'customer_id', 'transaction_date', 'value')" in problem.message


def test_two_contract_columns_mapped_to_one_file_column_are_refused(tmp_path: Path) -> None:
    write_table(tx_frame(customer_id="Client"), tmp_path / "orders.csv")
    shop = mapping(tmp_path, "orders.csv", 'customer_id = "Client"\ntransaction_id = "Client"')
    with pytest.raises(InputError) as info:
        load(shop, as_of=TINY_AS_OF)
    assert info.value.message == (
        f"{shop}: section [transactions.columns] maps customer_id and transaction_id to the same column 'Client'."
    )
    assert info.value.fix == "Map each column of the file to one contract column."


# -- an explicit entry comes first ----------------------------------------------------------------
@pytest.mark.parametrize("data", ["orders.csv", "orders.parquet", "shop.duckdb"])
def test_an_explicit_entry_comes_before_a_column_of_the_contract_name(data: str, tmp_path: Path) -> None:
    """The file has transaction_amount (gross) and net_amount; the mapping picks net_amount."""
    write_table(tx_frame(), tmp_path / data)
    shop = mapping(tmp_path, data, 'transaction_amount = "net_amount"')
    assert amounts(shop) == [a / 2 for a in AMOUNTS]


@pytest.mark.parametrize("data", ["orders.csv", "orders.parquet"])
def test_an_explicit_entry_comes_before_a_column_of_a_normalised_name(data: str, tmp_path: Path) -> None:
    write_table(tx_frame(transaction_amount="Transaction Amount"), tmp_path / data)
    shop = mapping(tmp_path, data, 'transaction_amount = "net_amount"')
    assert amounts(shop) == [a / 2 for a in AMOUNTS]


TWO_COLUMNS = {
    "parquet-normalised": ("transactions.parquet", ("Transaction Amount", "TRANSACTION-AMOUNT")),
    "parquet-exact-and-normalised": ("transactions.parquet", ("transaction_amount", "Transaction Amount")),
    "parquet-case-only": ("transactions.parquet", ("transaction_amount", "TRANSACTION_AMOUNT")),
    "duckdb": ("shop.duckdb", ("Transaction Amount", "transaction_amount")),
}


@pytest.mark.parametrize(("data", "names"), TWO_COLUMNS.values(), ids=TWO_COLUMNS.keys())
def test_two_columns_for_one_contract_column_are_refused(data: str, names: tuple[str, str], tmp_path: Path) -> None:
    """As in a CSV header: neither is picked silently (the last one used to win)."""
    frame = tx_frame().drop(columns="net_amount").rename(columns={"transaction_amount": names[0]})
    frame.insert(len(frame.columns), names[1], [f"{a * 100}" for a in AMOUNTS])
    path = write_table(frame, tmp_path / "data" / data)
    source = mapping(tmp_path, f"data/{data}") if data.endswith(".duckdb") else path.parent
    problem = refused(source)
    assert (problem.code, problem.column) == ("duplicate_column", "transaction_amount")
    assert problem.message == f"the table has 2 columns that name transaction_amount ('{names[0]}', '{names[1]}')"
    assert problem.fix.startswith("Rename or remove the duplicate columns")


def test_columns_outside_the_contract_are_listed_as_the_file_names_them(tmp_path: Path) -> None:
    write_table(tx_frame(customer_id="Client", transaction_amount="Total"), tmp_path / "transactions.csv")
    problem = refused(tmp_path)
    assert problem.code == "missing_column"
    assert problem.message.startswith(
        "missing required column(s) ['customer_id', 'transaction_amount']; found ['transaction_id', 'Client', "
        "'transaction_date', 'Total', 'product_category', 'net_amount']"
    )


# -- mapping files --------------------------------------------------------------------------------
def test_a_mapping_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    write_table(tx_frame(), tmp_path / "orders.csv")
    (tmp_path / "shop.toml").write_bytes(b'\xef\xbb\xbf[transactions]\r\npath = "orders.csv"\r\n')
    assert amounts(tmp_path / "shop.toml") == AMOUNTS


@pytest.mark.parametrize("delimiter", ['";;"', "'\\t'"], ids=["two-characters", "backslash-t"])
def test_a_delimiter_of_other_than_one_character_is_refused(delimiter: str, tmp_path: Path) -> None:
    write_table(tx_frame(), tmp_path / "orders.csv")
    shop = mapping(tmp_path, "orders.csv", extra=f"delimiter = {delimiter}\n")
    result = cli("validate", str(shop), "--json")
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    report = json.loads(result.stdout)
    assert report["error"].startswith(f"{shop}: section [transactions] has delimiter = ")
    assert report["error"].endswith(", which is not one character.")
    assert report["fix"] == (
        'Write delimiter as one character in double quotes, such as ";", "\\t" (a tab) or "|", '
        'or as "whitespace" for runs of blanks.'
    )


def test_an_empty_mapping_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "shop.toml").write_text("# nothing yet\n")
    with pytest.raises(InputError) as info:
        load(tmp_path / "shop.toml", as_of=TINY_AS_OF)
    assert info.value.message == f"{tmp_path / 'shop.toml'}: the mapping file describes no table."
    assert info.value.fix == 'Add a [transactions] section with path = "FILE" (docs/mapping.md).'


NAMES = {
    "csv-too-many": ("orders.csv", ",", 6, "remove 1 name from names"),
    "csv-too-few": ("orders.csv", ",", 4, "add 1 name to names"),
    "whitespace-too-many": ("orders.txt", "whitespace", 7, "remove 2 names from names"),
    "whitespace-too-few": ("orders.txt", "whitespace", 3, "add 2 names to names"),
}


@pytest.mark.parametrize(("data", "delimiter", "count", "fix"), NAMES.values(), ids=NAMES.keys())
def test_names_must_give_one_name_per_field(data: str, delimiter: str, count: int, fix: str, tmp_path: Path) -> None:
    """Too many names was reported as a CSV sniffing error; too few dropped (or shifted) a column silently."""
    frame = tx_frame().drop(columns="net_amount")
    sep = " " if delimiter == "whitespace" else ","
    frame["product_category"] = frame["product_category"].str.replace(" ", "_")
    (tmp_path / data).write_text("\n" + frame.to_csv(index=False, header=False, sep=sep))
    names = ["transaction_id", "customer_id", "transaction_date", "transaction_amount", "product_category",
             "store", "till"][:count]
    shop = mapping(tmp_path, data, extra=f'delimiter = "{delimiter}"\nheader = false\nnames = {json.dumps(names)}\n')
    problem = refused(shop)
    assert problem.code == "names"
    assert problem.message == f"names in {shop} lists {count} columns, but line 2 of the file has 5 fields"
    assert problem.fix.startswith(f"Give one name per field, in file order: {fix} in [transactions]")


# -- discovery ------------------------------------------------------------------------------------
def test_file_names_are_matched_whatever_their_case(tmp_path: Path) -> None:
    write_ecomx(tmp_path, {"transactions": TX, "customers": TINY["customers"]})
    (tmp_path / "transactions_final.csv").rename(tmp_path / "Transactions.CSV")
    (tmp_path / "customers_final.csv").rename(tmp_path / "CUSTOMERS_FINAL.csv")
    found = discover(tmp_path)
    assert {name: src.path.name for name, src in found.items()} == {
        "transactions": "Transactions.CSV", "customers": "CUSTOMERS_FINAL.csv",
    }


def test_a_tsv_file_is_tab_separated_whatever_its_case(tmp_path: Path) -> None:
    (tmp_path / "transactions.TSV").write_text(TX.replace(",", "\t"))
    assert amounts(tmp_path) == AMOUNTS


def test_two_files_whose_names_differ_in_case_only_are_refused(tmp_path: Path) -> None:
    (tmp_path / "transactions.csv").write_text(TX)
    (tmp_path / "Transactions.csv").write_text(TX)
    if len(list(tmp_path.iterdir())) < 2:
        pytest.skip("the file system does not tell names apart by case")
    with pytest.raises(InputError) as info:
        discover(tmp_path)
    assert "more than one file for the transactions table (Transactions.csv, transactions.csv)" in info.value.message


def test_an_unreadable_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the operating system refuses it to another user (root reads it whatever its mode)."""
    def refuse(self: Path) -> Iterator[Path]:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(InputError) as info:
        discover(tmp_path)
    assert info.value.message == f"{tmp_path}: cannot read the directory (Permission denied)."
    assert info.value.fix == "Check the directory's permissions (it must be readable by you)."


def test_files_passed_over_are_named_when_no_table_is_found(tmp_path: Path) -> None:
    for name in ("orders.csv", "transactions_2024.csv", "notes.md"):
        (tmp_path / name).write_text(TX)
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute("CREATE TABLE transactions AS SELECT 1 AS x")
    result = cli("validate", str(tmp_path), "--json")
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    [problem] = json.loads(result.stdout)["problems"]
    assert problem["code"] == "no_tables"
    assert problem["message"] == (
        f"no data tables found in {tmp_path}; shop.duckdb is a DuckDB database: pass it instead of the directory; "
        "orders.csv and transactions_2024.csv are not named after a table: rename each to its table's name "
        "(transactions.csv, customers.csv, engagements.csv or marketing.csv) or map it in a mapping file"
    )


def _database(path: Path, *tables: str) -> Path:
    """A DuckDB file with ``tables`` (schema-qualified or not) holding TINY's transactions or customers."""
    with duckdb.connect(str(path)) as con:
        for table in tables:
            schema, _, name = table.rpartition(".")
            if schema:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            frame = pd.read_csv(io.StringIO(TINY["customers" if "customer" in name.lower() else "transactions"]))
            con.register("frame", frame)
            con.execute(f'CREATE TABLE {schema or "main"}."{name}" AS SELECT * FROM frame')
            con.unregister("frame")
    return path


DATABASES: dict[str, Callable[[Path], Path]] = {
    "another-case": lambda root: _database(root / "shop.duckdb", "Transactions", "CUSTOMERS"),
    "another-schema": lambda root: _database(root / "shop.duckdb", "sales.transactions", "crm.customers"),
}


@pytest.mark.parametrize("build", DATABASES.values(), ids=DATABASES.keys())
def test_database_tables_are_found_whatever_their_case_and_schema(build: Callable[[Path], Path],
                                                                  tmp_path: Path) -> None:
    ds = load(build(tmp_path), as_of=TINY_AS_OF)
    assert {name: s["rows"] for name, s in ds.summary.items()} == {"transactions": 12, "customers": 4}


def test_a_mapping_names_a_table_of_another_schema(tmp_path: Path) -> None:
    _database(tmp_path / "shop.duckdb", "sales.orders")
    (tmp_path / "shop.toml").write_text('[transactions]\npath = "shop.duckdb"\ntable = "sales.orders"\n')
    assert amounts(tmp_path / "shop.toml") == AMOUNTS


def test_one_table_in_two_schemas_is_refused(tmp_path: Path) -> None:
    _database(tmp_path / "shop.duckdb", "transactions", "sales.transactions")
    with pytest.raises(InputError) as info:
        discover(tmp_path / "shop.duckdb")
    assert "more than one table or view for the transactions table (sales.transactions, transactions)" in (
        info.value.message)
    assert 'table = "sales.transactions"' in info.value.fix


def test_a_database_without_a_table_of_the_contract_names_its_tables(tmp_path: Path) -> None:
    path = _database(tmp_path / "shop.duckdb", "orders", "sales.clients")
    problem = refused(path)
    assert problem.code == "no_tables"
    assert problem.message == f"no data tables found in {path}; its tables are orders, sales.clients"
    assert problem.fix == (
        "Name the tables transactions, customers, engagements and marketing (or transactions_final, ...), "
        'or map each in a mapping file with path = "shop.duckdb" and table = "orders" (docs/mapping.md).'
    )


def test_a_mapped_table_the_database_lacks_is_refused_with_its_tables(tmp_path: Path) -> None:
    _database(tmp_path / "shop.duckdb", "sales.orders")
    (tmp_path / "shop.toml").write_text('[transactions]\npath = "shop.duckdb"\ntable = "orders"\n')
    problem = refused(tmp_path / "shop.toml")
    assert problem.message == "the database has no table 'orders' (its tables: sales.orders)"
    assert problem.fix == (
        'Set table = "sales.orders" (or another of its tables) in the [transactions] section of the mapping file, '
        "or create a table named transactions in the database."
    )


def test_a_tsv_file_in_a_mapping_is_tab_separated_as_when_passed_alone(tmp_path: Path) -> None:
    (tmp_path / "orders.tsv").write_text("customer_id\ttransaction_date\ttransaction_amount\n1\t2023-01-01\t10\n")
    (tmp_path / "shop.toml").write_text('[transactions]\npath = "orders.tsv"\n')
    assert read_mapping(tmp_path / "shop.toml")["transactions"].delimiter == "\t"
    assert load(tmp_path / "shop.toml", as_of=dt.date(2024, 1, 1)).summary["transactions"]["rows"] == 1


def test_every_mistake_of_a_mapping_file_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "shop.toml").write_text(
        '[orders]\npath = "o.csv"\n\n[transactions]\npath = "t.csv"\nsep = ";"\ndate_format = "%d-%m-%Y"\n'
        '[transactions.columns]\ntransaction_day = "Day"\n')
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "shop.toml")])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    for part in ("has 4 problems", "unknown table section(s) ['orders']", "unknown key(s) ['sep']",
                 "date_format '%d-%m-%Y', which is not supported", "unknown contract column(s) ['transaction_day']"):
        assert part in result.output, part
