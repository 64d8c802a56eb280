"""The ``clvtier`` command line: a thin shell over the library.

Library code raises :class:`clvtier.errors.ClvtierError`; only this module turns
errors into messages and exit codes (0 ok, 1 internal error, 2 bad input,
3 unusable model, 130 interrupted).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from clvtier.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, ClvtierError, DataError, InputError

app = typer.Typer(
    name="clvtier",
    help="Predict customer-lifetime-value tiers (Low / Medium / High) from e-commerce tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

DataArg = Annotated[
    Path,
    typer.Argument(
        help="Data directory, DuckDB file, single transactions file, or TOML mapping file.",
        show_default=False,
    ),
]
AsOfOpt = Annotated[
    str | None, typer.Option("--as-of", help="Export date of the data (YYYY-MM-DD); default today.")
]


def handle_errors(fn: F) -> F:
    """Turn clvtier errors into a message and an exit code; never print a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
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
        except KeyboardInterrupt:
            err.print("Interrupted; nothing was written.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except typer.Exit:
            raise
        except Exception as exc:  # the last line of defence: no traceback for the user
            if os.environ.get("CLVTIER_DEBUG"):
                raise
            err.print(
                f"Internal error: {type(exc).__name__}: {exc}\n"
                "This is a bug in clvtier. Run again with CLVTIER_DEBUG=1 for the traceback "
                "and report it with the command line you used.",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def _print_problems(problems: list[Any]) -> None:
    for p in problems:
        label = "ERROR" if p.severity == "error" else "warning"
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


@app.command()
@handle_errors
def features(
    data: DataArg,
    cutoff: Annotated[str, typer.Option(help="Use events strictly before this date (YYYY-MM-DD).")],
    out_file: Annotated[Path, typer.Option("--out", help="Output file, .csv or .parquet.")],
    as_of: AsOfOpt = None,
) -> None:
    """Write one row of features per customer known at the cutoff."""
    from clvtier.features import write_features
    from clvtier.validate import load

    with progress("Validating"):
        ds = load(data, as_of=_date(as_of, "--as-of"))
    _print_problems(ds.warnings)
    with progress("Building features"):
        fs = write_features(ds, _date(cutoff, "--cutoff") or dt.date.today(), out_file)
    out.print(
        f"Wrote {len(fs.frame):,} customers x {len(fs.columns)} features to {out_file} "
        f"(metadata: {out_file.name}.meta.json)."
    )
    if fs.undated:
        out.print(f"Not time-bounded (may leak the future): {', '.join(fs.undated)}")


@app.command()
@handle_errors
def generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the four tables to.")],
    customers: Annotated[int, typer.Option("--customers", help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Generate EcomX-like synthetic data with ground truth."""
    from clvtier.generate import generate as gen

    with progress("Generating") as update:
        update(total=customers)
        result = gen(customers, seed, out_dir, fmt=fmt, progress=lambda n: update(advance=n))  # type: ignore[arg-type]
    out.print(
        f"Wrote {result.n_customers:,} customers and {result.n_transactions:,} transactions to {out_dir}"
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
