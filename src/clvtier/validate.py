"""Validate: check raw tables against the contract and type them, reporting every problem at once.

Handling of what is accepted with a warning (also in the README):

* missing age / gender: kept as missing; the model imputes them.
* transactions or offers whose customer is not in the customers table: kept;
  the customer is known from its transactions.
* negative amounts (returns) are netted into spend; zero amounts are kept.
* response spellings yes/no/y/n/true/false/1/0 in any case, and boolean or 1/0 integer
  columns (Parquet, DuckDB), are normalised to Yes / No.
* ids stored as floats (pandas writes an integer column with missing values as float64)
  are read as the integer they hold: 1.0 is the id "1"; 1.5 is an error.
* dates after the as-of date are kept but never used: features only read
  events before the cutoff, which is at most the as-of date.
* customers without transactions get zero transaction features.
* column names that differ only in case, spaces or dashes are mapped to the contract.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir

from clvtier.errors import DataError, Problem
from clvtier.features import AMOUNT_LIMIT
from clvtier.ingest import (
    RawTables,
    TableSource,
    csv_parse_error,
    load_tables,
    open_text,
    passed_over_hint,
    spreadsheet_hint,
)
from clvtier.schema import DATE_PATTERNS as _DATE_PATTERNS
from clvtier.schema import RESPONSE_NO, RESPONSE_YES, TABLES, Column

_FIRST_ROWS = 5
#: How exports write a missing id as text; an id spelled so is no customer.
ID_PLACEHOLDERS = ("NULL", "null", "Null", "\\N", "N/A", "n/a", "#N/A", "NA", "NaN", "nan", "None", "none", "-", "?")
#: Ages outside this range are reported (kept as they are).
AGE_RANGE = (0, 120)
_FIRST_DAY = ibis.literal(dt.date(1, 1, 1))
_LAST_DAY = ibis.literal(dt.date(9999, 12, 31))



@dataclass
class Dataset:
    """Validated, typed tables on a DuckDB connection.

    Attributes
    ----------
    con : ibis backend
        The connection the tables live on.
    tables : dict
        Contract table name -> typed Ibis table.
    sources : dict
        Contract table name -> where it was read from.
    problems : list of Problem
        The warnings found (errors raise instead).
    summary : dict
        Rows, customers and date range per table.
    as_of : date or None
        The date the data describe (the export date); events dated after it are kept
        but never used.
    """

    con: Any
    tables: dict[str, ir.Table]
    sources: dict[str, TableSource]
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    as_of: dt.date | None = None

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def last_date(self) -> dt.date:
        """The last transaction date in the data, and at the latest the as-of date.

        Default cutoffs and horizons end there, so transactions dated after the as-of
        date (an export's typos, pre-booked orders) never reach features or targets.
        """
        last: dt.date = self.summary["transactions"]["last_date"]
        return min(last, self.as_of) if self.as_of else last

    @property
    def first_date(self) -> dt.date:
        return self.summary["transactions"]["first_date"]


def too_large(table: str, count: int, file: str, rows: tuple[int, ...] = (),
              column: str = "transaction_amount") -> Problem:
    """The error for numbers at or beyond :data:`clvtier.features.AMOUNT_LIMIT`.

    Features sum amounts exactly (:data:`clvtier.features.MONEY`), and models cannot take
    counts or ages that large either (scikit-learn refuses what overflows float32).
    """
    if column == "transaction_amount":
        return Problem("error", table, f"{count:,} amount(s) are {AMOUNT_LIMIT:.0e} or more in absolute value",
                       "Check the column's unit (amounts are money, not money times a scale) or drop those rows.",
                       file=file, column=column, count=count, rows=rows, code="amount_too_large")
    return Problem("error", table, f"{count:,} value(s) are {AMOUNT_LIMIT:.0e} or more in absolute value",
                   f"Check the export of {column} (no count or age is that large) or drop those rows.",
                   file=file, column=column, count=count, rows=rows, code="value_too_large")


def load(source: Any, con: Any | None = None, as_of: dt.date | None = None) -> Dataset:
    """Ingest and validate a data source in one call.

    Parameters
    ----------
    source : str, Path or dict
        A path (see :func:`clvtier.ingest.discover`), or a dict of table name -> file
        path or :class:`clvtier.ingest.TableSource`, such as ``{"transactions": "tx.csv"}``.
    con : ibis DuckDB backend, optional
    as_of : date, optional
        Dates after it are reported; today when omitted.

    Raises
    ------
    DataError
        Listing every error found in every table.
    """
    return validate(load_tables(source, con=con), as_of=as_of)


def validate(raw: RawTables, as_of: dt.date | None = None) -> Dataset:
    """Check every table against the contract; type them; report every problem at once.

    Raises
    ------
    DataError
        When any error is found; warnings are attached to it too.
    """
    as_of = as_of or dt.date.today()
    problems = list(raw.problems)
    typed: dict[str, ir.Table] = {}
    summary: dict[str, dict[str, Any]] = {}
    if "transactions" not in raw.sources and not any(p.code == "no_tables" for p in problems):
        found = ", ".join(f"{k} ({v.path.name})" for k, v in raw.sources.items()) or "nothing"
        problems.append(
            Problem(
                "error",
                "transactions",
                f"the required transactions table is missing (found: {found})"
                + spreadsheet_hint(raw.source) + passed_over_hint(raw.source),
                "Add transactions.csv (or transactions_final.csv / .parquet / .csv.gz) "
                "with columns transaction_id, customer_id, transaction_date, "
                "transaction_amount, product_category.",
                code="missing_table",
            )
        )
    for name, table in raw.tables.items():
        checker = _TableCheck(raw.con, name, table, raw.sources[name], as_of)
        result = checker.run()
        problems.extend(checker.problems)
        if result is not None:
            typed[name] = result
            summary[name] = checker.summary
    if not any(p.severity == "error" for p in problems):
        # Materialise first, so the cross-table checks do not parse the text files again.
        typed = _materialise(raw, typed)
        problems.extend(_cross_checks(raw.con, typed, raw.sources))
    if any(p.severity == "error" for p in problems):
        raise DataError(problems)
    return Dataset(raw.con, typed, raw.sources, problems, summary, as_of)


def _materialise(raw: RawTables, typed: dict[str, ir.Table]) -> dict[str, ir.Table]:
    """Parse text files once: later stages query the typed tables many times."""
    out = {}
    for name, table in typed.items():
        if raw.sources[name].format == "csv":
            out[name] = raw.con.create_table(f"typed_{name}", table, temp=True, overwrite=True)
        else:
            out[name] = table
    return out


class _TableCheck:
    def __init__(self, con: Any, name: str, table: ir.Table, src: TableSource, as_of: dt.date):
        self.con = con
        self.name = name
        self.raw = table
        self.src = src
        self.contract = TABLES[name]
        self.as_of = as_of
        self.problems: list[Problem] = []
        self.clean: set[str] = set()
        self.summary: dict[str, Any] = {}
        self._one_line_records: bool | None = None

    def problem(self, severity: str, message: str, fix: str, column: str | None = None,
                count: int = 0, rows: tuple[int, ...] = (), code: str = "") -> None:
        self.problems.append(
            Problem(severity, self.name, message, fix, file=str(self.src.path), column=column,  # type: ignore[arg-type]
                    count=count, rows=rows, code=code)
        )

    def run(self) -> ir.Table | None:
        if not self._check_columns():
            return None
        try:
            stats = self._stats()  # the first query that reads every record
        except Exception as exc:  # duckdb raises several error types for malformed CSV
            error = csv_parse_error(self.src, exc)
            if error is None:
                raise
            self.problem("error", error.message.rstrip("."), error.fix, code="unreadable")
            return None
        # Text columns without a blank value or surrounding whitespace are read as they are
        # by every later query, without the trim.
        self.clean = {c for c in self.raw.columns if stats.get(f"padded_{c}") == 0}
        typed = self._typed()
        n = stats["n_rows"]
        self.summary = {"rows": n, "file": str(self.src.path)}
        if n == 0:
            self.problem(
                "error",
                "the table has a header but no rows",
                "Export the table again with its data, or remove the file if the table is optional.",
                code="empty",
            )
            return None
        for col in self.contract.columns:
            if col.name in self.raw.columns:
                self._check_parse(col, stats, typed)
        self._check_key(stats, typed)
        self._check_specific(stats, typed)
        if self.contract.dated_by:
            self.summary["first_date"] = _to_date(stats.get(f"min_{self.contract.dated_by}"))
            self.summary["last_date"] = _to_date(stats.get(f"max_{self.contract.dated_by}"))
        self.summary["customers"] = int(stats.get("n_customers") or 0)
        return typed

    # -- columns ---------------------------------------------------------
    def _check_columns(self) -> bool:
        present = set(self.raw.columns)
        missing = [c.name for c in self.contract.columns if c.required and c.name not in present]
        if not missing:
            return True
        hint = ""
        fix = ("Rename the columns to the contract names, map them in a mapping file "
               "(docs/mapping.md), or re-export the file comma-separated with a header.")
        if len(self.raw.columns) == 1 and self.src.format == "csv":
            only = self.raw.columns[0]
            for delim, label, toml in ((";", "semicolons", ";"), ("\t", "tabs", "\\t"), ("|", "pipes", "|"),
                                       (",", "commas", ",")):
                if delim in only and delim != self.src.delimiter:
                    hint = f"; the header is one field '{only[:60]}': the file looks separated by {label}"
                    fix = (f'Set delimiter = "{toml}" in the [{self.name}] section of a mapping file '
                           "(docs/mapping.md), or re-export the file comma-separated.")
                    break
        self.problem(
            "error",
            f"missing required column(s) {missing}; found {list(self.raw.columns)[:12]}{hint}",
            fix,
            column=", ".join(missing),
            code="missing_column",
        )
        return False

    # -- typing ------------------------------------------------------------
    def _typed(self) -> ir.Table:
        return self.raw.select(**self._typed_exprs())

    def _typed_exprs(self) -> dict[str, ir.Value]:
        t = self.raw
        cols: dict[str, ir.Value] = {}
        for col in self.contract.columns:
            if col.name in self.clean and col.kind in ("id", "text"):
                cols[col.name] = t[col.name]
                continue
            if col.name not in t.columns:
                if col.name == "transaction_id":
                    cols[col.name] = (ibis.row_number() + 1).cast("string")
                else:
                    cols[col.name] = ibis.null(_ibis_type(col))
                continue
            cols[col.name] = _convert(t[col.name], col, self.src.date_format)
        return cols

    def _stats(self) -> dict[str, Any]:
        """Every count validation needs, in two queries per table (a scan and the distinct counts)."""
        raw = self.raw
        both = raw.select(
            **self._typed_exprs(),
            **{f"raw__{c}": raw[c] for c in raw.columns if c in self.contract.column_names},
        )
        aggs: dict[str, ir.Scalar] = {"n_rows": both.count()}
        for col in self.contract.columns:
            if col.name not in raw.columns:
                continue
            r = both[f"raw__{col.name}"]
            v = both[col.name]
            if _text_is_exact(r, col):  # their text always parses
                aggs[f"null_{col.name}"] = r.isnull().sum()
                continue
            if _never_blank(r):  # typed (Parquet, DuckDB) columns: no text round trip
                present = r.notnull()
            elif col.kind in ("id", "text"):  # their typed value is the stripped text, NULL if blank
                present = v.notnull()
                aggs[f"padded_{col.name}"] = (r.notnull() & _padded(r)).sum()
            else:
                present = r.notnull() & (_as_text(r).strip().length() > 0)
            aggs[f"bad_{col.name}"] = (present & v.isnull()).sum()
            aggs[f"null_{col.name}"] = (~present).sum()
            if col.kind == "date":
                if _never_blank(r):
                    # Typed (Parquet) dates past year 9999 or BC do not fit Python's date:
                    # count them as not parsing rather than fail to read the minimum and maximum.
                    outside = _outside_calendar(v)
                    aggs[f"bad_{col.name}"] = aggs[f"bad_{col.name}"] + outside.sum()
                    v = ibis.ifelse(outside, ibis.null("date"), v)
                aggs[f"min_{col.name}"] = v.min()
                aggs[f"max_{col.name}"] = v.max()
                if col.name != "last_purchase_date":  # never read (recomputed from transactions)
                    aggs[f"future_{col.name}"] = (v > ibis.literal(self.as_of)).sum()
            if col.kind == "number" or col.kind == "count":
                finite = v.notnull() & ~v.isnan() & ~v.isinf()
                aggs[f"nonfinite_{col.name}"] = (v.notnull() & ~finite).sum()
                aggs[f"neg_{col.name}"] = (finite & (v < 0)).sum()
                aggs[f"zero_{col.name}"] = (finite & (v == 0)).sum()
                aggs[f"huge_{col.name}"] = (finite & (v.abs() >= AMOUNT_LIMIT)).sum()
                if col.name == "age":
                    aggs["odd_age"] = (finite & ~v.between(*AGE_RANGE)).sum()
            if col.kind == "id" and not _never_blank(r):  # typed columns have no text placeholders
                aggs[f"placeholder_{col.name}"] = v.isin(ID_PLACEHOLDERS).sum()
            if col.kind == "response":
                # A boolean or 1/0 column is never spelled Yes/No: every value is normalised.
                canon = r.strip().isin(["Yes", "No"]) if r.type().is_string() else ibis.literal(False)
                aggs[f"normalised_{col.name}"] = (v.notnull() & ~canon).sum()
        key = self.contract.key
        if key and key in raw.columns:
            raw_key = both[f"raw__{key}"]
            aggs["n_key"] = (raw_key if _text_is_exact(raw_key, self.contract.column(key)) else both[key]).count()
        stats = dict(self.con.execute(both.aggregate(**aggs)).iloc[0].to_dict())

        def exact(name: str) -> ir.Value:
            # Integers map one to one to their text, and clean text is its own typed value:
            # count those before the conversion.
            r = both[f"raw__{name}"]
            return r if r.type().is_integer() or stats.get(f"padded_{name}") == 0 else both[name]

        # DuckDB runs a scan with many aggregates several times slower when it holds
        # DISTINCT aggregates too: count the distinct values in a query of their own.
        distinct: dict[str, ir.Scalar] = {}
        if key and key in raw.columns:
            # Streamed to this process: only from a local engine, and only from a binary table.
            local = getattr(self.con, "name", "") == "duckdb"
            if local and self.src.format != "csv" and _increasing(self.con, exact(key).name("key")):
                stats["n_distinct_key"] = stats["n_key"]
            else:
                distinct["n_distinct_key"] = exact(key).nunique()
        if "customer_id" in raw.columns:
            distinct["n_customers"] = exact("customer_id").nunique()
        if distinct:
            stats.update(self.con.execute(both.aggregate(**distinct)).iloc[0].to_dict())
        return stats

    def _first_lines(self, condition_of: Any) -> tuple[int, ...]:
        t = self.raw.mutate(__line=ibis.row_number() + self.src.first_data_line)
        typed_cols = _typed_columns(t, self.contract, self.src.date_format)
        t = t.mutate(**typed_cols)
        hits = t.filter(condition_of(t)).select("__line").order_by("__line").limit(_FIRST_ROWS)
        return self._file_lines(tuple(int(x) for x in self.con.execute(hits)["__line"].tolist()))

    def _file_lines(self, lines: tuple[int, ...]) -> tuple[int, ...]:
        """The lines of the file where these records start, counted as if each record were one line.

        A quoted line break or a blank line puts the later records further down the file.
        Counting the file's line breaks tells whether there are any; only then is the file
        read record by record, up to the last one asked for.
        """
        src = self.src
        if not lines or src.format != "csv" or len(src.delimiter) != 1:
            return lines
        try:
            if self._one_line_records is None:
                with open_text(src.path) as fh:
                    breaks, last = 0, ""
                    for block in iter(lambda: fh.read(1 << 20), ""):
                        breaks += block.count("\n")
                        last = block[-1]
                n_lines = breaks + (last not in ("\n", ""))
                self._one_line_records = n_lines == self.summary["rows"] + src.first_data_line - 1
            if self._one_line_records:
                return lines
            wanted, found = set(lines), {}
            with open_text(src.path) as fh:
                reader = csv.reader(fh, delimiter=src.delimiter)
                record, start = 0, 1  # records numbered as lines: the header (if any) is 1
                for row in reader:
                    if row:
                        record += 1
                        if record in wanted:
                            found[record] = start
                            if len(found) == len(wanted):
                                break
                    start = reader.line_num + 1
        except (OSError, EOFError, csv.Error):
            return lines
        return tuple(found.get(line, line) for line in lines)

    def _check_parse(self, col: Column, stats: dict[str, Any], typed: ir.Table) -> None:
        name = col.name
        bad = int(stats.get(f"bad_{name}", 0) or 0)
        if bad:
            rows = self._first_lines(
                lambda t: (
                    t[name].notnull()
                    & (_as_text(t[name]).strip().length() > 0)
                    & t[f"__typed_{name}"].isnull()
                )
                | (_outside_calendar(t[f"__typed_{name}"]) if col.kind == "date" else False)
            )
            self.problem(
                "error",
                f"{bad:,} value(s) do not parse as {_kind_label(col, self.src.date_format)}",
                _parse_fix(col),
                column=name, count=bad, rows=rows, code="parse",
            )
        nulls = int(stats.get(f"null_{name}", 0) or 0)
        placeholders = int(stats.get(f"placeholder_{name}", 0) or 0)
        if placeholders:
            rows = self._first_lines(lambda t: t[f"__typed_{name}"].isin(ID_PLACEHOLDERS))
            self.problem(
                "error", f"{placeholders:,} row(s) have a {name} that stands for no value "
                f"(such as NULL, \\N or N/A)",
                f"Fill in {name} or drop those rows (the export wrote missing ids as text).", column=name,
                count=placeholders, rows=rows, code="placeholder_key",
            )
        if nulls and (col.kind == "id" or col.required):
            rows = self._first_lines(lambda t: _as_text(t[name]).strip().length().fill_null(0) == 0)
            self.problem(
                "error", f"{nulls:,} row(s) have an empty {name}",
                f"Fill in {name} or drop those rows.", column=name, count=nulls, rows=rows,
                code="empty_key" if col.kind == "id" else "missing_value",
            )
        elif nulls and name in ("age", "gender"):
            self.problem(
                "warning",
                f"{name} is missing in {nulls:,} row(s); kept as missing and imputed by the model",
                f"Nothing to do; fill in {name} if you have it.", column=name, count=nulls,
                code="missing_value",
            )
        nonfinite = int(stats.get(f"nonfinite_{name}", 0) or 0)
        if nonfinite:
            rows = self._first_lines(
                lambda t: t[f"__typed_{name}"].isnan() | t[f"__typed_{name}"].isinf()
            )
            self.problem(
                "error", f"{nonfinite:,} value(s) are NaN or infinite",
                "Replace them with real amounts or drop those rows.", column=name,
                count=nonfinite, rows=rows, code="non_finite",
            )
        huge = int(stats.get(f"huge_{name}", 0) or 0)
        if huge:
            rows = self._first_lines(lambda t: t[f"__typed_{name}"].abs() >= AMOUNT_LIMIT)
            self.problems.append(too_large(self.name, huge, str(self.src.path), rows, column=name))
        future = int(stats.get(f"future_{name}", 0) or 0)
        if future:
            self.problem(
                "warning", f"{future:,} date(s) are after the as-of date {self.as_of}; kept, never used as features",
                "Check the export, or pass --as-of with the export date.", column=name,
                count=future, code="future_date",
            )
        normalised = int(stats.get(f"normalised_{name}", 0) or 0)
        if normalised:
            self.problem(
                "warning", f"{normalised:,} value(s) are spelled other than Yes/No; normalised",
                "Nothing to do; export Yes/No to silence this.", column=name, count=normalised,
                code="normalised",
            )

    def _check_key(self, stats: dict[str, Any], typed: ir.Table) -> None:
        key = self.contract.key
        if not key or key not in self.raw.columns:
            return
        dupes = int(stats["n_key"]) - int(stats["n_distinct_key"])
        if dupes <= 0:
            return
        rows = self._first_lines(
            lambda t: t[f"__typed_{key}"].notnull()
            & (t[f"__typed_{key}"].count().over(group_by=t[f"__typed_{key}"]) > 1)
        )
        self.problem(
            "error", f"{dupes:,} duplicate {key} value(s); {key} must be unique in {self.name}",
            "Remove the duplicate rows or give each row its own id.", column=key,
            count=dupes, rows=rows, code="duplicate_key",
        )

    def _check_specific(self, stats: dict[str, Any], typed: ir.Table) -> None:
        if self.name == "engagements":
            for col in self.contract.columns:
                neg = int(stats.get(f"neg_{col.name}", 0) or 0)
                if col.kind == "count" and neg:
                    rows = self._first_lines(lambda t, c=col.name: t[f"__typed_{c}"] < 0)
                    self.problem(
                        "warning", f"{neg:,} negative count(s); kept as they are",
                        "Check the export: counts are never negative (leave an unknown count empty).",
                        column=col.name, count=neg, rows=rows, code="negative_count",
                    )
        if odd := int(stats.get("odd_age", 0) or 0):
            rows = self._first_lines(lambda t: ~t["__typed_age"].between(*AGE_RANGE))
            self.problem(
                "warning", f"{odd:,} age(s) outside {AGE_RANGE[0]}-{AGE_RANGE[1]}; kept as they are",
                "Check the export of age (years), or leave unknown ages empty.",
                column="age", count=odd, rows=rows, code="odd_age",
            )
        if self.name == "transactions":
            neg = int(stats.get("neg_transaction_amount", 0) or 0)
            zero = int(stats.get("zero_transaction_amount", 0) or 0)
            if neg:
                rows = self._first_lines(lambda t: t["__typed_transaction_amount"] < 0)
                self.problem(
                    "warning", f"{neg:,} negative amount(s), treated as returns and netted into spend",
                    "Nothing to do if they are returns.", column="transaction_amount",
                    count=neg, rows=rows, code="negative_amount",
                )
            if zero:
                self.problem(
                    "warning", f"{zero:,} zero amount(s); kept (they count as transactions)",
                    "Nothing to do if they are free orders.", column="transaction_amount",
                    count=zero, code="zero_amount",
                )


def _cross_checks(con: Any, typed: dict[str, ir.Table], sources: dict[str, TableSource]) -> list[Problem]:
    """Whether the tables join: rows of customers that are not known, and ids written differently.

    Customers are known from the customers table, or from the transactions without one.
    """
    out: list[Problem] = []
    tx, cust = typed.get("transactions"), typed.get("customers")
    if tx is None:
        return out
    base = "customers" if cust is not None else "transactions"
    known_ids = cust if cust is not None else tx.select("customer_id").distinct()
    known = known_ids.select(__id=known_ids.customer_id, __known=ibis.literal(True))
    for name in ("transactions", "marketing", "engagements"):
        t = typed.get(name)
        if t is None or name == base:
            continue
        counts = _transaction_counts(con, t, known) if name == "transactions" else _orphan_counts(con, t, known)
        rows = int(counts["rows"] or 0)
        if rows and not int(counts["matched"] or 0):
            out.append(_no_common_customers(con, name, t, base, typed[base], sources, rows))
        elif rows:
            whose = ("whose customer_id is not in customers; kept (known from their own rows)" if base == "customers"
                     else "who have no transactions; not used (customers are known from their transactions)")
            out.append(
                Problem(
                    "warning", name,
                    f"{rows:,} row(s) of {int(counts['customers']):,} customer(s) {whose}",
                    (f"Add those customers to the {base} table, " if base == "customers" else "Nothing to do if "
                     "they never bought; otherwise ")
                    + f"write their ids as the {base} table does (1, 1.0 and 00001 are different ids).",
                    file=str(sources[name].path), column="customer_id",
                    count=rows, code="orphan",
                )
            )
        n_without = int(counts.get("without") or 0)
        if n_without:
            out.append(
                Problem(
                    "warning", "customers",
                    f"{n_without:,} customer(s) have no transactions; they get zero spend features",
                    "Nothing to do if they never bought.", file=str(sources["customers"].path),
                    column="customer_id", count=n_without, code="no_transactions",
                )
            )
    return out


def _no_common_customers(con: Any, name: str, t: ir.Table, base: str, known: ir.Table,
                         sources: dict[str, TableSource], rows: int) -> Problem:
    """The warning when no row of ``t`` belongs to a known customer: the tables do not join.

    Almost always the ids are written differently in the two files (``1.0`` and ``1``,
    ``00001`` and ``1``) or the files come from different data sets; one example id of each
    side shows which. A warning, not an error: a small or partial extract can have no
    customer in common by chance, and every customer is still known from its own rows.
    """
    its_id = con.execute(t.customer_id.min())
    known_id = con.execute(known.customer_id.min())
    file, known_file = Path(sources[name].path), Path(sources[base].path)
    kept = ("kept, but no customer gets both its profile and its purchases" if base == "customers"
            else "no customer gets these features")
    return Problem(
        "warning", name,
        f"none of the {rows:,} row(s) has a customer_id of the {base} table {known_file}: "
        f"{file.name} has ids such as {its_id!r}, {known_file.name} has ids such as {known_id!r}; {kept}",
        "Write the customer ids the same way in both files (1, 1.0 and 00001 are different ids), "
        f"or leave the {name} file out if it belongs to other data.",
        file=str(file), column="customer_id", count=rows, code="no_common_customers",
    )


def _orphan_counts(con: Any, t: ir.Table, known: ir.Table) -> Any:
    """Rows of ``t`` whose customer is not ``known``, how many customers they hold, and the
    rows whose customer is (``matched``)."""
    j = t.left_join(known, t.customer_id == known["__id"])
    orphan = j["__known"].isnull()
    return con.execute(j.aggregate(
        rows=orphan.sum(), customers=j.customer_id.nunique(where=orphan), matched=(~orphan).sum(),
    )).iloc[0]


def _transaction_counts(con: Any, tx: ir.Table, known: ir.Table) -> Any:
    """The orphan counts of the transactions, the known customers ``without`` any, and the
    customers with some (``matched``), in one pass.

    Rows counted per customer and outer-joined to the customers (unique, checked) give
    all three; an anti-join each way would read the transactions twice.
    """
    per = tx.group_by("customer_id").aggregate(__rows=tx.count())
    j = per.outer_join(known, per.customer_id == known["__id"])
    orphan = j["__known"].isnull()
    return con.execute(j.aggregate(
        rows=ibis.ifelse(orphan, j["__rows"], 0).sum(),
        customers=(orphan & j["__rows"].notnull()).sum(),
        without=j["__rows"].isnull().sum(),
        matched=(j["__rows"].notnull() & j["__known"].notnull()).sum(),
    )).iloc[0]


# -- conversion helpers -------------------------------------------------------
def _to_date(value: Any) -> dt.date | None:
    if value is None or value != value:  # None or NaT
        return None
    return value.date() if hasattr(value, "date") else value


def _ibis_type(col: Column) -> str:
    return {"id": "string", "date": "date", "number": "float64", "count": "float64",
            "text": "string", "response": "string"}[col.kind]


def _never_blank(v: ir.Value) -> bool:
    """Whether a non-NULL value of this column can never be blank text."""
    dtype = v.type()
    return dtype.is_numeric() or dtype.is_boolean() or dtype.is_date() or dtype.is_timestamp()


def _text_is_exact(v: ir.Value, col: Column) -> bool:
    """Whether this id or label column converts every non-NULL value to its text, never blank.

    True for typed ids and labels, except ids stored as floats or decimals: those are
    converted to the integer they hold, and a fraction does not convert.
    """
    if col.kind not in ("id", "text") or not _never_blank(v):
        return False
    return not (col.kind == "id" and _fractional(v.type()))


def _fractional(dtype: Any) -> bool:
    return bool(dtype.is_floating() or dtype.is_decimal())


#: The largest magnitude up to which a float holds every integer exactly, by width in bytes.
_EXACT_FLOAT_INTEGERS = {2: 2**11, 4: 2**24, 8: 2**53}


def _whole_number_text(v: ir.NumericValue) -> ir.StringValue:
    """The text of the integer a float or decimal id holds ("1" for 1.0); NULL for 1.5, NaN, inf.

    pandas writes an integer column with missing values as float64, whose text "1.0"
    would match no id "1" of another file. Beyond 2**53 a float64 no longer holds every
    integer, so the id it stores may not be the one exported: NULL too.
    """
    dtype = v.type()
    whole = (v % 1) == 0
    if dtype.is_floating():
        whole = whole & (v.abs() <= _EXACT_FLOAT_INTEGERS.get(dtype.nbytes, 2**53))
        integer: ir.Value = v.cast("int64")
    else:
        integer = v.cast("decimal(38, 0)")
    return ibis.ifelse(whole, integer, ibis.null(integer.type())).cast("string")


def _strip(s: ir.StringValue) -> ir.StringValue:
    """``s.strip()``, skipping the trim when neither end can be whitespace.

    Trimming a character set is the most expensive step of a scan in DuckDB, and almost
    no value needs it. Every character ``strip`` removes sorts at or below ``" "``.
    Used for ids and labels, which every feature query reads (typed Parquet columns are
    converted in each query); dates and numbers in text files are parsed once.
    """
    return ibis.ifelse(_padded(s), s.strip(), s)


def _padded(s: ir.StringValue) -> ir.BooleanValue:
    """Whether a text value is blank or starts or ends with what ``strip`` removes (see :func:`_strip`)."""
    # Compared as bytes, a text sorts before "!" exactly when it is empty or its first
    # character is at or below " ".
    return (s < "!") | (s.reverse() < "!")


#: Rows per batch when a key column is streamed to check its order.
_ORDER_BATCH = 1_000_000


def _increasing(con: Any, values: ir.Value) -> bool:
    """Whether the non-NULL values of a column are strictly increasing in the table's order.

    Keys written in order (an order log numbered as it grows) then need no hash table
    to prove them unique: one streamed pass in bounded memory, stopped at the first
    value that is not larger than the one before it. Only for tables whose reading is
    cheap (Parquet, DuckDB); a text file would be parsed once more.
    """
    import pyarrow.compute as pc

    previous = None
    with con.to_pyarrow_batches(values.as_table(), chunk_size=_ORDER_BATCH) as batches:
        for batch in batches:
            column = batch.column(0).drop_null()
            if len(column) == 0:
                continue
            if previous is not None and not pc.greater(column[0], previous).as_py():
                return False
            if len(column) > 1 and not pc.all(pc.greater(column[1:], column[:-1])).as_py():
                return False
            previous = column[-1]
    return True


def _as_text(v: ir.Value) -> ir.StringValue:
    return v if v.type().is_string() else v.cast("string")


def _typed_columns(t: ir.Table, contract: Any, date_format: str | None) -> dict[str, ir.Value]:
    return {
        f"__typed_{c.name}": _convert(t[c.name], c, date_format)
        for c in contract.columns
        if c.name in t.columns
    }


def _convert(v: ir.Value, col: Column, date_format: str | None) -> ir.Value:
    """Typed value of a raw column; NULL where a value does not parse."""
    dtype = v.type()
    if col.kind == "id" and _fractional(dtype):
        return _whole_number_text(v)
    if col.kind in ("id", "text"):
        s = _as_text(v) if _never_blank(v) else _strip(_as_text(v))
        return s.nullif("")
    if col.kind == "response":
        if dtype.is_boolean():
            return ibis.cases((v, "Yes"), (~v, "No"), else_=ibis.null("string"))
        if dtype.is_numeric():  # 1 / 0; other numbers do not parse
            return ibis.cases((v == 1, "Yes"), (v == 0, "No"), else_=ibis.null("string"))
        s = _as_text(v).strip().lower()
        return (
            ibis.cases((s.isin(RESPONSE_YES), "Yes"), (s.isin(RESPONSE_NO), "No"), else_=None)
        )
    if col.kind == "date":
        if dtype.is_date():
            return v
        if dtype.is_timestamp():
            return v.date()
        if not dtype.is_string():
            return ibis.null("date")
        return _parse_date(v.strip(), date_format)
    # number / count
    if dtype.is_numeric():
        return v.cast("float64")
    if not dtype.is_string():
        return ibis.null("float64")
    return v.strip().try_cast("float64")


def _outside_calendar(d: ir.DateValue) -> ir.BooleanValue:
    """Whether a date lies outside years 1-9999, which Python and pandas cannot hold."""
    return d.notnull() & ~d.between(_FIRST_DAY, _LAST_DAY)


def _parse_date(s: ir.StringValue, date_format: str | None) -> ir.DateValue:
    if not date_format or date_format in ("%Y-%m-%d", "iso"):
        # DuckDB also casts 'epoch', 'infinity' and years past 9999 or BC: a date starts
        # with a digit and lies in years 1-9999 (what Python and pandas can hold).
        # A year has four digits: DuckDB would read '19/05/20' or '23-05-01' as years 19 and 23.
        first, fifth = s.left(1), s.substr(4, 1)
        d = ibis.ifelse((first >= "0") & (first <= "9") & ((fifth == "-") | (fifth == "/")), s,
                        ibis.null("string")).try_cast("date")
        return ibis.ifelse(d.between(_FIRST_DAY, _LAST_DAY), d, ibis.null("date"))
    pattern, (y, m, d) = _DATE_PATTERNS[date_format]
    iso = (
        s.re_extract(pattern, y) + "-" + s.re_extract(pattern, m).lpad(2, "0") + "-"
        + s.re_extract(pattern, d).lpad(2, "0")
    )
    return iso.nullif("--").try_cast("date")


def _kind_label(col: Column, date_format: str | None) -> str:
    if col.kind == "date":
        return f"dates ({date_format or 'YYYY-MM-DD'})"
    if col.kind == "response":
        return "responses (Yes/No)"
    if col.kind == "id":
        return "ids (whole numbers or text)"
    return "numbers"


def _parse_fix(col: Column) -> str:
    if col.kind == "date":
        return (
            "Write dates as YYYY-MM-DD (a four-digit year), or give date_format in a mapping file "
            f"(one of {sorted(_DATE_PATTERNS)}; docs/mapping.md)."
        )
    if col.kind == "response":
        return "Use Yes or No (yes/no, y/n, true/false, 1/0 are accepted too)."
    if col.kind == "id":
        return (
            "Store ids as integers or text; a float id must be a whole number up to 2^53, the largest "
            "a float holds exactly (from pandas, df[column].astype('Int64') keeps missing values "
            "without turning the ids into floats)."
        )
    return "Write plain numbers with a dot as decimal separator and no currency or thousands signs."


def supported_date_formats() -> list[str]:
    """Date formats accepted in a mapping file besides ISO ``%Y-%m-%d``."""
    return sorted(_DATE_PATTERNS)
