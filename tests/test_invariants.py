"""Invariants of a run: no customer lost, reproducible outputs, no partial artifacts, refused models.

One small model is trained per module on generated data with a few awkward customers
added (leading zeros, a spreadsheet formula as id, an orphan, a customer who never
bought, one who joins after the as-of date).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import run_until_writing
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from clvtier.cli import app
from clvtier.errors import EXIT_BAD_MODEL, EXIT_INTERRUPTED, EXIT_OK, InputError
from clvtier.generate import generate
from clvtier.persist import write_run
from clvtier.predict import load as load_model
from clvtier.predict import predict
from clvtier.train import TrainConfig, TrainResult, train
from clvtier.validate import Dataset, load

SEED = 5
CONFIG = TrainConfig(candidates=("logreg",), cv_folds=3, n_boot=20, backtests=0, seed=SEED)
AS_OF = dt.date(2024, 6, 1)  # the day after the generator's last date
FORMULA = '=HYPERLINK("http://example.com","click")'

# customer_id -> (customers row or None, transaction dates)
AWKWARD: dict[str, tuple[str | None, list[str]]] = {
    "00001": ("2022-01-05,,40,Female,Paris", ["2023-02-01", "2024-03-01"]),  # not customer 1
    FORMULA: ("2022-03-01,,35,Male,=SUM(A1:A2)", ["2023-05-05"]),
    "+33 orphan": (None, ["2023-08-01", "2024-01-15"]),  # in transactions only
    "-7": ("2021-06-01,,52,Female,Lyon", []),  # never bought
    "@late": ("2024-07-01,,29,Male,Nice", ["2024-07-02"]),  # not known at AS_OF
}


def csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"') else value


def neutralised(value: str) -> str:
    """How a text cell reads in clvtier's CSV outputs (see predict.safe_csv_frame)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("invariants") / "data"
    generate(300, SEED, root)
    customers, transactions = [], []
    for k, (cid, (profile, dates)) in enumerate(AWKWARD.items()):
        if profile is not None:
            customers.append(f"{csv_cell(cid)},{profile}\n")
        transactions += [f"x{k}{j},{csv_cell(cid)},{d},{25 + j}.5,Clothing\n" for j, d in enumerate(dates)]
    with open(root / "customers_final.csv", "a", encoding="utf-8") as fh:
        fh.writelines(customers)
    with open(root / "transactions_final.csv", "a", encoding="utf-8") as fh:
        fh.writelines(transactions)
    return root


@pytest.fixture(scope="module")
def dataset(data_dir: Path) -> Dataset:
    return load(data_dir, as_of=AS_OF)


@pytest.fixture(scope="module")
def trained(dataset: Dataset) -> TrainResult:
    return train(dataset, CONFIG)


@pytest.fixture(scope="module")
def run_dir(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(trained, tmp_path_factory.mktemp("run") / "run")


def known_at(data_dir: Path, as_of: dt.date) -> set[str]:
    """Reference, in pandas: customers who joined or bought before ``as_of``."""
    read = {"dtype": str, "keep_default_na": False}
    cust = pd.read_csv(data_dir / "customers_final.csv", **read)
    tx = pd.read_csv(data_dir / "transactions_final.csv", **read)
    joined = cust.loc[pd.to_datetime(cust["join_date"]).dt.date < as_of, "customer_id"]
    bought = tx.loc[pd.to_datetime(tx["transaction_date"]).dt.date < as_of, "customer_id"]
    return {c.strip() for c in (*joined, *bought)}


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


# -- no customer lost ----------------------------------------------------------------------------
def test_every_known_customer_gets_exactly_one_score_row(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    known = known_at(data_dir, AS_OF)
    assert {"1", "00001", FORMULA, "+33 orphan", "-7"} <= known and "@late" not in known
    out = tmp_path / "scores.csv"
    result = cli("predict", str(data_dir), "--model", str(run_dir), "--out", str(out), "--as-of", AS_OF.isoformat())
    assert result.exit_code == EXIT_OK, result.output
    scores = pd.read_csv(out, dtype={"customer_id": str}, keep_default_na=False)
    assert not scores["customer_id"].duplicated().any()
    assert sorted(scores["customer_id"]) == sorted(neutralised(c) for c in known)
    assert f"Scored {len(known):,} customers" in result.output


def test_formula_ids_are_neutralised_in_csv_scores_only(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """A customer_id a spreadsheet would run arrives in scores.csv quoted; Parquet keeps it as it is."""
    csv_out, parquet_out = tmp_path / "scores.csv", tmp_path / "scores.parquet"
    for out in (csv_out, parquet_out):
        result = cli("predict", str(data_dir), "--model", str(run_dir), "--out", str(out), "--no-reasons",
                     "--as-of", AS_OF.isoformat())
        assert result.exit_code == EXIT_OK, result.output
    text = csv_out.read_text(encoding="utf-8")
    assert "\n\"'=HYPERLINK(\"\"http://example.com\"\",\"\"click\"\")\"," in text
    assert "\n'+33 orphan," in text and "\n'-7," in text
    assert not any(line.startswith(("=", "+", "-", "@")) for line in text.splitlines())
    ids = set(pd.read_parquet(parquet_out)["customer_id"])
    assert {FORMULA, "+33 orphan", "-7", "00001", "1"} <= ids


@settings(max_examples=6, deadline=None, derandomize=True)
@given(as_of=st.dates(min_value=dt.date(2020, 2, 1), max_value=AS_OF + dt.timedelta(days=1)))
def test_scores_cover_the_known_customers_at_any_as_of_date(
    run_dir: Path, data_dir: Path, dataset: Dataset, as_of: dt.date
) -> None:
    scores = predict(load_model(run_dir), dataset, as_of=as_of, with_reasons=False)
    assert len(scores) == scores["customer_id"].nunique()
    assert set(scores["customer_id"]) == known_at(data_dir, as_of)


def test_no_scores_as_of_a_date_the_data_cannot_know(run_dir: Path, dataset: Dataset) -> None:
    """After the data's as-of date (their export date), purchases may have happened that the data lack."""
    later = AS_OF + dt.timedelta(days=2)
    with pytest.raises(InputError, match=f"the cutoff {later} is more than a day after the data's as-of date {AS_OF}"):
        predict(load_model(run_dir), dataset, as_of=later, with_reasons=False)


# -- reproducible ----------------------------------------------------------------------------------
def without_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


@pytest.mark.slow
def test_same_inputs_and_seed_give_identical_outputs(
    run_dir: Path, data_dir: Path, dataset: Dataset, tmp_path: Path
) -> None:
    again = write_run(train(load(data_dir, as_of=AS_OF), CONFIG), tmp_path / "again")
    for name in ("cv.csv", "test_predictions.csv", "values.csv"):
        assert (again / name).read_bytes() == (run_dir / name).read_bytes(), name
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, again))
    assert without_timings(first) == without_timings(second)
    first, second = (json.loads((d / "metadata.json").read_text()) for d in (run_dir, again))
    # skops archives are not byte-reproducible, and metrics.json holds the timings
    for volatile in ("created", "model_sha256", "metadata_sha256"):
        first.pop(volatile), second.pop(volatile)
    for meta in (first, second):
        meta["files"].pop("metrics.json")
    assert first == second
    outs = []
    for k, model in enumerate((run_dir, again, again)):
        out = tmp_path / f"scores{k}.csv"
        result = cli("predict", str(data_dir), "--model", str(model), "--out", str(out), "--as-of", AS_OF.isoformat())
        assert result.exit_code == EXIT_OK, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


# -- interrupted runs leave nothing ----------------------------------------------------------------
def test_interrupted_run_directory_write_leaves_nothing(
    run_dir: Path, trained: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the model file is written: no RUN_DIR, no temporary directory, old run intact."""
    import clvtier.persist as persist

    real_save = persist.save_model

    def save_then_interrupt(*args: Any, **kwargs: Any) -> Any:
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(persist, "save_model", save_then_interrupt)
    parent = tmp_path / "runs"
    parent.mkdir()
    fresh = parent / "run"
    existing = copy_run(run_dir, parent / "existing")
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    for target in (fresh, existing):
        with pytest.raises(KeyboardInterrupt):
            write_run(trained, target)
    assert not fresh.exists()
    assert sorted(p.name for p in parent.iterdir()) == ["existing"]
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before


def test_interrupted_scores_write_leaves_nothing(
    run_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``predict`` interrupted half-way through writing scores.csv: exit 130 and no file at all."""
    real_to_csv = pd.DataFrame.to_csv

    def half_then_interrupt(self: pd.DataFrame, path: Any = None, *args: Any, **kwargs: Any) -> Any:
        real_to_csv(self.iloc[: len(self) // 2], path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_interrupt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = cli("predict", str(data_dir), "--model", str(run_dir), "--out", str(out_dir / "scores.csv"),
                 "--as-of", AS_OF.isoformat())
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "Interrupted; nothing was written." in result.output
    assert list(out_dir.iterdir()) == []




@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killed_predict_leaves_no_scores_file(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """SIGKILL mid-write: the half-written rows are in a hidden temporary file, never at OUT.

    A killed process cannot clean up: the hidden ``.scores.csv.*.tmp`` stays behind (the
    next run does not reuse it). SIGINT (Ctrl-C) removes it too: see the next test.
    """
    out_dir = tmp_path / "out"
    out = out_dir / "scores.csv"
    proc, partial = run_until_writing(
        ["predict", str(data_dir), "--model", str(run_dir), "--out", str(out), "--as-of", AS_OF.isoformat()], tmp_path
    )
    assert partial.parent == out_dir and partial.name.startswith(".scores.csv.") and partial.stat().st_size > 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    assert [p.name for p in out_dir.iterdir()] == [partial.name]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_ctrl_c_during_predict_leaves_nothing(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out = out_dir / "scores.csv"
    proc, _ = run_until_writing(
        ["predict", str(data_dir), "--model", str(run_dir), "--out", str(out), "--as-of", AS_OF.isoformat()], tmp_path
    )
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "Interrupted; nothing was written." in output
    assert list(out_dir.iterdir()) == []


# -- models that must be refused ---------------------------------------------------------------
def test_model_whose_bytes_changed_is_refused(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    bad = copy_run(run_dir, tmp_path / "tampered")
    raw = bytearray((bad / "model.skops").read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit
    (bad / "model.skops").write_bytes(bytes(raw))
    out = tmp_path / "scores.csv"
    result = cli("predict", str(data_dir), "--model", str(bad), "--out", str(out))
    assert result.exit_code == EXIT_BAD_MODEL, result.output
    text = " ".join(result.output.split())
    assert "model.skops changed after training" in text
    assert "SHA-256" in text and "metadata.json" in text
    assert "Fix: " in text
    assert "Traceback" not in text
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value", "mine"),
    [
        (("versions", "scikit-learn"), "0.24.2", "scikit-learn"),
        (("versions", "clvtier"), "99.1.0", "clvtier"),
        (("format_version",), 99, None),
    ],
    ids=["scikit-learn", "clvtier", "format"],
)
def test_model_from_an_incompatible_version_is_refused_naming_both(
    run_dir: Path, data_dir: Path, tmp_path: Path, field: tuple[str, ...], value: Any, mine: str | None
) -> None:
    from importlib.metadata import version

    from clvtier.persist import FORMAT_VERSION

    bad = copy_run(run_dir, tmp_path / "old")
    meta = json.loads((bad / "metadata.json").read_text())
    node = meta
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    (bad / "metadata.json").write_text(json.dumps(meta))
    out = tmp_path / "scores.csv"
    result = cli("predict", str(data_dir), "--model", str(bad), "--out", str(out))
    assert result.exit_code == EXIT_BAD_MODEL, result.output
    text = " ".join(result.output.split())
    have = version(mine) if mine else str(FORMAT_VERSION)
    assert str(value) in text and have in text, text
    assert "Fix: " in text
    assert not out.exists()
