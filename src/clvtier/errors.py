"""The exception tree of clvtier.

Library code raises these; only the CLI and the HTTP service translate them into
messages, exit codes and status codes. Every error carries a ``fix``: what the
user should do next.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal

#: Exit codes of the command line (documented in the README).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_BAD_MODEL = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + 15: stopped by SIGTERM, what a shell reports for it
EXIT_BROKEN_PIPE = 141  # what a shell reports for a program stopped by SIGPIPE


@dataclass(frozen=True)
class Problem:
    """One finding about the input data.

    Attributes
    ----------
    severity : {"error", "warning"}
        Errors stop processing; warnings are reported and processing continues.
    table : str
        Contract table name (``customers``, ``transactions``, ...).
    message : str
        What is wrong, in one sentence.
    fix : str
        What to do about it.
    file : str or None
        The file the table was read from.
    column : str or None
        The offending column, when there is one.
    count : int
        How many rows are affected (0 when the problem is not about rows).
    rows : tuple of int
        The first offending line numbers in the file (1-based, header is line 1).
    """

    severity: Literal["error", "warning"]
    table: str
    message: str
    fix: str
    file: str | None = None
    column: str | None = None
    count: int = 0
    rows: tuple[int, ...] = field(default_factory=tuple)
    code: str = ""

    def describe(self) -> str:
        """Return the problem as one human-readable paragraph."""
        where = self.file or self.table
        if self.column:
            where += f", column '{self.column}'"
        text = f"{where}: {self.message}"
        details = []
        # The count once, not twice: left out when the message already states it (as a
        # whole number, not a digit inside another one such as a year).
        if self.count and not re.search(rf"(?<![\d,.]){self.count:,}(?!\d|[,.]\d)", self.message):
            details.append(f"{self.count:,} row{'s' if self.count != 1 else ''}")
        if self.rows:
            details.append("first at line " + ", ".join(str(r) for r in self.rows))
        if details:
            text += f" ({'; '.join(details)})"
        return f"{text}. Fix: {self.fix}"

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        out = asdict(self)
        out["rows"] = list(self.rows)
        return out


class ClvtierError(Exception):
    """Base class of every error clvtier raises on purpose."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}" if self.fix else self.message


class InputError(ClvtierError):
    """Bad input from the user: data files, options, configuration."""

    exit_code = EXIT_BAD_INPUT


class DataError(InputError):
    """The data failed validation; ``problems`` lists every error found at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        n = len(errors)
        summary = f"{n} data error{'s' if n != 1 else ''} found:\n" + "\n".join(
            "  - " + p.describe() for p in errors
        )
        super().__init__(summary)

    def __str__(self) -> str:
        return self.message


class ModelError(ClvtierError):
    """A saved model cannot be used: tampered, incompatible, or not matching the data."""

    exit_code = EXIT_BAD_MODEL


def is_engine_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB's out-of-memory error (its class lives in the duckdb module)."""
    return type(exc).__name__ == "OutOfMemoryException" and type(exc).__module__.startswith(("duckdb", "_duckdb"))
