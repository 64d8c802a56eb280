"""Spark: features and scores for data beyond one machine, with the same definition and the same model.

The contract tables are read by Spark (text files with every column as text,
Parquet as it is), typed by the engine-neutral Ibis expressions of
:mod:`clvtier.validate`, and featurised by :func:`clvtier.features.feature_expr`
executed on Ibis' PySpark backend. Scores come from the saved pipeline, broadcast
to the workers and applied per batch with ``mapInPandas`` through
:func:`clvtier.predict.score_frame`, so every engine shares one dtype preparation
and gives the same tiers.

Needs the ``spark`` extra (``pip install 'clvtier[spark]'``) and Java 17. Local
mode (``local[*]``) works but is slow on a few cores: Spark is for clusters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ibis.expr.types as ir
import pandas as pd

from clvtier.clv import check_someone_known
from clvtier.errors import DataError, InputError, Problem
from clvtier.features import FeatureSpec, feature_columns, feature_expr, learn_spec
from clvtier.ingest import TableSource, discover, read_mapping
from clvtier.ingest import _rename as rename_to_contract
from clvtier.schema import EXTENSIONS, TABLES
from clvtier.validate import _kind_label, _parse_fix, _TableCheck, _to_date, too_large

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from clvtier.predict import Model

__all__ = ["SparkData", "feature_frame", "read_tables", "score", "spark_features", "spark_predict",
           "spark_session"]

_INSTALL_SPARK = "pip install 'clvtier[spark]' (on the driver and on every worker, same versions)."
_INSTALL_JAVA = (
    "Install Java 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME."
)
_MASTER_FIX = "Use a master URL such as local[*], local[4], spark://HOST:7077, yarn or k8s://https://HOST:443."
#: Output columns of :func:`score`, in order, with their Spark SQL types.
SCORE_SCHEMA = "customer_id string, tier string, p_low double, p_medium double, p_high double"


@dataclass
class SparkData:
    """Typed contract tables on an Ibis PySpark backend.

    Attributes
    ----------
    session : SparkSession
    con : ibis PySpark backend
        The backend the tables are registered on (``ibis.pyspark.connect(session)``).
    tables : dict
        Contract table name -> typed Ibis table.
    sources : dict
        Contract table name -> how it was read; ``path`` is a local ``Path`` or a URI string.
    summary : dict
        Rows, customers and date range per table (empty when the checks were skipped).
    """

    session: SparkSession
    con: Any
    tables: dict[str, ir.Table]
    sources: dict[str, TableSource]
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)

    def last_date(self) -> dt.date:
        """The last transaction date (from the checks, or one query when they were skipped)."""
        known = self.summary.get("transactions", {}).get("last_date")
        if known is not None:
            return known
        tx = self.tables["transactions"]
        value = _to_date(self.con.execute(tx.transaction_date.max()))
        if value is None:
            raise InputError("the transactions table has no dates.", "Check the transactions data.")
        return value


# -- session ---------------------------------------------------------------------------------
def spark_session(master: str = "local[*]", config: dict[str, str] | None = None) -> SparkSession:
    """Start (or join) the Spark session clvtier works on.

    Parameters
    ----------
    master : str
        Spark master URL: ``local[*]``, ``spark://host:7077``, ``yarn``, ``k8s://...``.
    config : dict, optional
        Extra Spark settings, e.g. ``{"spark.executor.memory": "8g"}``.

    Returns
    -------
    SparkSession
        App name ``clvtier``, session time zone UTC; in local mode a few shuffle
        partitions (two per core) instead of Spark's 200.

    Notes
    -----
    ``PYSPARK_PYTHON`` and ``PYSPARK_DRIVER_PYTHON`` are set to this interpreter when
    unset, because the workers must run the Python that has clvtier installed
    (``mapInPandas`` fails otherwise). An existing session is reused; then only
    runtime settings apply.
    """
    SparkSession = _pyspark().sql.SparkSession
    if not (master == "yarn" or master.startswith(("local", "spark://", "k8s://"))):
        raise InputError(f"--master '{master}' is not a Spark master URL.", _MASTER_FIX)
    if master.startswith("local") and not re.fullmatch(
            r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?|local-cluster\[\d+,\d+,\d+\]", master):
        raise InputError(f"--master '{master}' is not a local master URL.", _MASTER_FIX)
    if master.startswith("spark://"):
        _reachable(master)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    _require_java()
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    local = re.fullmatch(r"local(\[(\*|\d+)(,\d+)?\])?", master)
    if local:
        cores = os.cpu_count() or 2
        if local.group(2) and local.group(2) != "*":
            cores = int(local.group(2))
        settings["spark.sql.shuffle.partitions"] = str(max(2, 2 * cores))
    settings.update(config or {})
    builder = SparkSession.builder.master(master).appName("clvtier")
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j / PySpark raise several types when the JVM does not come up
        raise InputError(
            f"Spark could not start with master '{master}' ({_first_line(exc)}); Spark's own error is above.",
            f"{_MASTER_FIX} Check that 'java -version' shows Java 17 and that the cluster is reachable.",
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def _reachable(master: str) -> None:
    """Refuse a standalone master nobody listens at before Spark retries it for a minute or more."""
    import socket

    for hostport in master.removeprefix("spark://").split(","):  # several masters for high availability
        host, _, port = hostport.rpartition(":")
        try:
            with socket.create_connection((host or hostport, int(port or 7077)), timeout=5):
                return
        except (OSError, ValueError):
            continue
    raise InputError(f"no Spark master answers at {master}.",
                     "Start the master, or check the host and port (the standalone default is 7077).")


def _pyspark() -> Any:
    try:
        import pyspark
        import pyspark.sql
    except ImportError:
        raise InputError("PySpark is not installed.", _INSTALL_SPARK) from None
    return pyspark


def _require_java() -> None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return
    if shutil.which("java") is None:
        raise InputError("Spark needs Java, and no 'java' was found on PATH or in JAVA_HOME.", _INSTALL_JAVA)


def _connect(session: SparkSession) -> Any:
    import ibis

    try:
        return ibis.pyspark.connect(session)
    except (ImportError, AttributeError):
        raise InputError("Ibis' PySpark backend is not installed.", _INSTALL_SPARK) from None


# -- reading -----------------------------------------------------------------------------------
def read_tables(session: SparkSession, source: str | Path, check: bool = True) -> SparkData:
    """Read a data source with Spark and type it like :func:`clvtier.validate.load` does.

    Parameters
    ----------
    session : SparkSession
    source : str or Path
        A local directory, file or TOML mapping (as for the DuckDB engine), or a URI that
        Spark reads (``s3://``, ``hdfs://``, ``abfss://``, ...): a directory holding the
        standard table files (``transactions.parquet``, ``customers.csv``, ... or Spark's
        output directories of those names), a single transactions file, or a mapping file
        whose paths are relative to it or URIs themselves.
    check : bool
        Check the values in one pass per table: values that do not parse, empty ids or
        required values, NaN or infinite amounts, duplicate keys and empty tables are
        reported all at once as a :class:`DataError` (without line numbers: Spark does
        not keep them). Warnings are not reported; run ``clvtier validate`` for those.

    Returns
    -------
    SparkData
    """
    con = _connect(session)
    with _spark_errors():
        sources = _sources(session, source)
    if "transactions" not in sources:
        raise InputError(
            f"no transactions table found in {source}.",
            "Check the path or URI. Name the files transactions.parquet / transactions.csv (or *_final.*), or describe "
            "the layout in a mapping file (docs/mapping.md).",
        )
    problems: list[Problem] = []
    tables: dict[str, ir.Table] = {}
    summary: dict[str, dict[str, Any]] = {}
    with _spark_errors():
        for name, src in sources.items():
            view = f"clvtier_raw_{name}"
            _read(session, src).createOrReplaceTempView(view)
            raw = rename_to_contract(con.table(view), src, name)
            checker = _TableCheck(con, name, raw, src, dt.date.today())
            if not checker._check_columns():
                problems.extend(checker.problems)
                continue
            typed = checker._typed()
            if src.format == "csv":  # parse text once: later steps read the table several times
                typed = typed.cache()
            if check:
                stats = checker._stats()
                problems.extend(_errors(name, src, stats))
                summary[name] = _summary(name, stats)
            tables[name] = typed
    if problems:
        raise DataError(problems)
    return SparkData(session, con, tables, sources, summary)


def _sources(session: SparkSession, source: str | Path) -> dict[str, TableSource]:
    """Where each table is: a local ``Path`` (found on the driver) or a URI string (found by Spark)."""
    text = str(source).removeprefix("file://")
    path = Path(text)
    if not path.exists():  # a URI, or a path on Spark's default file system (HDFS on most clusters)
        if text.lower().endswith(".toml"):
            with _spark_errors():
                body = session.read.text(text, wholetext=True).first()
            return _mapping(body[0] if body else "", text.rsplit("/", 1)[0] if "/" in text else ".", text)
        if text.lower().endswith((".parquet", ".pq", ".csv", ".csv.gz", ".txt", ".tsv")):
            return {"transactions": _uri_source(text)}
        return _probe(session, text.rstrip("/"))
    if path.is_file() and path.suffix.lower() == ".toml":
        return _mapping(path.read_text(encoding="utf-8-sig"), path.resolve().parent, path)
    found = discover(path)
    if path.is_dir():  # Spark writes a table as a directory of part files
        for table in TABLES.values():
            hits = [path / f"{stem}{ext}" for stem in table.file_stems for ext in (".parquet", ".csv")]
            hit = next((h for h in hits if h.is_dir()), None)
            if table.name not in found and hit is not None:
                found[table.name] = TableSource(path=hit, format=_format_of(hit.name))
    return found


def _format_of(name: str) -> str:
    return "parquet" if name.lower().endswith((".parquet", ".pq")) else "csv"


def _uri_source(location: str) -> TableSource:
    delim = "\t" if location.lower().endswith(".tsv") else ","
    return TableSource(path=location, format=_format_of(location), delimiter=delim)  # type: ignore[arg-type]


def _probe(session: SparkSession, directory: str) -> dict[str, TableSource]:
    """Find the standard table files under a directory URI by asking Spark for each name."""
    from pyspark.errors import AnalysisException

    found: dict[str, TableSource] = {}
    for table in TABLES.values():
        for stem in table.file_stems:
            for ext in EXTENSIONS:
                src = _uri_source(f"{directory}/{stem}{ext}")
                try:
                    _read(session, src)
                except AnalysisException as exc:
                    if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
                        continue
                    raise
                found[table.name] = src
                break
            if table.name in found:
                break
    return found


def _mapping(text: str, base: str | Path, where: str | Path) -> dict[str, TableSource]:
    """A mapping file checked by :func:`clvtier.ingest.read_mapping`, whose paths may be URIs.

    Relative paths are relative to the mapping file: ``base`` is its directory, a local
    ``Path`` or a URI; ``where`` is the mapping file, named in messages.
    """
    text = text.removeprefix("\ufeff")
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "mapping.toml"
        file.write_text(text, encoding="utf-8")
        checked = read_mapping(file)
    raw = tomllib.loads(text)
    out = {}
    for name, src in checked.items():
        given = str(raw[name]["path"])
        location: str | Path
        if "://" in given and not given.startswith("file://"):
            location = given
        elif isinstance(base, Path):
            location = (base / given.removeprefix("file://")).resolve()
        else:
            location = given if given.startswith("/") else f"{base}/{given}"
        out[name] = replace(src, path=location, mapping=where)  # type: ignore[arg-type]
    return out


def _read(session: SparkSession, src: TableSource) -> DataFrame:
    location = _location(src)
    if src.format == "duckdb":
        raise InputError(
            f"{location}: Spark cannot read DuckDB databases.",
            "Export the tables to Parquet (COPY t TO 'transactions.parquet'), or use --engine duckdb.",
        )
    if src.format == "parquet":
        return session.read.parquet(location)
    if src.delimiter == "whitespace":
        return _read_whitespace(session, src)
    reader = session.read.options(
        header=src.header, inferSchema=False, sep=src.delimiter, quote='"', escape='"',
        mode="FAILFAST", encoding="UTF-8",
    )
    df = reader.csv(location)
    if src.names:
        df = df.toDF(*src.names)
    return df


def _location(src: TableSource) -> str:
    """What Spark is told to read: a path found on the driver as a file URI, a URI as given."""
    return src.path.resolve().as_uri() if isinstance(src.path, Path) else str(src.path)


def _read_whitespace(session: SparkSession, src: TableSource) -> DataFrame:
    from pyspark.sql import functions as F

    lines = session.read.text(_location(src))
    lines = lines.filter(F.length(F.trim(lines.value)) > 0)
    names = list(src.names)
    if src.header:
        first = lines.first()
        header_line = first[0] if first else ""
        names = names or header_line.split()
        lines = lines.filter(lines.value != header_line)
    fields = F.split(F.trim(lines.value), r"\s+")
    return lines.select(*(fields.getItem(i).alias(n) for i, n in enumerate(names)))


def _errors(name: str, src: TableSource, stats: dict[str, Any]) -> list[Problem]:
    """The errors :mod:`clvtier.validate` would report, from the same one-pass statistics."""
    contract = TABLES[name]
    file = str(src.path)
    out: list[Problem] = []
    if not int(stats.get("n_rows") or 0):
        return [Problem("error", name, "the table has no rows",
                        "Export the table again with its data, or remove it if it is optional.",
                        file=file, code="empty")]
    for col in contract.columns:
        bad = int(stats.get(f"bad_{col.name}") or 0)
        if bad:
            out.append(Problem("error", name, f"{bad:,} value(s) do not parse as "
                               f"{_kind_label(col, src.date_format)}", _parse_fix(col), file=file,
                               column=col.name, count=bad, code="parse"))
        nulls = int(stats.get(f"null_{col.name}") or 0)
        if nulls and (col.kind == "id" or col.required):
            out.append(Problem("error", name, f"{nulls:,} row(s) have an empty {col.name}",
                               f"Fill in {col.name} or drop those rows.", file=file, column=col.name,
                               count=nulls, code="empty_key" if col.kind == "id" else "missing_value"))
        nonfinite = int(stats.get(f"nonfinite_{col.name}") or 0)
        if nonfinite:
            out.append(Problem("error", name, f"{nonfinite:,} value(s) are NaN or infinite",
                               "Replace them with real amounts or drop those rows.", file=file,
                               column=col.name, count=nonfinite, code="non_finite"))
        if huge := int(stats.get(f"huge_{col.name}") or 0):
            out.append(too_large(name, huge, file, column=col.name))
    key = contract.key
    if key and "n_key" in stats:
        dupes = int(stats["n_key"]) - int(stats["n_distinct_key"])
        if dupes > 0:
            out.append(Problem("error", name, f"{dupes:,} duplicate {key} value(s); {key} must be unique "
                               f"in {name}", "Remove the duplicate rows or give each row its own id.",
                               file=file, column=key, count=dupes, code="duplicate_key"))
    return out


def _summary(name: str, stats: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": int(stats.get("n_rows") or 0),
                           "customers": int(stats.get("n_customers") or 0)}
    dated = TABLES[name].dated_by
    if dated:
        out["first_date"] = _to_date(stats.get(f"min_{dated}"))
        out["last_date"] = _to_date(stats.get(f"max_{dated}"))
    return out


# -- features ----------------------------------------------------------------------------------
def feature_frame(data: SparkData, cutoff: dt.date, spec: FeatureSpec | None = None) -> DataFrame:
    """Features of every customer known at ``cutoff``, as a Spark DataFrame.

    The expression is :func:`clvtier.features.feature_expr`, the one the DuckDB engine
    runs, compiled for Spark with the cutoff bound; ``spec`` is learned from the data
    when omitted (two small queries).
    """
    spec = spec or learn_spec(data.tables, data.con)
    expr, param = feature_expr(data.tables, spec)
    with _spark_errors():
        return data.session.sql(data.con.compile(expr, params={param: cutoff}))


def spark_features(source: str, cutoff: dt.date, out: str, master: str = "local[*]", *,
                   session: SparkSession | None = None, check: bool = True) -> int:
    """Write the features of every customer known at ``cutoff`` with Spark.

    Parameters
    ----------
    source : str
        Data source, local or any Spark-readable URI (see :func:`read_tables`).
    cutoff : date
        Events on or after the cutoff are ignored.
    out : str
        Output path or URI: CSV files (with a header) when it ends in ``.csv``, Parquet
        otherwise; a directory of part files either way. An earlier Spark output there is
        replaced; a local path that holds input data or other files is refused. For a
        local path, ``OUT.meta.json`` records the cutoff, spec and columns.
    master : str
        Spark master URL, used when no ``session`` is given.
    session : SparkSession, optional
        An existing session (a notebook's ``spark``).
    check : bool
        Check the data's values first (see :func:`read_tables`).

    Returns
    -------
    int
        Number of customers written.

    Examples
    --------
    >>> from clvtier.spark import spark_features  # doctest: +SKIP
    >>> spark_features("s3://bucket/data", date(2024, 1, 1), "s3://bucket/features.parquet",
    ...                master="yarn")  # doctest: +SKIP
    1250000
    """
    session = session or spark_session(master)
    data = read_tables(session, source, check=check)
    _check_output(out, data)
    check_someone_known(data.summary, cutoff)  # when the checks ran
    spec = learn_spec(data.tables, data.con)
    frame = feature_frame(data, cutoff, spec)
    n = _write(session, frame, out)
    if "://" not in out or out.startswith("file://"):
        from clvtier.persist import atomic_path

        columns = feature_columns(spec)
        meta = {
            "cutoff": cutoff.isoformat(), "spec": spec.to_dict(), "columns": columns,
            "not_time_bounded": [c for c, m in columns.items() if not m["time_bounded"]],
            "n_customers": n, "engine": "spark",
        }
        target = Path(out.removeprefix("file://"))
        with atomic_path(target.with_name(target.name + ".meta.json")) as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
    return n


# -- scoring -----------------------------------------------------------------------------------
def score(features: DataFrame, model: Model, with_reasons: bool = False) -> DataFrame:
    """Score a Spark DataFrame of features with a loaded model, batch by batch on the workers.

    The model is broadcast once; each Arrow batch goes through
    :func:`clvtier.predict.score_frame`, the function every other engine scores with.

    Parameters
    ----------
    features : DataFrame
        ``customer_id`` and the model's feature columns (from :func:`feature_frame`).
    model : Model
        From :func:`clvtier.predict.load`.
    with_reasons : bool
        Add the top three reasons and their effects (one extra prediction per feature).

    Returns
    -------
    DataFrame
        customer_id string, tier string, p_low / p_medium / p_high double
        (and reason_1..3 string, reason_1..3_effect double).
    """
    from clvtier.predict import N_REASONS, prepare

    prepare(_empty_like(features), model)  # fail on the driver, not on every worker
    broadcast = features.sparkSession.sparkContext.broadcast(model)
    schema = SCORE_SCHEMA
    if with_reasons:
        schema += "".join(f", reason_{k} string, reason_{k}_effect double" for k in range(1, N_REASONS + 1))
    columns = ["customer_id", *model.feature_names]
    return features.select(*columns).mapInPandas(_scorer(broadcast, with_reasons), schema)


def _scorer(broadcast: Any, with_reasons: bool) -> Any:
    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from clvtier.predict import score_frame

        model = broadcast.value
        for batch in batches:
            yield score_frame(model, batch, with_reasons=with_reasons)

    return score_batches


def _empty_like(frame: DataFrame) -> pd.DataFrame:
    numeric = ("double", "float", "bigint", "int", "smallint", "tinyint", "boolean")
    return pd.DataFrame({
        name: pd.Series(dtype="float64" if kind.startswith(numeric) else "object")
        for name, kind in frame.dtypes
    })


def spark_predict(source: str, model_dir: str | Path, out: str, as_of: dt.date | None = None,
                  master: str = "local[*]", *, session: SparkSession | None = None,
                  with_reasons: bool = False, check: bool = True) -> int:
    """Score every customer known at ``as_of`` with Spark and write a directory of Parquet part files.

    Parameters
    ----------
    source : str
        Data source, local or any Spark-readable URI (see :func:`read_tables`).
    model_dir : str or Path
        Run directory written by ``clvtier train``, on the driver.
    out : str
        Output path or URI: a directory of Parquet part files. An earlier Spark output there
        is replaced; a local path that holds input data or other files is refused.
    as_of : date, optional
        The day after the last transaction when omitted (as for the DuckDB engine).
    master : str
        Spark master URL, used when no ``session`` is given.
    session : SparkSession, optional
    with_reasons : bool
        Add the top three reasons per customer (slower).
    check : bool
        Check the data's values first (see :func:`read_tables`).

    Returns
    -------
    int
        Number of customers scored.
    """
    from clvtier.predict import load

    if out.lower().endswith(".csv"):
        raise InputError(f"{out}: Spark scores are written as Parquet.", "Name the output .parquet (a directory).")
    model = load(model_dir)
    session = session or spark_session(master)
    data = read_tables(session, source, check=check)
    _check_output(out, data)
    as_of = as_of or data.last_date() + dt.timedelta(days=1)
    check_someone_known(data.summary, as_of, "the scoring date")
    scores = score(feature_frame(data, as_of, model.spec), model, with_reasons=with_reasons)
    return _write(session, scores, out)


# -- output ------------------------------------------------------------------------------------
def _formula_safe(frame: DataFrame) -> DataFrame:
    """Text cells a spreadsheet would run as a formula get a leading quote (:func:`clvtier.persist.safe_csv_frame`)."""
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.types import StringType

    from clvtier.persist import FORMULA_STARTS

    risky = "^[" + "".join(re.escape(c) for c in FORMULA_STARTS) + "]"
    return frame.select(*(
        F.when(F.col(f.name).rlike(risky), F.concat(F.lit("'"), F.col(f.name))).otherwise(F.col(f.name)).alias(f.name)
        if isinstance(f.dataType, StringType) else F.col(f.name)
        for f in frame.schema.fields
    ))


#: What an earlier Spark output directory holds: part files, _SUCCESS and their .crc files.
_SPARK_OUTPUT = re.compile(r"^(part-.*|_.*|\..*\.crc)$")


def _check_output(out: str, data: SparkData) -> None:
    """Refuse an output that would replace input data or anything but an earlier Spark output.

    Spark replaces the whole output path. It is checked through the file system Spark
    writes it with (:func:`_check_uri_output`): a URI's (``hdfs://``, ``s3a://``, ...), or
    for a path without a scheme the cluster's default one. A local path is also checked
    here with its symbolic links resolved.
    """
    if "://" not in out or out.startswith("file://"):
        target = Path(out.removeprefix("file://")).resolve()
        for name, src in data.sources.items():
            if isinstance(src.path, Path):
                read = src.path.resolve()
                if target == read or target in read.parents:
                    raise _replaces_input(out, name, src.path)
        if target.is_file() or (target.is_dir() and any(not _SPARK_OUTPUT.match(p.name) for p in target.iterdir())):
            raise _replaces_other(out)
    _check_uri_output(out, data)


def _check_uri_output(out: str, data: SparkData) -> None:
    """:func:`_check_output` asked of Hadoop's file system for the output's scheme."""
    session = data.session
    jvm: Any = session._jvm  # the classic session's gateway to the JVM
    conf = session._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    hadoop_path = jvm.org.apache.hadoop.fs.Path

    def qualified(uri: str) -> tuple[Any, Any]:
        path = hadoop_path(uri)
        with _spark_errors():
            fs = path.getFileSystem(conf)
        return fs, fs.makeQualified(path)

    fs, target = qualified(out)
    for name, src in data.sources.items():
        read: Any = qualified(str(src.path))[1]
        while read is not None:
            if read.equals(target):
                raise _replaces_input(out, name, src.path)
            read = read.getParent()
    if fs.exists(target) and (fs.getFileStatus(target).isFile() or any(
            not _SPARK_OUTPUT.match(status.getPath().getName()) for status in fs.listStatus(target))):
        raise _replaces_other(out)


def _replaces_input(out: str, name: str, path: Any) -> InputError:
    return InputError(f"{out} holds the {name} table's input ({path}); Spark would delete it when it "
                      "replaces the output.", "Choose an output path outside the data.")


def _replaces_other(out: str) -> InputError:
    return InputError(f"{out} exists and is not an earlier Spark output; Spark would replace it.",
                      "Choose a new output path, or remove that one first.")


def _write(session: SparkSession, frame: DataFrame, out: str) -> int:
    csv = out.lower().endswith(".csv")
    if csv:
        frame = _formula_safe(frame)
    with _spark_errors():
        writer = frame.write.mode("overwrite")
        if csv:
            # Quotes inside a value are doubled (RFC 4180, as DuckDB and pandas write them), not
            # escaped with a backslash (Spark's default).
            writer.option("header", True).option("escape", '"').csv(out)
            written = session.read.option("header", True).option("escape", '"').csv(out)
        else:
            writer.parquet(out)
            written = session.read.parquet(out)
        return int(written.count())


@contextlib.contextmanager
def _spark_errors() -> Iterator[None]:
    """Spark's errors about paths and files, as InputError with a fix; anything else is a bug."""
    from pyspark.errors import AnalysisException

    try:
        yield
    except AnalysisException as exc:
        text = _first_line(exc)
        if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
            raise InputError(f"Spark found no such path ({text}).", "Check the path or URI of the data.") from None
        if "UNABLE_TO_INFER_SCHEMA" in text:
            raise InputError(f"Spark cannot read the file ({text}).",
                             "Check that the file is non-empty Parquet or CSV.") from None
        raise
    except Exception as exc:
        text = str(exc)
        if "MALFORMED_RECORD_IN_PARSING" in text or "Malformed records are detected" in text:
            file = re.search(r"reading file (\S+?)\.?\s", text)
            raise InputError(
                f"{file.group(1) if file else 'a CSV file'}: a row has more or fewer fields than the header, "
                "or broken quoting.",
                "Run 'clvtier validate' on the data to find the line, then fix or re-export the file.",
            ) from None
        scheme = re.search(r'No FileSystem for scheme "?[\w.+-]+"?', text)
        if scheme:
            raise InputError(
                f"Spark cannot read this kind of URI ({scheme.group(0)}).",
                "Add the file system's connector to Spark (e.g. hadoop-aws for s3a://), or use its URI scheme.",
            ) from None
        raise


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__

