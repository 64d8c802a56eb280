"""The corpus of malformed inputs in ``tests/data/bad``: each case is accepted or refused as documented.

The expected behaviour of every case is in ``tests/data/bad/cases.toml`` (and, for
readers, in ``docs/bad-inputs.md``); the files are written by ``make_corpus.py``.
"""

from __future__ import annotations

import errno
import filecmp
import importlib.util
import json
import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from clvtier import ingest
from clvtier.cli import app
from clvtier.errors import EXIT_BAD_INPUT, EXIT_OK

CORPUS = Path(__file__).parent / "data" / "bad"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
AS_OF = "2024-06-30"
CUTOFF = "2024-01-01"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    name: str
    outcome: str
    behaviour: str
    source: str = "."
    warnings: tuple[str, ...] = ()
    code: str = ""
    file: str = ""
    column: str | None = None
    message: tuple[str, ...] = ()
    fix: str = ""
    customers: int | None = None
    first_date: str | None = None
    last_date: str | None = None
    setup: str | None = None


def read_cases() -> dict[str, Case]:
    spec = tomllib.loads((CORPUS / "cases.toml").read_text(encoding="utf-8"))
    out = {}
    for name, entry in spec.items():
        entry = dict(entry)
        for key in ("warnings", "message"):
            entry[key] = tuple(entry.get(key, ()))
        out[name] = Case(name=name, **entry)
    return out


CASES = read_cases()
REFUSED = [c for c in CASES.values() if c.outcome == "refuse"]


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def make_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable to clvtier: chmod 000, or, as root (whom chmod does not stop),
    an ``open`` in clvtier.ingest that refuses it as the operating system would."""
    if not IS_ROOT:
        path.chmod(0)
        return
    real_open = open

    def refusing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(file).resolve() == path.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(ingest, "open", refusing_open, raising=False)


def prepare(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy the case to ``tmp_path/<case name>`` (an empty directory stays empty) and return its source."""
    root = tmp_path / case.name
    shutil.copytree(CORPUS / case.name, root, ignore=shutil.ignore_patterns(".gitkeep"))
    if case.setup == "unreadable":
        make_unreadable(root / "transactions.csv", monkeypatch)
    elif case.setup is not None:
        raise AssertionError(f"unknown setup {case.setup!r}")
    return root / case.source if case.source != "." else root


def test_corpus_is_large_and_every_case_is_documented() -> None:
    on_disk = {p.name for p in CORPUS.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert on_disk == set(CASES)
    assert len(CASES) >= 40
    assert {c.outcome for c in CASES.values()} == {"accept", "refuse"}
    for case in CASES.values():
        assert case.behaviour, case.name
        if case.outcome == "refuse":
            assert case.code and case.file and case.message and case.fix, case.name
    docs = DOCS.read_text(encoding="utf-8")
    for name in CASES:
        assert f"| `{name}` |" in docs, f"{name} missing from docs/bad-inputs.md"


def test_committed_corpus_is_what_make_corpus_writes(tmp_path: Path) -> None:
    """The committed bytes are reproducible: rerunning the script changes nothing."""
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = module.build(tmp_path)
    assert set(names) == set(CASES)
    for name in names:
        made = sorted(p.name for p in (tmp_path / name).iterdir())
        committed = sorted(p.name for p in (CORPUS / name).iterdir())
        assert made == committed, name
        for file in made:
            if file.endswith((".parquet", ".duckdb")):
                continue  # their bytes carry the writer's version; compared by content below
            assert filecmp.cmp(tmp_path / name / file, CORPUS / name / file, shallow=False), f"{name}/{file}"
    for parquet in CORPUS.glob("*/*.parquet"):
        if parquet.parent.name == "parquet-corrupt":
            assert parquet.read_bytes() == (tmp_path / "parquet-corrupt" / parquet.name).read_bytes()
            continue
        made = pd.read_parquet(tmp_path / parquet.parent.name / parquet.name)
        pd.testing.assert_frame_equal(made, pd.read_parquet(parquet))
    for database in CORPUS.glob("*/*.duckdb"):
        if database.parent.name == "duckdb-not-a-database":
            continue
        assert duckdb_tables(tmp_path / database.parent.name / database.name) == duckdb_tables(database)


def duckdb_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        names = [row[0] for row in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {name: con.execute(f'SELECT * FROM "{name}" ORDER BY ALL').fetchall() for name in names}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``validate`` accepts or refuses the case as documented; ``features`` writes only what it accepts."""
    source = prepare(case, tmp_path, monkeypatch)
    result = cli("validate", str(source), "--as-of", AS_OF, "--json")
    assert "Traceback" not in result.output
    expected_exit = EXIT_OK if case.outcome == "accept" else EXIT_BAD_INPUT
    assert result.exit_code == expected_exit, result.output

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "features.parquet"
    features = cli("features", str(source), "--cutoff", CUTOFF, "--out", str(out), "--as-of", AS_OF)
    assert "Traceback" not in features.output
    assert features.exit_code == expected_exit, features.output

    if case.outcome == "accept":
        report = json.loads(result.stdout)
        assert report["ok"] is True
        assert sorted(p["code"] for p in report["problems"]) == sorted(case.warnings)
        assert all(p["severity"] == "warning" for p in report["problems"])
        tx = report["summary"]["transactions"]
        if case.customers is not None:
            assert tx["customers"] == case.customers
        if case.first_date:
            assert tx["first_date"] == case.first_date
        if case.last_date:
            assert tx["last_date"] == case.last_date
        assert out.is_file()
        assert len(pd.read_parquet(out)) > 0
        return

    # refused: the structured report (when validation ran) ...
    if case.code == "input":  # refused before any table was read: the message and the fix, as JSON
        report = json.loads(result.stdout)
        assert report["ok"] is False and report["problems"] == []
        assert case.file in report["error"] and report["fix"]
    else:
        report = json.loads(result.stdout)
        assert report["ok"] is False
        errors = [p for p in report["problems"] if p["severity"] == "error"]
        assert [p["code"] for p in errors] == [case.code], errors
        [problem] = errors
        assert problem["column"] == case.column
        if problem["file"] is not None:
            assert Path(problem["file"]).name == case.file
    # ... and the text a user reads: file, column, what is wrong, "Fix:", what to do
    text = " ".join(features.output.split())
    assert case.file in text
    if case.column:
        assert f"column '{case.column}'" in text
    for fragment in case.message:
        assert fragment in text, fragment
    assert "Fix: " in text
    assert case.fix in text.split("Fix: ", 1)[1]
    # ... and nothing written, not even a temporary file
    assert list(out_dir.iterdir()) == []


@pytest.mark.skipif(IS_ROOT, reason="root reads a chmod 000 file; the case runs with a patched open() instead")
def test_file_without_read_permission_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(CORPUS / "no-read-permission", data)
    (data / "transactions.csv").chmod(0)
    try:
        result = cli("validate", str(data), "--as-of", AS_OF)
    finally:
        (data / "transactions.csv").chmod(0o644)
    assert result.exit_code == EXIT_BAD_INPUT
    assert "transactions.csv: cannot read the file (Permission denied)" in result.output


def test_unreadable_mapping_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mapping = tmp_path / "shop.toml"
    mapping.write_text('[transactions]\npath = "tx.csv"\n')

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    result = cli("validate", str(mapping))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "shop.toml: cannot read the mapping file (Permission denied)" in result.output
    assert "Fix: Check the file's permissions" in result.output


def test_leading_zeros_make_different_customers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids are trimmed text: '00001' and '1' are two customers, '  1 ' and '1' one."""
    for name, ids in (("leading-zero-ids", {"1", "00001", "3"}), ("padded-ids", {"1", "3"})):
        out = tmp_path / f"{name}.parquet"
        result = cli("features", str(prepare(CASES[name], tmp_path, monkeypatch)), "--cutoff", CUTOFF,
                     "--out", str(out), "--as-of", AS_OF)
        assert result.exit_code == EXIT_OK, result.output
        assert set(pd.read_parquet(out)["customer_id"]) == ids


def test_a_line_longer_than_the_reader_allows_is_refused_clearly() -> None:
    """The DuckDB error quotes the offending line: the message keeps only its start."""
    result = cli("validate", str(CORPUS / "line-over-2mb"), "--as-of", AS_OF)
    assert result.exit_code == EXIT_BAD_INPUT
    assert len(result.output) < 2_000
