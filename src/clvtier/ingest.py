"""Ingest: find the input tables and register them, untyped, on a DuckDB connection.

A data source is one of

* a directory holding files named after the tables (``transactions_final.csv``,
  ``transactions.csv``, ``transactions.parquet``, ``transactions.csv.gz``, ...);
* a DuckDB database file with tables of those names;
* a single CSV / Parquet file, read as the transactions table;
* a TOML mapping file describing any other layout (see ``docs/mapping.md``).

Text files are registered with every column as text so that validation can
report each value that does not parse, with its line number, instead of
failing on the first one.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import re
import tempfile
import tomllib
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import ibis
import pandas as pd

from clvtier.errors import InputError, Problem, is_engine_out_of_memory
from clvtier.schema import DATE_PATTERNS, EXTENSIONS, TABLES

_SNIFF_BYTES = 1 << 20
_DELIMITERS = (",", ";", "\t", "|")
_DATABASES = (".duckdb", ".db", ".ddb")
_ALL_COLUMNS = tuple(dict.fromkeys(c for table in TABLES.values() for c in table.column_names))


@dataclass(frozen=True)
class TableSource:
    """How one table is read.

    Attributes
    ----------
    path : Path
        File (or database file) holding the table.
    format : {"csv", "parquet", "duckdb"}
    delimiter : str
        Field separator for text files; ``"whitespace"`` for runs of blanks.
    header : bool
        Whether the first line of a text file names the columns.
    names : tuple of str
        Column names for a headerless file, in file order.
    columns : dict
        Contract column name -> column name in the file.
    date_format : str or None
        ``strptime``-style format of the date columns (ISO when None).
    db_table : str or None
        Table name inside a DuckDB database, ``schema.table`` outside the ``main`` schema.
    mapping : Path, str or None
        The mapping file that describes the table (a URI for Spark), if any.
    """

    path: Path
    format: str = "csv"
    delimiter: str = ","
    header: bool = True
    names: tuple[str, ...] = ()
    columns: dict[str, str] = field(default_factory=dict)
    date_format: str | None = None
    db_table: str | None = None
    mapping: Path | str | None = None

    @property
    def first_data_line(self) -> int:
        """Line number (1-based) of the first data row in a text file."""
        return 2 if self.header and self.format == "csv" else 1


@dataclass
class RawTables:
    """Tables as read, every text column untyped, on a caller-owned connection."""

    con: Any
    tables: dict[str, ibis.Table]
    sources: dict[str, TableSource]
    problems: list[Problem] = field(default_factory=list)
    #: What was read: a data directory, a mapping or database file (None for a dict of sources).
    source: Any = None


def connect(
    database: str = ":memory:", memory_limit: str | None = None, threads: int | None = None,
    temp_directory: str | Path | None = None,
) -> Any:
    """Open the DuckDB connection (through Ibis) that clvtier works on.

    Parameters
    ----------
    database : str
        DuckDB database path, in memory by default.
    memory_limit : str, optional
        DuckDB memory limit such as ``"2GB"``; DuckDB spills to disk beyond it.
    threads : int, optional
        Worker threads; all cores by default.
    temp_directory : str or Path, optional
        Where DuckDB spills; by default a directory of this connection's own under the
        system temporary directory (``TMPDIR``), created only when DuckDB spills and
        removed when the connection closes.
    """
    config: dict[str, Any] = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if threads:
        config["threads"] = threads
    if temp_directory is None:
        # DuckDB's default for an in-memory database is ".tmp" in the working directory.
        temp_directory = Path(tempfile.gettempdir()) / f"clvtier-duckdb-{uuid.uuid4().hex[:12]}"
    config["temp_directory"] = str(temp_directory)
    return ibis.duckdb.connect(database, **config)


def discover(source: str | Path) -> dict[str, TableSource]:
    """Find the tables of a data source by their file names.

    Parameters
    ----------
    source : str or Path
        Directory, DuckDB file, single data file, or TOML mapping file.

    Returns
    -------
    dict
        Contract table name -> :class:`TableSource` for every table found.

    Raises
    ------
    InputError
        When the path does not exist, or a directory holds several files for one table
        (``transactions.csv`` and ``transactions.parquet``, or ``transactions_final.csv``
        and ``transactions.csv``).
    """
    if not isinstance(source, str | Path):
        raise InputError(f"the data source {source!r} is not a path.",
                         "Pass a directory, a DuckDB or data file, a TOML mapping file, or a dict of table "
                         "name -> file path.")
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory.", "Check the path to the data.")
    if path.is_file() and path.suffix.lower() == ".toml":
        return read_mapping(path)
    if _is_database(path):
        return _discover_duckdb(path)
    if path.is_file():
        return {"transactions": _file_source(path)}
    found: dict[str, TableSource] = {}
    several: dict[str, list[Path]] = {}
    # By name whatever its case, as exports and Windows file systems write Transactions.CSV.
    files: dict[str, list[Path]] = {}
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise InputError(
            f"{path}: cannot read the directory ({exc.strerror}).",
            "Check the directory's permissions (it must be readable by you).",
        ) from None
    for file in entries:
        if file.is_file():
            files.setdefault(file.name.lower(), []).append(file)
    for table in TABLES.values():
        candidates = [file for stem in table.file_stems for ext in EXTENSIONS for file in files.get(f"{stem}{ext}", [])]
        if len(candidates) > 1:
            several[table.name] = candidates
        elif candidates:
            [file] = candidates
            found[table.name] = _file_source(file)
    if several:
        # Picking one by a preference order would silently read an older export or a draft.
        raise _several(path, {name: [f.name for f in files] for name, files in several.items()}, "directory")
    return found


def _file_source(path: Path) -> TableSource:
    """How to read a data file, from its name: its format, and tabs for a ``.tsv`` file."""
    return TableSource(path=path, format=_format_of(path), delimiter=_default_delimiter(path))


def _default_delimiter(path: Path | str) -> str:
    """Tabs for a ``.tsv`` (or ``.tsv.gz``) file, else commas."""
    return "\t" if str(path).lower().endswith((".tsv", ".tsv.gz")) else ","


def _is_database(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in _DATABASES


def _given(sources: Mapping[Any, Any]) -> dict[str, TableSource]:
    """A dict of table name -> file path (str or Path) or :class:`TableSource`, as sources."""
    out: dict[str, TableSource] = {}
    for name, value in sources.items():
        if name not in TABLES:
            raise InputError(f"'{name}' is not a table of the contract.", f"Use the names {sorted(TABLES)}.")
        if isinstance(value, TableSource):
            out[name] = value
        elif isinstance(value, str | Path):
            path = Path(value)
            if not path.is_file():
                raise InputError(f"{path}: no such file (the {name} table).", "Check the path to the data.")
            out[name] = _file_source(path)
        else:
            raise InputError(f"the {name} table's source {value!r} is not a path.",
                             "Give each table a file path (str or Path) or a TableSource.")
    return out


def _several(path: Path, several: dict[str, list[str]], source: Literal["directory", "database"]) -> InputError:
    """The error for a directory (files) or a DuckDB database (tables) holding several for one table:
    all named, and the fix."""
    listed = " and ".join(f"the {name} table ({', '.join(items)})" for name, items in several.items())
    table, first = next(iter(several)), next(iter(several.values()))[0]
    if source == "directory":
        what, keep, entry = "file", "Keep one file per table in the directory, or map the table to a file", \
            f' and path = "{first}"'
    else:
        what, keep, entry = "table or view", "Keep one of them in the database, or map the table", \
            f', path = "{path.name}" and table = "{first}"'
    return InputError(
        f"{path}: more than one {what} for {listed}; clvtier does not guess which one to read.",
        f"{keep} with a config: a mapping file with [{table}]{entry}, and a section for each other table "
        f"(docs/mapping.md); pass the mapping file instead of the {source}.",
    )


def _format_of(path: Path) -> str:
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"


def _discover_duckdb(path: Path) -> dict[str, TableSource]:
    names = _database_tables(path)
    found = {}
    several: dict[str, list[str]] = {}
    for table in TABLES.values():
        # In any schema and whatever the case, as DuckDB itself matches names.
        hits = [name for stem in table.file_stems for name in names if name.lower().rpartition(".")[2] == stem]
        if len(hits) > 1:
            several[table.name] = hits
        elif hits:
            found[table.name] = TableSource(path=path, format="duckdb", db_table=hits[0])
    if several:
        # As with files in a directory: picking one would silently read an older copy.
        raise _several(path, several, "database")
    return found


def _database_tables(path: Path) -> list[str]:
    """The tables and views of a DuckDB database file (see :func:`_tables_of`)."""
    import duckdb

    try:
        with duckdb.connect(str(path), read_only=True) as db:
            [(catalog,)] = db.execute("SELECT current_database()").fetchall()
            return _tables_of(db, catalog)
    except duckdb.Error as exc:
        raise InputError(
            f"{path}: cannot be opened as a DuckDB database ({_first_line(exc)}).",
            "Pass a DuckDB database file, a directory of CSV/Parquet files, or a mapping file.",
        ) from None


def _tables_of(db: Any, catalog: str) -> list[str]:
    """The tables and views of ``catalog`` on a DuckDB connection, as ``schema.table`` outside ``main``."""
    rows = db.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = $catalog AND NOT internal "
        "UNION ALL SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = $catalog "
        "AND NOT internal",
        {"catalog": catalog},
    ).fetchall()
    return sorted(name if schema == "main" else f"{schema}.{name}" for schema, name in rows)


def read_mapping(path: Path) -> dict[str, TableSource]:
    """Read a TOML mapping file.

    Each table is a TOML section; paths are relative to the mapping file::

        [transactions]
        path = "CDNOW_master.txt"
        delimiter = "whitespace"
        header = false
        names = ["customer_id", "transaction_date", "number_of_cds", "transaction_amount"]
        date_format = "%Y%m%d"

        [transactions.columns]   # contract column = column in the file
        transaction_amount = "transaction_amount"
    """
    try:
        # utf-8-sig: Windows editors (Notepad) start a UTF-8 file with a byte-order mark.
        spec = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise InputError(
            f"{path}: cannot read the mapping file ({exc.strerror}).",
            "Check the file's permissions (it must be readable by you).",
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: not a valid TOML mapping file ({exc}).",
            "See docs/mapping.md for the format of a mapping file.",
        ) from None
    if not spec:
        raise InputError(f"{path}: the mapping file describes no table.",
                         'Add a [transactions] section with path = "FILE" (docs/mapping.md).')
    # Every mistake of the file at once, as validation reports every problem of the data.
    problems: list[tuple[str, str]] = []
    unknown = sorted(set(spec) - set(TABLES))
    if unknown:
        problems.append((f"unknown table section(s) {unknown}", f"Use only the sections {sorted(TABLES)}."))
    sources = {}
    allowed = {"path", "format", "delimiter", "header", "names", "columns", "date_format", "table"}
    for name, section in spec.items():
        if name in unknown:
            continue
        if not isinstance(section, dict):
            problems.append((f"'{name}' is a value, not a section",
                             f'Write it as a section: [{name}] on its own line, then path = "FILE".'))
            continue
        found = len(problems)
        bad = sorted(set(section) - allowed)
        if bad:
            problems.append((f"section [{name}] has unknown key(s) {bad}", f"Use only the keys {sorted(allowed)}."))
        section = {k: v for k, v in section.items() if k in allowed}
        wrong_types = _mapping_type_problems(name, section)
        if wrong_types:  # the checks below need the values
            problems += wrong_types
            continue
        delimiter = section.get("delimiter", _default_delimiter(str(section.get("path", ""))))
        if len(delimiter) != 1 and delimiter != "whitespace":
            problems.append((f"section [{name}] has delimiter = {delimiter!r}, which is not one character",
                             f"Write delimiter as {_MAPPING_TYPES['delimiter'][1]}."))
        if "path" not in section:
            problems.append((f"section [{name}] has no 'path'", 'Add path = "FILE".'))
            continue
        file = (path.parent / section["path"]).resolve()
        fmt = section.get("format") or (
            "duckdb" if file.suffix.lower() in _DATABASES else _format_of(file)
        )
        if fmt not in ("csv", "parquet", "duckdb"):
            problems.append((f"section [{name}] has format '{fmt}', which is not supported",
                             "Use csv, parquet or duckdb."))
        date_format = section.get("date_format")
        if date_format not in (None, "iso", "%Y-%m-%d", *DATE_PATTERNS):
            problems.append((f"section [{name}] has date_format '{date_format}', which is not supported",
                             f"Use %Y-%m-%d or one of {sorted(DATE_PATTERNS)}."))
        columns = section.get("columns", {})
        bad_cols = sorted(set(columns) - set(TABLES[name].column_names))
        if bad_cols:
            problems.append((f"section [{name}.columns] maps unknown contract column(s) {bad_cols}",
                             f"Map only {list(TABLES[name].column_names)}."))
        targets: dict[str, list[str]] = {}
        for target, col in columns.items():
            targets.setdefault(col, []).append(target)
        shared = next(((col, t) for col, t in targets.items() if len(t) > 1), None)
        if shared:
            problems.append((f"section [{name}.columns] maps {' and '.join(shared[1])} to the same column "
                             f"'{shared[0]}'", "Map each column of the file to one contract column."))
        if len(problems) > found:
            continue
        sources[name] = TableSource(
            path=file,
            format=fmt,
            delimiter=delimiter,
            header=bool(section.get("header", True)),
            names=tuple(section.get("names", ())),
            columns=dict(columns),
            date_format=section.get("date_format"),
            db_table=section.get("table", name if fmt == "duckdb" else None),
            mapping=path,
        )
    if problems:
        if len(problems) == 1:
            raise InputError(f"{path}: {problems[0][0]}.", problems[0][1])
        raise InputError(f"{path} has {len(problems)} problems: " + "; ".join(m for m, _ in problems) + ".",
                         " ".join(dict.fromkeys(f for _, f in problems)))
    return sources


_MAPPING_TYPES: dict[str, tuple[type, str]] = {
    "path": (str, 'a file name in quotes, such as "orders.csv"'),
    "format": (str, '"csv", "parquet" or "duckdb"'),
    "delimiter": (str, 'one character in double quotes, such as ";", "\\t" (a tab) or "|", '
                       'or as "whitespace" for runs of blanks'),
    "header": (bool, "true or false"),
    "names": (list, 'a list of column names, such as ["customer_id", "date"]'),
    "columns": (dict, 'a sub-section of contract_column = "file column" lines'),
    "date_format": (str, 'a format in quotes, such as "%d/%m/%Y"'),
    "table": (str, "a table name in quotes"),
}


def _mapping_type_problems(name: str, section: dict[str, Any]) -> list[tuple[str, str]]:
    """(message, fix) for each value of a mapping section that is not of its key's type."""
    problems = []
    for key, value in section.items():
        kind, expected = _MAPPING_TYPES[key]
        ok = isinstance(value, kind) and (kind is not str or value != "")
        if kind is list:
            ok = ok and all(isinstance(v, str) and v for v in value)
        if kind is dict:
            ok = ok and all(isinstance(v, str) and v for v in value.values())
        if not ok:
            problems.append((f"section [{name}] has {key} = {value!r}", f"Write {key} as {expected}."))
    return problems


_SPREADSHEETS = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")


def spreadsheet_hint(source: Any) -> str:
    """``"; ... are spreadsheets"`` naming the spreadsheet files of a data directory (read only as CSV), else ``""``."""
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is None or not path.is_dir():
        return ""
    found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _SPREADSHEETS)
    if not found:
        return ""
    return (f"; {', '.join(found[:4])} {'is a spreadsheet' if len(found) == 1 else 'are spreadsheets'}, "
            "which clvtier does not read: save each sheet as CSV UTF-8 under its table's name")


def passed_over_hint(source: Any) -> str:
    """``"; ..."`` naming the DuckDB databases and the data files of a data directory that discovery does
    not read as tables, with what to do about them, else ``""``."""
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is None or not path.is_dir():
        return ""
    known = {f"{stem}{ext}" for table in TABLES.values() for stem in table.file_stems for ext in EXTENSIONS}
    files = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    databases = [f for f in files if Path(f).suffix.lower() in _DATABASES]
    data = [f for f in files if f.lower().endswith((*EXTENSIONS, ".pq")) and f.lower() not in known]
    hint = ""
    if databases:
        hint += (f"; {_listed(databases)} {'is a DuckDB database' if len(databases) == 1 else 'are DuckDB databases'}"
                 f": pass {'it' if len(databases) == 1 else 'one'} instead of the directory")
    if data:
        hint += (f"; {_listed(data)} {'is' if len(data) == 1 else 'are'} not named after a table: "
                 f"rename {'it' if len(data) == 1 else 'each'} to its table's name (transactions.csv, customers.csv, "
                 "engagements.csv or marketing.csv) or map it in a mapping file")
    return hint


def _no_tables(source: Any) -> Problem:
    """The error for a data source without any table, naming what it holds instead."""
    where = str(source)
    if isinstance(source, (str, Path)) and _is_database(Path(source)):
        tables = _database_tables(Path(source))
        example = tables[0] if tables else "orders"
        return Problem(
            "error", "transactions",
            f"no data tables found in {where}; "
            + (f"its tables are {', '.join(tables)}" if tables else "it has no tables"),
            "Name the tables transactions, customers, engagements and marketing (or transactions_final, ...), "
            f'or map each in a mapping file with path = "{Path(source).name}" and table = "{example}" '
            "(docs/mapping.md).",
            file=where, code="no_tables",
        )
    return Problem(
        "error", "transactions",
        f"no data tables found in {where}{spreadsheet_hint(source)}{passed_over_hint(source)}",
        "Name the files transactions.csv (or transactions_final.csv, .parquet, "
        ".csv.gz), customers.csv, engagements.csv and marketing.csv, or describe "
        "the layout in a mapping file (docs/mapping.md).",
        file=where, code="no_tables",
    )


def load_tables(
    source: str | Path | dict[str, TableSource], con: Any | None = None
) -> RawTables:
    """Register every table of a data source on a DuckDB connection, untyped.

    Parameters
    ----------
    source : str, Path or dict
        A data source (see :func:`discover`) or an explicit table -> source mapping.
    con : ibis DuckDB backend, optional
        The connection to use; a new in-memory one when omitted.

    Returns
    -------
    RawTables
        The tables, with column names mapped to the contract. File-level problems
        (empty, binary, not UTF-8, ...) are raised at once as a :class:`DataError`
        by :func:`clvtier.validate.validate`; they are collected in ``problems``.
    """
    sources = _given(source) if isinstance(source, dict) else discover(source)
    con = con if con is not None else connect()
    raw = RawTables(con=con, tables={}, sources=dict(sources),
                    source=None if isinstance(source, dict) else source)
    if not sources:
        raw.problems.append(_no_tables(source))
        return raw
    for name, src in sources.items():
        try:
            table = _rename(_read(con, name, src), src, name)
        except InputError as exc:
            raw.problems.append(
                Problem("error", name, exc.message.rstrip("."), exc.fix, file=str(src.path),
                        column=getattr(exc, "column", None), code=getattr(exc, "code", "unreadable"))
            )
            continue
        raw.tables[name] = table
    return raw


def _read(con: Any, name: str, src: TableSource) -> ibis.Table:
    if src.format == "duckdb":
        return _read_duckdb(con, name, src)
    if not src.path.is_file():
        raise InputError("no such file.", "Check the path in the mapping file.")
    try:
        with open(src.path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise InputError(
            f"cannot read the file ({exc.strerror}).",
            "Check the file's permissions (it must be readable by you).",
        ) from None
    if not head:
        raise InputError("the file is empty (0 bytes).", "Export the table again, with a header.")
    if src.format == "parquet":
        try:
            table = con.read_parquet(src.path, table_name=f"raw_{name}")
            written = _parquet_names(src.path)
        except Exception as exc:  # DuckDB raises many types for corrupt Parquet
            raise InputError(
                f"not a readable Parquet file ({_first_line(exc)}).",
                "Export the table again as Parquet or as CSV.",
            ) from None
        # The names as written: DuckDB renames the second of two that differ in case only (x, X_1).
        _contract_columns(written, src, name)
        return table
    text = _decode_head(head, src)
    if src.names:
        _check_names(name, src, text)
        _contract_columns(src.names, src, name)  # as _check_header checks a header
    if src.delimiter == "whitespace":
        return _read_whitespace(con, name, src)
    # By content, not by name: a gzip file named .csv, or plain text named .csv.gz, is read as it is.
    return _read_csv(con, name, src, text, gzipped=head[:2] == b"\x1f\x8b", complete=len(head) < _SNIFF_BYTES)


def _decode_head(head: bytes, src: TableSource) -> str:
    import gzip
    import zlib

    if head[:2] == b"\x1f\x8b":
        try:
            head = gzip.decompress(head)
        except (OSError, EOFError, zlib.error):
            if len(head) < _SNIFF_BYTES:  # the whole file was read: it is truncated or corrupt
                raise InputError(
                    "the gzip file is corrupt or truncated.", "Compress the CSV again with gzip."
                ) from None
            try:
                head = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(head)
            except zlib.error:
                raise InputError(
                    "the gzip file is corrupt.", "Compress the CSV again with gzip."
                ) from None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(
            "the file is UTF-16 encoded (Excel's 'Unicode text'), not UTF-8 text.",
            "Save the table as UTF-8 CSV (in Excel: 'CSV UTF-8'), or convert it: "
            "iconv -f utf-16 -t utf-8 in > out.",
        )
    if b"\x00" in head[:4096]:
        raise InputError(
            "the file is binary or UTF-16 encoded, not UTF-8 text.",
            "Save the table as UTF-8 CSV (in Excel: 'CSV UTF-8'); a UTF-16 file without a byte-order "
            "mark converts with iconv -f utf-16le -t utf-8 in > out (utf-16be for big-endian).",
        )
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if len(head) == _SNIFF_BYTES and exc.start > len(head) - 4:
            return head[: exc.start].decode("utf-8-sig")
        line = head[: exc.start].count(b"\n") + 1
        raise InputError(
            f"the file is not UTF-8 text (invalid byte 0x{head[exc.start]:02x} on line {line}).",
            "Save the table as UTF-8 CSV (for example: iconv -f latin1 -t utf-8 in > out; "
            "use -f cp1252 for a Windows export).",
        ) from None


class _HeaderError(InputError):
    """A problem with the column names of a table, about the contract column(s) ``column``."""

    def __init__(self, message: str, fix: str, column: str | None, code: str) -> None:
        super().__init__(message, fix)
        self.column = column
        self.code = code


def _read_csv(
    con: Any, name: str, src: TableSource, text: str, gzipped: bool = False, complete: bool = True
) -> ibis.Table:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if src.header and len(lines) == 0:
        raise InputError("the file has no header and no rows.", "Export the table with a header.")
    if src.header and not src.names:
        _check_header(name, src, text)
    options: dict[str, Any] = {
        "compression": "gzip" if gzipped else "none",
        "all_varchar": True,
        "header": src.header,
        "delim": src.delimiter,
        "quote": '"',
        "escape": '"',
        "strict_mode": True,
        "null_padding": False,
        # The header is the first line: DuckDB would otherwise skip lines it finds unlike the
        # rest, such as the real header of a ';'-separated file with decimal commas.
        "skip": 0,
    }
    if src.names:
        options["names"] = list(src.names)
    try:
        return con.read_csv(str(src.path), table_name=f"raw_{name}", **options)
    except Exception as exc:  # duckdb raises several error types for malformed CSV
        if is_engine_out_of_memory(exc):
            raise  # not the file's fault: reported as such by the CLI
        if "Maximum line size" in str(exc):
            raise InputError(
                f"the file cannot be parsed as CSV ({_long_line(src.path) or _csv_error(exc)}).",
                "Shorten the text fields over 2 MB (or leave those columns out) and export again.",
            ) from None
        raise InputError(
            f"the file cannot be parsed as CSV "
            f"({_first_bad_record(text, src.delimiter, complete, src.header) or _csv_error(exc)}).",
            _csv_fix(lines[0] if lines else "", src.delimiter),
        ) from None


#: The longest line DuckDB's CSV reader takes, in bytes.
MAX_LINE_BYTES = 2_000_000


def _long_line(path: Path) -> str | None:
    """``line N is longer than 2 MB (M bytes)`` for the first such line of a text file; None if none is."""
    try:
        with open_text(path) as fh:
            for number, line in enumerate(fh, start=1):
                size = len(line.encode("utf-8"))
                if size > MAX_LINE_BYTES:
                    return f"line {number} is {size:,} bytes, longer than the {MAX_LINE_BYTES:,} bytes the reader takes"
    except (OSError, EOFError):
        pass
    return None


def _check_header(name: str, src: TableSource, text: str) -> None:
    """Check the header of a text file as written (see :func:`_contract_columns`).

    DuckDB renames the second of two equal names (``amount_1``): the duplicate would then
    be dropped without a word.
    """
    if len(src.delimiter) != 1:
        return
    try:
        header = next(csv.reader(io.StringIO(text), delimiter=src.delimiter), [])
    except csv.Error:
        return  # DuckDB reports the malformed header
    _contract_columns(header, src, name)


def _parquet_names(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _check_names(name: str, src: TableSource, text: str) -> None:
    """Refuse ``names`` that do not give one name per field of the file's first line: a field
    without a name would be dropped (or, with blanks as separators, shift the others)."""
    lines: Iterator[tuple[int, list[str]]]
    if src.delimiter == "whitespace":
        lines = ((n, ln.split()) for n, ln in enumerate(text.splitlines(), 1))
    elif len(src.delimiter) == 1:
        reader = csv.reader(io.StringIO(text), delimiter=src.delimiter)
        lines = ((reader.line_num, record) for record in reader)
    else:
        return
    try:
        line, fields = next(((n, f) for n, f in lines if f), (0, []))
    except csv.Error:
        return  # DuckDB reports the malformed line
    if not fields or len(fields) == len(src.names):
        return
    extra = len(src.names) - len(fields)
    count = f"{abs(extra)} name{'s' if abs(extra) != 1 else ''}"
    change = (f"remove {count} from names in [{name}], or set the delimiter the file uses." if extra > 0
              else f"add {count} to names in [{name}] (a field you do not need is ignored, but it needs a name).")
    raise _HeaderError(
        f"names{f' in {src.mapping}' if src.mapping else ''} lists {len(src.names)} columns, "
        f"but line {line} of the file has {len(fields)} fields",
        f"Give one name per field, in file order: {change}",
        column=None,
        code="names",
    )


def _contract_columns(columns: Sequence[str], src: TableSource, name: str | None) -> dict[str, str]:
    """Contract column -> the column of ``columns`` it is read from.

    An explicit ``[<table>.columns]`` entry comes first and shadows every other column of that
    contract name; the other contract columns are matched by normalised name (see :func:`_normalise`).
    ``name`` is the contract table; None matches the columns of every table.

    Raises
    ------
    InputError
        When a mapped column is not in ``columns``, or two columns name one contract column.
    """
    wanted = TABLES[name].column_names if name else _ALL_COLUMNS
    chosen: dict[str, str] = {}
    missing: list[str] = []
    for target, col in src.columns.items():
        # DuckDB drops the blanks around a CSV header's names.
        found = next((c for c in columns if c == col), None) or next(
            (c for c in columns if c.strip() == col.strip()), None)
        if found is None:
            missing.append(target)
        else:
            chosen[target] = found
    if missing:
        raise _unmapped(missing, columns, src, name)
    by_target: dict[str, list[str]] = {}
    for col in columns:
        target = _normalise(col)
        if target in wanted and target not in chosen and col not in chosen.values():
            by_target.setdefault(target, []).append(col)
    for target in wanted:
        hits = by_target.get(target, [])
        if len(hits) > 1:
            names = ", ".join(repr(c) for c in hits)
            raise _HeaderError(
                f"the {'header' if src.format == 'csv' else 'table'} has {len(hits)} columns that name {target} "
                f"({names})",
                "Rename or remove the duplicate columns so that each contract column appears once "
                "(or map one of them explicitly in a mapping file, docs/mapping.md).",
                column=target,
                code="duplicate_column",
            )
        if hits:
            chosen[target] = hits[0]
    return chosen


def _unmapped(targets: list[str], columns: Sequence[str], src: TableSource, name: str | None) -> InputError:
    """The error for mapping entries that name columns the file does not have, with the likely ones."""
    section = f"[{name}.columns]" if name else "the columns of the mapping"
    entries = _listed([f"{t} to '{src.columns[t]}'" for t in targets], at_most=len(targets))
    by_normal = {_normalise(c): c for c in reversed(columns)}
    fixes = []
    for target in targets:
        close = difflib.get_close_matches(_normalise(src.columns[target]), list(by_normal), n=1)
        fixes.append(f'{target} = "{by_normal[close[0]]}"' if close else f"{target} = one of the file's columns")
    shown = ", ".join(repr(c) for c in columns[:30]) + (f" and {len(columns) - 30} more" if len(columns) > 30 else "")
    one = len(targets) == 1
    return _HeaderError(
        f"{src.mapping or 'the mapping'} maps {entries} in {section}, but the file has no such "
        f"column{'' if one else 's'} (its columns: {shown})",
        f"In {section}, write {_listed(fixes, at_most=len(fixes))} "
        + ("(the column name as the file writes it), or remove the entry" if one
           else "(column names as the file writes them), or remove an entry")
        + " if the file has no such column.",
        column=", ".join(targets),
        code="missing_column",
    )


def _listed(names: list[str], at_most: int = 4) -> str:
    """``a``, ``a and b``, ``a, b and c``: the first ``at_most`` names, then how many more."""
    if len(names) > at_most:
        return f"{', '.join(names[:at_most])} and {len(names) - at_most} more"
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


#: The fix for a record with more or fewer fields than the header.
ROW_FIX = ("Check quoting and that every row has as many fields as the header "
           "(a title, total or footer line is a row too: remove it).")


def open_text(path: Path) -> TextIO:
    """A text file for reading as the CSV reader does: gzip by its content, UTF-8 with or without a BOM."""
    import gzip

    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def csv_parse_error(src: TableSource, exc: BaseException) -> InputError | None:
    """DuckDB's error about a malformed CSV record, located in the whole file; None for other errors.

    DuckDB checks the records it samples when the file is registered and the rest when a
    query first reads them (validation's first scan), so a bad record past the sample
    surfaces there.
    """
    if src.format != "csv" or "CSV Error" not in str(exc):
        return None
    where = None
    try:
        with open_text(src.path) as lines:
            where = _first_bad_record(lines, src.delimiter, header=src.header)
    except (OSError, EOFError):
        pass  # DuckDB's own words below
    return InputError(f"the file cannot be parsed as CSV ({where or _csv_error(exc)}).", ROW_FIX)


def _first_bad_record(text: str | Iterable[str], delimiter: str, complete: bool = True,
                      header: bool = True) -> str | None:
    """Where the first malformed record of ``text`` starts, in words; None if none is found.

    ``text`` is the file's text or its lines (an open file). ``complete`` is False when
    ``text`` is only the head of the file: its last, cut line is left out, and a quoted
    field still open at its end is not an error.
    """
    if len(delimiter) != 1:
        return None
    if isinstance(text, str):
        if not complete:
            text = text[: text.rfind("\n") + 1]
        text = io.StringIO(text)
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    width = None
    start = 1
    try:
        for record in reader:
            if record and width is None:
                width = len(record)
            elif record and len(record) != width:
                first = "the header" if header else "the first line"
                return f"line {start} has {len(record)} field(s), {first} has {width}"
            start = reader.line_num + 1
    except csv.Error as exc:
        if "expected after" in str(exc) or ("end of data" in str(exc) and complete):
            return f"a quoted field starting on line {start} is not closed, or a quote is misplaced"
    return None


def _read_whitespace(con: Any, name: str, src: TableSource) -> ibis.Table:
    try:
        frame = pd.read_csv(
            src.path,
            sep=r"\s+",
            header=0 if src.header else None,
            names=list(src.names) or None,
            dtype=str,
            keep_default_na=False,
            engine="python" if not src.names else "c",
            encoding="utf-8",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"the file cannot be parsed as whitespace-separated text ({_first_line(exc)}).",
            "Check that every line has the same number of fields.",
        ) from None
    frame = frame.replace({"": None})
    return con.create_table(f"raw_{name}", frame, temp=True, overwrite=True)


def _read_duckdb(con: Any, name: str, src: TableSource) -> ibis.Table:
    alias = "src_" + "".join(ch if ch.isalnum() else "_" for ch in src.path.stem)
    if alias not in con.list_catalogs():
        try:
            con.attach(src.path, name=alias, read_only=True)
        except Exception as exc:
            raise InputError(
                f"cannot be opened as a DuckDB database ({_first_line(exc)}).",
                "Pass a valid DuckDB database file.",
            ) from None
    wanted = src.db_table or name
    schema, _, table = wanted.rpartition(".")
    try:
        return con.table(table, database=(alias, schema or "main"))
    except Exception:
        tables = _tables_of(con.con, alias)
        create = f"create a table named {TABLES[name].file_stems[-1]} in the database."
        raise InputError(
            f"the database has no table '{wanted}' ({'its tables: ' + ', '.join(tables) if tables else 'it has none'})",
            f'Set table = "{tables[0]}" (or another of its tables) in the [{name}] section of the mapping file, '
            f"or {create}" if tables else create.capitalize(),
        ) from None


def _rename(table: ibis.Table, src: TableSource, name: str | None = None) -> ibis.Table:
    """Name the contract columns of ``table`` as the contract does (see :func:`_contract_columns`).

    Columns that an explicit entry shadows are dropped; the columns outside the contract keep
    the names of the file.
    """
    chosen = {col: target for target, col in _contract_columns(table.columns, src, name).items()}
    wanted = TABLES[name].column_names if name else _ALL_COLUMNS
    kept = [col for col in table.columns if col in chosen or _normalise(col) not in wanted]
    if kept == list(table.columns) and all(chosen[col] == col for col in chosen):
        return table
    return table.select(*(table[col].name(chosen.get(col, col)) for col in kept))


def _normalise(name: str) -> str:
    return "_".join(part for part in re.split(r"\s|-", name.strip().lower()) if part)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _csv_error(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln[:160] for ln in lines if ln.startswith(("CSV Error", "Expected", "Original Line", "Invalid", "Maximum"))]
    return "; ".join(keep[:3]) or _first_line(exc)


def _csv_fix(header: str, delimiter: str) -> str:
    try:
        sniffed = csv.Sniffer().sniff(header, delimiters="".join(_DELIMITERS)).delimiter
    except csv.Error:
        sniffed = delimiter
    if sniffed != delimiter:
        shown = sniffed.replace("\t", "\\t")
        return (
            f"The file seems to be separated by {sniffed!r}, not {delimiter!r}: "
            f'set delimiter = "{shown}" in a mapping file (docs/mapping.md) or re-export with commas.'
        )
    return ROW_FIX
