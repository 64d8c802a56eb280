"""The ``clvtier`` command line: a thin shell over the library.

Library code raises :class:`clvtier.errors.ClvtierError`; only this module turns
errors into messages and exit codes (0 ok, 1 internal error, 2 bad input,
3 unusable model, 130 interrupted, 143 terminated).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from clvtier.errors import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    ClvtierError,
    DataError,
    InputError,
    is_engine_out_of_memory,
)

app = typer.Typer(
    name="clvtier",
    help="Predict customer-lifetime-value tiers (Low / Medium / High) from e-commerce tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: "clvtier[serve]" is a package extra, not markup
)
# Output captured to a file or a CI log is not cut to the default 80 columns of a
# non-terminal (COLUMNS still wins when set).
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Leave a reader that has gone to :func:`handle_errors` (rich would exit with code 1)."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


out = _Console(soft_wrap=True, width=_WIDTH)
err = _Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by :func:`main`'s handler.

    A KeyboardInterrupt, so that it stops a command exactly as Ctrl-C does: the
    ``finally`` blocks and context managers remove every temporary file, and code that
    lets Ctrl-C through without waiting for background work does the same for it.
    """


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


EngineOpt = Annotated[str, typer.Option(help="duckdb (default, one machine) or spark (needs clvtier[spark]).")]
MasterOpt = Annotated[str, typer.Option(help="Spark master URL, e.g. local[*], spark://host:7077, yarn.")]


MemoryOpt = Annotated[str | None, typer.Option(
    "--memory-limit", metavar="SIZE", help="DuckDB memory limit (e.g. 2GB, 500MB; default 2GB); beyond it DuckDB "
                                           "spills to a temporary directory under TMPDIR.")]
#: The DuckDB memory limit when --memory-limit is not given.
MEMORY_LIMIT = "2GB"
_SIZE = re.compile(r"^\s*(\d+(\.\d+)?|\.\d+)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Print timings and peak memory.")]


def _connect(memory_limit: str | None) -> Any:
    import duckdb

    from clvtier.ingest import connect

    if not memory_limit:
        return None
    size = _SIZE.match(memory_limit)
    if size is None or float(size.group(1)) <= 0:
        raise InputError(f"--memory-limit '{memory_limit}' is not a size.",
                         "Give a positive size with its unit, such as 2GB or 500MB.")
    try:
        return connect(memory_limit=memory_limit)
    except duckdb.ParserException as exc:
        reason = str(exc).removeprefix("Parser Error: ").split(" (")[0]
        raise InputError(f"--memory-limit '{memory_limit}' is not a size ({reason}).",
                         "Give a size with its unit, such as 2GB or 500MB.") from None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)  # macOS reports bytes


def _check_engine(engine: str) -> None:
    if engine not in ("duckdb", "spark"):
        raise InputError(f"--engine '{engine}' is unknown.", "Use duckdb or spark.")


DataArg = Annotated[
    Path,
    typer.Argument(
        help="Data directory, DuckDB file, single transactions file, or TOML mapping file.",
        show_default=False, metavar="DATA",
    ),
]
AsOfOpt = Annotated[
    str | None, typer.Option("--as-of", metavar="DATE", help="Export date of the data (YYYY-MM-DD); default today.")
]


OUT_OF_MEMORY_FIX = ("Fix: raise --memory-limit (DuckDB spills to disk beyond it, but some steps need "
                     "their working set in memory), convert CSV inputs to Parquet, or run on Spark "
                     "(--engine spark). Nothing was written.")


#: Errors of writing an output (the user's to fix, not a bug) and what to do about them.
WRITE_FIXES = {
    errno.EACCES: "Check the path's permissions, or choose an output path you can write to.",
    errno.EPERM: "Check the path's permissions, or choose an output path you can write to.",
    errno.EEXIST: "A file stands where a directory is needed: choose another output path.",
    errno.EROFS: "The file system is read-only: choose an output path on a writable one.",
    errno.ENOSPC: "The disk is full: free some space or write to another disk.",
    errno.EDQUOT: "The disk quota is exhausted: free some space or write elsewhere.",
    errno.EISDIR: "The output path is a directory: name a file inside it.",
    errno.ENOTDIR: "A part of the output path is a file, not a directory: choose another path.",
    errno.ENAMETOOLONG: "The output path is too long: choose a shorter one.",
}


def _os_error_place(exc: OSError) -> str:
    """The path an OS error is about, as the user named it (a temporary file's directory).

    A rename (``os.replace(temporary, output)``) names both paths: the output is the one
    the user knows.
    """
    paths = [Path(os.fsdecode(name)) for name in (exc.filename2, exc.filename) if name]
    if not paths:
        return "the output"
    for path in paths:
        # persist.atomic_path's temporary file, persist.atomic_dir's temporary and old run
        if not (path.name.startswith(".") and path.name.endswith((".tmp", ".old"))):
            return str(path)
    return f"cannot create a file in {paths[-1].parent}"


def handle_errors(fn: F) -> F:
    """Turn clvtier errors into a message and an exit code; never print a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a reader that has gone shows here, not in Python's flush at exit
            return result
        except DataError as exc:
            _print_problems(exc.problems)
            n_errors = sum(p.severity == "error" for p in exc.problems)
            err.print(f"Stopped: {n_errors} error(s); nothing was written.", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except ClvtierError as exc:
            err.print("Error: " + exc.message, highlight=False, markup=False)
            if exc.fix:
                err.print("Fix: " + exc.fix, highlight=False, markup=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            raise _stopped(exc) from None
        except typer.Exit:
            raise
        except BrokenPipeError:
            # Whoever read the output has gone (`clvtier validate DATA | head`): stop quietly, as
            # other command-line tools do, and spare Python's flush of stdout at exit a second error.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:
            code = errno.ENOSPC if exc.errno is None and "No space left" in str(exc) else exc.errno
            if code not in WRITE_FIXES:
                raise _internal(exc) from None
            err.print(f"Error: {_os_error_place(exc)}: {exc.strerror or os.strerror(code)}.",
                      highlight=False, markup=False)
            err.print(f"Fix: {WRITE_FIXES[code]} Nothing was written.", highlight=False, markup=False)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except MemoryError as exc:
            err.print(f"Error: out of memory ({exc}).", highlight=False, markup=False)
            err.print(OUT_OF_MEMORY_FIX, highlight=False, markup=False)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except Exception as exc:  # the last line of defence
            if isinstance(exc.__cause__, KeyboardInterrupt):
                # DuckDB stops a query on Ctrl-C or SIGTERM and raises its own error from the signal's.
                raise _stopped(exc.__cause__) from None
            if is_engine_out_of_memory(exc):
                err.print("Error: the query engine ran out of memory under its limit "
                          f"({str(exc).splitlines()[0]}).", highlight=False, markup=False)
                err.print(OUT_OF_MEMORY_FIX, highlight=False, markup=False)
                raise typer.Exit(EXIT_BAD_INPUT) from None
            raise _internal(exc) from None

    return wrapper  # type: ignore[return-value]


def _stopped(exc: KeyboardInterrupt) -> typer.Exit:
    """Report Ctrl-C (exit 130) or SIGTERM (exit 143); the cleanup has run."""
    if isinstance(exc, Terminated):
        err.print("Terminated; nothing was written.")
        return typer.Exit(EXIT_TERMINATED)
    err.print("Interrupted; nothing was written.")
    return typer.Exit(EXIT_INTERRUPTED)


def _internal(exc: Exception) -> typer.Exit:
    """Report an unexpected exception without a traceback (unless CLVTIER_DEBUG is set)."""
    if os.environ.get("CLVTIER_DEBUG"):
        raise exc
    err.print(
        f"Internal error: {type(exc).__name__}: {exc}\n"
        "This is a bug in clvtier. Run again with CLVTIER_DEBUG=1 for the traceback "
        "and report it with the command line you used.",
        highlight=False,
        markup=False,
    )
    return typer.Exit(EXIT_INTERNAL)


def _print_problems(problems: list[Any]) -> None:
    for p in problems:
        label = "Error" if p.severity == "error" else "Warning"
        stream = err if p.severity == "error" else out
        stream.print(f"{label}: {p.describe()}", highlight=False, markup=False)


@contextlib.contextmanager
def progress(description: str) -> Iterator[Callable[..., None]]:
    """A Rich progress bar; yields ``advance(total=None, completed=None, description=None)``."""
    quiet = not sys.stderr.isatty() and os.environ.get("CLVTIER_PROGRESS") != "1"
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=quiet,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(advance: float = 0, total: float | None = None, description: str | None = None) -> None:
            kwargs: dict[str, Any] = {"advance": advance}
            if total is not None:
                kwargs["total"] = total
            if description is not None:
                kwargs["description"] = description
            bar.update(task, **kwargs)

        yield update


def _date(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option} '{value}' is not a date.", "Write it as YYYY-MM-DD.") from None


@app.command()
@handle_errors
def validate(
    data: DataArg,
    as_of: AsOfOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check every table of DATA and report every problem at once (exit 2 on errors)."""
    from clvtier.validate import load

    try:
        with progress("Validating"):
            ds = load(data, as_of=_date(as_of, "--as-of"))
    except DataError as exc:
        if json_out:
            print(json.dumps({"ok": False, "problems": [p.to_dict() for p in exc.problems]}, indent=2))
            raise typer.Exit(exc.exit_code) from None
        raise
    except ClvtierError as exc:  # before any table was read: no such path, a bad option
        if json_out:
            print(json.dumps({"ok": False, "error": exc.message, "fix": exc.fix, "problems": []}, indent=2))
            raise typer.Exit(exc.exit_code) from None
        raise
    if json_out:
        print(json.dumps({"ok": True, "problems": [p.to_dict() for p in ds.problems],
                          "summary": ds.summary}, indent=2, default=str))
        return
    _print_problems(ds.problems)
    table = Table(title="Tables")
    for col in ("table", "file", "rows", "customers", "first date", "last date"):
        table.add_column(col)
    for name, s in ds.summary.items():
        table.add_row(name, Path(s["file"]).name, f"{s['rows']:,}", f"{s.get('customers') or 0:,}",
                      str(s.get("first_date") or "-"), str(s.get("last_date") or "-"))
    out.print(table)
    out.print(f"[green]OK[/green]: {len(ds.warnings)} warning(s), no errors.")


def _no_memory_limit(memory_limit: str | None) -> None:
    """--memory-limit is DuckDB's: refused with Spark, whose memory its own configuration sets."""
    if memory_limit is not None:
        raise InputError("--memory-limit applies to the DuckDB engine only.",
                         "With Spark, set spark.driver.memory and spark.executor.memory in the Spark "
                         "configuration (spark-submit --conf, or spark-defaults.conf).")


def _check_model_dir(path: Path) -> None:
    """A mistyped model path is bad input (exit 2), not an unusable model (exit 3)."""
    if not path.exists():
        raise InputError(f"{path} does not exist.", "Pass the RUN_DIR written by 'clvtier train'.")


def _check_cutoff(ds: Any, cutoff: dt.date, what: str = "the cutoff") -> None:
    """Refuse a cutoff no customer is known at; point out one past the last transaction."""
    from clvtier.clv import check_someone_known

    check_someone_known(ds.summary, cutoff, what)
    last = ds.summary["transactions"]["last_date"]
    if cutoff > last + dt.timedelta(days=1):
        days = (cutoff - last).days
        out.print(f"Note: {what} {cutoff} is {days:,} days after the last transaction ({last}); "
                  "recency and window features count those days as days without purchases.")


@app.command()
@handle_errors
def features(
    data: DataArg,
    cutoff: Annotated[str, typer.Option(metavar="DATE", help="Use events strictly before this date (YYYY-MM-DD).")],
    out_file: Annotated[
        str, typer.Option("--out", metavar="FILE",
                          help="Output file, .csv or .parquet (with --engine spark: any Spark path).")
    ],
    as_of: AsOfOpt = None,
    engine: EngineOpt = "duckdb",
    master: MasterOpt = "local[*]",
    memory_limit: MemoryOpt = None,
) -> None:
    """Write one row of features per customer known at the cutoff."""
    from clvtier.features import write_features
    from clvtier.validate import load

    if engine == "spark":
        _no_memory_limit(memory_limit)
        from clvtier.features import check_known

        when = _date(cutoff, "--cutoff") or dt.date.today()
        check_known(when, _date(as_of, "--as-of") or dt.date.today())
        from clvtier.spark import spark_features

        n = spark_features(str(data), when, out_file, master=master)
        out.print(f"Wrote features of {n:,} customers to {out_file} with Spark ({master}).")
        return
    _check_engine(engine)
    out_path = Path(out_file)

    with progress("Validating"):
        ds = load(data, con=_connect(memory_limit or MEMORY_LIMIT), as_of=_date(as_of, "--as-of"))
    _print_problems(ds.warnings)
    when = _date(cutoff, "--cutoff") or dt.date.today()
    _check_cutoff(ds, when)
    with progress("Building features"):
        fs = write_features(ds, when, out_path)
    out.print(
        f"Wrote {fs.n_customers:,} customers x {len(fs.columns)} features to {out_path} "
        f"(metadata: {out_path.name}.meta.json)."
    )
    if fs.undated:
        out.print(f"Not time-bounded (may leak the future): {', '.join(fs.undated)}")


@app.command()
@handle_errors
def generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the four tables to.")],
    customers: Annotated[int, typer.Option("--customers", min=1, help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Generate EcomX-like synthetic data with ground truth."""
    from clvtier.generate import generate as gen

    if fmt not in ("csv", "parquet"):
        raise InputError(f"--format '{fmt}' is not known.", "Use --format csv or --format parquet.")

    with progress("Generating") as update:
        update(total=customers)
        result = gen(customers, seed, out_dir, fmt=fmt, progress=lambda n: update(advance=n))  # type: ignore[arg-type]
    out.print(
        f"Wrote {result.n_customers:,} customers and {result.n_transactions:,} transactions to {out_dir}"
    )


def _tier_cuts(tiers: str) -> tuple[str, tuple[float, float] | None]:
    """Parse --tiers: 'quartile', 'quantiles:0.3,0.8' or 'amounts:100,1000'."""
    if tiers == "quartile":
        return "quartile", None
    method, _, rest = tiers.partition(":")
    try:
        a, b = (float(x) for x in rest.split(","))
    except ValueError:
        raise InputError(
            f"--tiers '{tiers}' is not understood.",
            "Use quartile, quantiles:Q1,Q2 (e.g. quantiles:0.25,0.75) or amounts:A1,A2 (e.g. amounts:100,1000).",
        ) from None
    if method not in ("quantiles", "amounts"):
        raise InputError(f"--tiers method '{method}' is unknown.", "Use quartile, quantiles:Q1,Q2 or amounts:A1,A2.")
    if not a < b or (method == "quantiles" and not 0 < a < b < 1):
        raise InputError(
            f"--tiers '{tiers}': the two cut points must increase"
            + (" and lie strictly between 0 and 1." if method == "quantiles" else "."),
            "E.g. quantiles:0.25,0.75 or amounts:100,1000.",
        )
    return method, (a, b)


def _train_config(mode: str, target: str | None, cutoff: str | None, horizon_days: int, metric: str,
                  cv: int, seed: int, candidates: str | None, tiers: str, backtests: int,
                  drop_undated: bool, n_boot: int, max_train_customers: int | None = 200_000) -> Any:
    from clvtier.models import DEFAULT_CANDIDATES
    from clvtier.train import TrainConfig

    method, cuts = _tier_cuts(tiers)
    names = tuple(c.strip() for c in candidates.split(",") if c.strip()) if candidates else DEFAULT_CANDIDATES
    return TrainConfig(
        mode=mode, target=target or ("future" if mode == "predictive" else "total_spend"),
        cutoff=_date(cutoff, "--cutoff"), horizon_days=horizon_days, metric=metric, cv_folds=cv,
        seed=seed, candidates=names, tier_method=method, tier_cuts=cuts, backtests=backtests,
        drop_undated=drop_undated, n_boot=n_boot,
        max_train_customers=max_train_customers if max_train_customers else None,
    )


def run_training(data: Path, run_dir: Path, cfg: Any, as_of: dt.date | None = None,
                 write_report: bool = True, memory_limit: str | None = None) -> Any:
    """Validate, train, evaluate, write the run directory (and report); return the result."""
    from clvtier.persist import check_run_dir, write_run
    from clvtier.train import train as train_fn
    from clvtier.validate import load

    check_run_dir(run_dir)  # before hours of training, not after
    with progress("Validating data"):
        ds = load(data, con=_connect(memory_limit), as_of=as_of)
    _print_problems(ds.warnings)
    with progress("Training") as update:
        result = train_fn(ds, cfg, progress=lambda step: update(description=step))
    with progress("Writing the run directory"):
        write_run(result, run_dir, command=" ".join(["clvtier", *sys.argv[1:]]),
                  extra={"training_sample": result.metrics.get("training_sample")})
    if write_report:
        _write_report(run_dir)
    return result


def _write_report(run_dir: Path) -> Path | None:
    try:
        from clvtier.report import write_report
    except ImportError:
        return None
    with progress("Writing the report"):
        return write_report(run_dir)


def print_result(result: Any, run_dir: Path) -> None:
    """A concise summary: candidates x metrics with the baseline rows, the chosen model, the outputs."""
    from clvtier.evaluate import NEEDS_PREDICTED_HIGH, none_predicted_high

    m = result.metrics
    if m["mode"] == "snapshot":
        out.print(
            "[bold yellow]SNAPSHOT MODE: features and CLV come from the same period; total spend is both "
            "a feature and the label. These numbers describe the past; they are not evidence of prediction."
            "[/bold yellow]"
        )
    th = m["thresholds"]
    # With the zero rule, Low is "no spend" (value <= 0), not "below a threshold".
    low = "Low = no spend (<= 0)" if th.get("zero_rule_applied") else f"Low < {th['low_cut']:,.2f} <="
    period = (f"Cutoff {m['cutoff']}, horizon {m['horizon_days']} days" if m["mode"] != "snapshot"
              else f"Snapshot of every event before {m['cutoff']}")
    out.print(
        f"{period}, target '{m['target']}'. "
        f"Tiers: {low} Medium < {th['high_cut']:,.2f} <= High ({th['rule']}). "
        f"Customers: {m['n_train']:,} train / {m['n_test']:,} test.",
        highlight=False,
    )
    sample = m.get("training_sample") or {}
    if sample.get("used"):
        out.print(
            f"Trained on a stratified sample of {sample['size']:,} of the {sample['population']:,} customers "
            "known at the cutoff (--max-train-customers; strata: zero value, quartiles of positive value).",
            highlight=False,
        )
    cv = {row["model"]: row for row in m["cv"]}
    table = Table(title=f"Held-out customers (n = {m['n_test']:,}); selection by {m['selection_metric']} CV")
    for col in ("model", f"CV {m['selection_metric']}", "accuracy", "macro F1", "High precision",
                "High recall", "revenue in predicted High", "Spearman"):
        table.add_column(col, justify="right" if col != "model" else "left")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    undefined = False
    for name, row in m["test"].items():
        label = name + (" (chosen)" if name == m["chosen"] else "")
        cvs = f"{cv[name]['mean']:.3f} ± {cv[name]['std']:.3f}" if name in cv else "-"
        style = "bold green" if name == m["chosen"] else ("dim" if name.startswith("baseline") else None)
        if none_predicted_high(row):  # undefined, stored as 0
            row = {k: v for k, v in row.items() if k not in NEEDS_PREDICTED_HIGH}
            undefined = True
        table.add_row(label, cvs, fmt(row.get("accuracy")), fmt(row.get("macro_f1")),
                      fmt(row.get("high_precision")), fmt(row.get("high_recall")),
                      fmt(row.get("revenue_capture_high")), fmt(row.get("spearman")), style=style)
    out.print(table)
    if undefined:
        out.print("- : undefined (no customer predicted High, so no precision or revenue share of High).",
                  highlight=False)
    h = m["headline"]
    if "macro_f1" in h:
        out.print(
            f"Chosen: [bold]{m['chosen']}[/bold]; macro-F1 {h['macro_f1']['value']:.3f} "
            f"(95 % CI {h['macro_f1']['lo']:.3f}-{h['macro_f1']['hi']:.3f}).",
            highlight=False,
        )
    audit = m.get("leakage_audit", {})
    if audit.get("with_undated") and audit.get("without_undated"):
        out.print(
            f"Leakage audit: macro-F1 {fmt(audit['with_undated']['macro_f1'])} with undated features, "
            f"{fmt(audit['without_undated']['macro_f1'])} without ({', '.join(audit['undated_features'])}).",
            highlight=False,
        )
    for row in m.get("backtest", []):
        if "skipped" in row:
            out.print(f"Backtest at {row['cutoff']}: skipped ({row['skipped']})", highlight=False)
        else:
            bgnbd = f", BG/NBD + Gamma-Gamma {fmt(row['bgnbd_gg']['macro_f1'])}" if "bgnbd_gg" in row else ""
            out.print(
                f"Backtest at {row['cutoff']}: macro-F1 {fmt(row['model']['macro_f1'])} "
                f"(carry-forward {fmt(row['carry_forward']['macro_f1'])}{bgnbd}).",
                highlight=False,
            )
    written = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    out.print(f"Outputs in {run_dir}/: {', '.join(written)}", highlight=False)


ModeOpt = Annotated[str, typer.Option(help="predictive (default: features before the cutoff, CLV after it) "
                                            "or snapshot (the original same-period analysis; leaks).")]
TargetOpt = Annotated[str | None, typer.Option(help="predictive: future (default) or total; "
                                                    "snapshot: total_spend (default) or formula.")]
CutoffOpt = Annotated[str | None, typer.Option(metavar="DATE",
                                               help="Cutoff date T (default: last date minus the horizon).")]
HorizonOpt = Annotated[int, typer.Option("--horizon-days", min=1, help="Horizon H in days.")]
MetricOpt = Annotated[str, typer.Option(help="Selection metric: macro_f1, accuracy, weighted_f1, balanced_accuracy.")]
CvOpt = Annotated[int, typer.Option("--cv", min=2, help="Cross-validation folds.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
CandOpt = Annotated[str | None, typer.Option(
    help="Comma-separated candidate models (default: logreg,knn,random_forest,naive_bayes,blend; also hist_gb).")]
TiersOpt = Annotated[str, typer.Option(help="quartile, quantiles:Q1,Q2 or amounts:A1,A2.")]
BacktestOpt = Annotated[int, typer.Option(min=0, help="Earlier cutoffs in the out-of-time backtest.")]
UndatedOpt = Annotated[bool, typer.Option("--drop-undated", help="Leave out features that are not time-bounded.")]
BootOpt = Annotated[int, typer.Option("--bootstrap", min=1, help="Bootstrap resamples for the 95 % intervals.")]


@app.command()
@handle_errors
def train(
    data: DataArg,
    run_dir: Annotated[Path, typer.Option("--out", help="Run directory to write.")],
    mode: ModeOpt = "predictive",
    target: TargetOpt = None,
    cutoff: CutoffOpt = None,
    horizon_days: HorizonOpt = 365,
    metric: MetricOpt = "macro_f1",
    cv: CvOpt = 5,
    seed: SeedOpt = 42,
    candidates: CandOpt = None,
    tiers: TiersOpt = "quartile",
    backtests: BacktestOpt = 2,
    drop_undated: UndatedOpt = False,
    n_boot: BootOpt = 500,
    as_of: AsOfOpt = None,
    max_train_customers: Annotated[int, typer.Option(
        "--max-train-customers", help="Train on a stratified sample of this many customers when more are "
                                      "known at the cutoff (0: never sample).")] = 200_000,
    memory_limit: MemoryOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train and evaluate CLV-tier models; write the model, metrics and report to RUN_DIR."""
    cfg = _train_config(mode, target, cutoff, horizon_days, metric, cv, seed, candidates, tiers,
                        backtests, drop_undated, n_boot, max_train_customers)
    result = run_training(data, run_dir, cfg, as_of=_date(as_of, "--as-of"),
                          memory_limit=memory_limit or MEMORY_LIMIT)
    print_result(result, run_dir)
    if verbose:
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
        out.print(f"Timings: {steps}. Peak memory: {peak_rss_mb():,.0f} MB.", highlight=False)


@app.command()
@handle_errors
def predict(
    data: DataArg,
    model_dir: Annotated[Path, typer.Option("--model", help="Run directory written by 'clvtier train'.")],
    out_file: Annotated[Path, typer.Option("--out", help="Scores file, .csv or .parquet.")],
    as_of: Annotated[str | None, typer.Option(
        "--as-of", metavar="DATE", help="Score as of this date: only events before it count "
                        "(default: the day after the last transaction).")] = None,
    no_reasons: Annotated[bool, typer.Option("--no-reasons", help="Skip the per-customer reasons (faster).")] = False,
    engine: EngineOpt = "duckdb",
    master: MasterOpt = "local[*]",
    memory_limit: MemoryOpt = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Customers scored at a time "
                                                                 "(memory grows with it).")] = 250_000,
    verbose: VerboseOpt = False,
) -> None:
    """Score every customer known at the as-of date: tier, P(Low/Medium/High), top three reasons.

    Streams: the features of every customer go to a temporary Parquet file and are scored
    and written in chunks, so memory stays bounded for any number of customers.
    """
    from clvtier.persist import check_not_input, check_not_run_file
    from clvtier.predict import load as load_model
    from clvtier.predict import score_to_file, scoring_date, unseen_levels
    from clvtier.validate import load

    as_of_date = _date(as_of, "--as-of")
    today = dt.date.today()
    if as_of_date is not None and as_of_date > today + dt.timedelta(days=1):
        raise InputError(f"--as-of {as_of_date} is after today ({today}): no event can be known then.",
                         "Score as of today or an earlier date.")
    if engine == "spark":
        _no_memory_limit(memory_limit)
        from clvtier.spark import spark_predict

        n = spark_predict(str(data), model_dir, str(out_file), as_of=as_of_date, master=master,
                          with_reasons=not no_reasons)
        out.print(f"Scored {n:,} customers with Spark ({master}); wrote {out_file}.")
        return
    _check_engine(engine)

    check_not_input(out_file)  # a directory or a write-protected file: said before the work
    _check_model_dir(model_dir)
    check_not_run_file(out_file, model_dir)
    model = load_model(model_dir)
    with progress("Validating data"):
        # --as-of is the date to score at, not the export date: events after it are
        # simply not used, and validation does not warn about them.
        ds = load(data, con=_connect(memory_limit or MEMORY_LIMIT))
    _print_problems(ds.warnings)
    if as_of_date is not None:
        _check_cutoff(ds, as_of_date, "the scoring date")
    _print_problems(unseen_levels(model, ds, scoring_date(ds, as_of_date)))
    if model.metadata.get("describes_past_only"):
        out.print("[bold yellow]This model was trained in snapshot mode: its tiers describe customers' past "
                  "spend, not a prediction of their future value.[/bold yellow]")
    scored = 0
    with progress("Building features, then scoring") as update:

        def advance(done: int, total: int) -> None:
            nonlocal scored
            update(total=total, advance=done - scored, description="Scoring")
            scored = done

        summary = score_to_file(model, ds, out_file, as_of=as_of_date, with_reasons=not no_reasons,
                                chunk_size=chunk_size, progress=advance)
    check = "in = out" if summary.n_in == summary.n_out else "in != out"
    out.print(
        f"Scored {summary.n_out:,} customers as of {summary.as_of} "
        f"(known then: {summary.n_in:,}; {check}): "
        + ", ".join(f"{t} {summary.tiers.get(t, 0):,}" for t in ("Low", "Medium", "High"))
        + f". Wrote {out_file}.",
        highlight=False,
    )
    if verbose:
        out.print(
            f"Timings: features {summary.feature_seconds:.1f} s, scoring {summary.scoring_seconds:.1f} s "
            f"({summary.customers_per_second:,.0f} customers/s). Peak memory: {peak_rss_mb():,.0f} MB.",
            highlight=False,
        )


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by 'clvtier train'.", metavar="RUN_DIR")],
) -> None:
    """Write RUN_DIR/report.html, a self-contained HTML report."""
    from clvtier.persist import load_model

    _check_model_dir(run_dir)
    load_model(run_dir)
    path = _write_report(run_dir)
    if path is None:
        raise InputError("the report module is not available in this installation.", "Reinstall clvtier.")
    out.print(f"Wrote {path}")


@app.command()
@handle_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the demo data and run.")] = Path("demo-run"),
    customers: Annotated[int, typer.Option(min=1, help="Synthetic customers.")] = 10_000,
    seed: SeedOpt = 42,
) -> None:
    """Generate EcomX-like data, validate, train, evaluate, score and report, end to end."""
    import time

    from clvtier.generate import generate as gen
    from clvtier.persist import is_run
    from clvtier.predict import load as load_model
    from clvtier.predict import predict as predict_fn
    from clvtier.predict import write_scores
    from clvtier.validate import load

    t0 = time.perf_counter()
    data_dir = out_dir / "data"
    with progress("Generating synthetic data") as update:
        update(total=customers)
        gen(customers, seed, data_dir, progress=lambda n: update(advance=n))
    out.print(f"Generated {customers:,} customers in {data_dir}/ (ground truth in ground_truth.csv).")
    cfg = _train_config("predictive", None, None, 365, "macro_f1", 5, seed, None, "quartile", 2, False, 300)
    run_dir = out_dir / "run"
    if is_run(run_dir):
        (run_dir / "scores.csv").unlink(missing_ok=True)  # an earlier demo's, written again below
    result = run_training(data_dir, run_dir, cfg)
    with progress("Scoring every customer"):
        ds = load(data_dir)
        scores = predict_fn(load_model(run_dir), ds)
        write_scores(scores, run_dir / "scores.csv")
    print_result(result, run_dir)
    out.print(f"Scored {len(scores):,} customers as of {ds.last_date + dt.timedelta(days=1)}: {run_dir}/scores.csv")
    out.print(f"Demo finished in {time.perf_counter() - t0:.0f} s.")


@app.command()
@handle_errors
def serve(
    model_dir: Annotated[Path, typer.Option("--model", envvar="CLVTIER_MODEL",
                                            help="Run directory written by 'clvtier train'.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="CLVTIER_API_KEY",
                                                help="Require this key in the X-API-Key header.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes (up to one per core).")] = 1,
) -> None:
    """Serve the model over HTTP (needs the 'serve' extra: pip install 'clvtier[serve]')."""
    try:
        from clvtier.serve import run
    except ImportError as exc:
        raise InputError(f"the HTTP service is not installed ({exc.name} is missing).",
                         "Install it with: pip install 'clvtier[serve]'") from None
    _check_model_dir(model_dir)
    run(model_dir, host=host, port=port, api_key=api_key, workers=workers)


def main() -> None:
    """Console-script entry point."""
    # cron and CI timeouts, systemd, Kubernetes and Airflow stop a command with SIGTERM.
    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    main()
