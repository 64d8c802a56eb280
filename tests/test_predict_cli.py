"""Scoring through ``clvtier predict`` and the Python API: category names the model does not know,
output paths that cannot take the scores, SIGTERM, and arguments of the wrong type."""

from __future__ import annotations

import datetime as dt
import errno
import importlib
import os
import shutil
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from conftest import quick_run, run_until_writing
from typer.testing import CliRunner

import clvtier
from clvtier import cli
from clvtier.cli import EXIT_TERMINATED, app
from clvtier.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, InputError
from clvtier.generate import generate
from clvtier.predict import Model, UnseenLevelWarning, score_frame, score_to_file, unseen_levels, write_scores
from clvtier.predict import load as load_model

runner = CliRunner()
AS_OF = dt.date(2024, 6, 1)  # the day after the generator's last date


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(500, 11, tmp_path_factory.mktemp("predict") / "data").out


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_run(data_dir, tmp_path_factory.mktemp("predict") / "run")


@pytest.fixture(scope="module")
def model(run_dir: Path) -> Model:
    return load_model(run_dir)


def predict_cli(data: Path, run: Path, out: Path, *args: str) -> Any:
    return runner.invoke(app, ["predict", str(data), "--model", str(run), "--out", str(out), *args])


def flat(text: str) -> str:
    return " ".join(text.split())


def edited(data_dir: Path, to: Path, table: str, edit: Callable[[pd.DataFrame], None]) -> Path:
    """A copy of the data with ``edit`` applied to one table (read and written as text)."""
    shutil.copytree(data_dir, to)
    (to / "ground_truth.csv").unlink(missing_ok=True)
    path = to / f"{table}_final.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)
    return to


def purchase_share(data: Path, categories: set[str], before: dt.date = AS_OF) -> float:
    """Share of purchase spend (positive amounts) before ``before`` in ``categories``, from the file."""
    tx = pd.read_csv(data / "transactions_final.csv", parse_dates=["transaction_date"])
    bought = tx[(tx.transaction_amount > 0) & (tx.transaction_date < pd.Timestamp(before))]
    return float(bought.loc[bought.product_category.isin(categories), "transaction_amount"].sum()
                 / bought.transaction_amount.sum())


# -- product categories and promotion types the model does not know --------------------------------
def test_the_training_data_give_no_warning(data_dir: Path, run_dir: Path, model: Model, tmp_path: Path) -> None:
    res = predict_cli(data_dir, run_dir, tmp_path / "s.csv")
    assert res.exit_code == EXIT_OK, res.output
    assert "has no feature for" not in res.output
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenLevelWarning)
        clvtier.predict(model, clvtier.load(data_dir), with_reasons=False)


def test_a_respelled_category_and_promotion_type_are_named_with_their_share(
    data_dir: Path, run_dir: Path, tmp_path: Path
) -> None:
    def upper_clothing(tx: pd.DataFrame) -> None:
        tx.loc[tx.product_category == "Clothing", "product_category"] = "CLOTHING"

    data = edited(data_dir, tmp_path / "upper", "transactions", upper_clothing)
    mk = pd.read_csv(data / "marketing_final.csv", dtype=str, keep_default_na=False)
    mk.loc[mk.promotion_type == "Discount", "promotion_type"] = "discount"
    mk.to_csv(data / "marketing_final.csv", index=False)
    before = mk[pd.to_datetime(mk.campaign_date) < pd.Timestamp(AS_OF)]
    offers = (before.promotion_type == "discount").mean()
    share = purchase_share(data, {"CLOTHING"})
    assert 0.1 < share < 0.9 and 0.1 < offers < 0.9

    out = tmp_path / "s.csv"
    res = predict_cli(data, run_dir, out)
    assert res.exit_code == EXIT_OK, res.output
    text = flat(res.output)
    assert (f"Warning: {data / 'transactions_final.csv'}, column 'product_category': {100 * share:.1f} % of "
            f"purchase spend before {AS_OF} is in product categories the model has no feature for") in text
    assert f"'CLOTHING' ({100 * share:.1f} %); 'CLOTHING' looks like 'Clothing'" in text
    assert "Fix: Use the spelling the model was trained with (" in text
    assert (f"Warning: {data / 'marketing_final.csv'}, column 'promotion_type': {100 * offers:.1f} % of offers "
            f"before {AS_OF} are of promotion types the model has no feature for") in text
    assert "'discount' looks like 'Discount'" in text
    assert out.is_file()


def test_a_new_category_is_named_and_only_events_before_the_date_count(
    data_dir: Path, run_dir: Path, model: Model, tmp_path: Path
) -> None:
    def toys_in_2024(tx: pd.DataFrame) -> None:
        late = tx.transaction_date >= "2024-01-01"
        tx.loc[late & (tx.index % 3 == 0), "product_category"] = "Toys"

    data = edited(data_dir, tmp_path / "toys", "transactions", toys_in_2024)
    share = purchase_share(data, {"Toys"})
    res = predict_cli(data, run_dir, tmp_path / "s.csv")
    assert res.exit_code == EXIT_OK, res.output
    text = flat(res.output)
    assert f"{100 * share:.1f} % of purchase spend before {AS_OF} is in product categories" in text
    assert f"'Toys' ({100 * share:.1f} %)" in text and "looks like" not in text
    assert "Fix: Retrain the model on data that hold these categories, or map them to those it was " \
           "trained with (" in text

    loaded = clvtier.load(data)
    with pytest.warns(UnseenLevelWarning, match=rf"'Toys' \({100 * share:.1f} %\)"):
        clvtier.predict(model, loaded, with_reasons=False)
    assert unseen_levels(model, loaded, dt.date(2024, 1, 1)) == []
    res = predict_cli(data, run_dir, tmp_path / "s.csv", "--as-of", "2024-01-01")
    assert res.exit_code == EXIT_OK and "Toys" not in res.output, res.output


# -- SIGTERM ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
@pytest.mark.parametrize(("command", "work"), [
    (["predict", "{data}", "--model", "{run}", "--out", "{out}/scores.csv", "--chunk-size", "100"], "clvtier-score-"),
    (["features", "{data}", "--cutoff", "2024-01-01", "--out", "{out}/features.csv"], "clvtier-features-"),
    (["train", "{data}", "--out", "{out}/run", "--candidates", "logreg", "--cv", "2", "--bootstrap", "10",
      "--backtests", "0"], None),
], ids=["predict", "features", "train"])
def test_sigterm_stops_a_command_and_leaves_nothing(
    data_dir: Path, run_dir: Path, tmp_path: Path, command: list[str], work: str | None
) -> None:
    """SIGTERM half-way through writing (a scheduler's timeout, systemd, Kubernetes): the partial output
    and the temporary features are removed, the message says so, and the exit code is 143."""
    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    args = [a.format(data=data_dir, run=run_dir, out=out_dir) for a in command]
    proc, partial = run_until_writing(args, tmp_path, env={"TMPDIR": str(tmp_dir)}, timeout=300)
    assert partial.is_relative_to(out_dir) and partial.stat().st_size > 0
    assert any(p.name.startswith(".") and p.name.endswith(".tmp") for p in out_dir.iterdir())
    if work is not None:
        assert any(p.name.startswith(work) for p in tmp_dir.iterdir()), list(tmp_dir.iterdir())
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == EXIT_TERMINATED == 143, output
    assert "Terminated; nothing was written." in output
    assert "Traceback" not in output
    assert list(out_dir.iterdir()) == []
    assert list(tmp_dir.iterdir()) == []


@pytest.mark.parametrize(("signal_error", "code", "message"), [
    (cli.Terminated, EXIT_TERMINATED, "Terminated; nothing was written."),
    (KeyboardInterrupt, EXIT_INTERRUPTED, "Interrupted; nothing was written."),
], ids=["sigterm", "ctrl-c"])
def test_a_signal_during_a_query_stops_the_command_as_between_queries(
    signal_error: type[KeyboardInterrupt], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """DuckDB runs the signal handler while a query runs, stops the query and raises its own
    RuntimeError from the handler's exception: still the signal's message and exit code."""

    @cli.handle_errors
    def query() -> None:
        try:
            raise signal_error  # what the handler raises
        except KeyboardInterrupt as exc:
            raise RuntimeError("Query interrupted") from exc  # what DuckDB raises instead

    with pytest.raises(typer.Exit) as info:
        query()
    assert info.value.exit_code == code
    assert message in capsys.readouterr().err


# -- output paths -----------------------------------------------------------------------------------
@pytest.fixture
def no_feature_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the features fails the test: the output path must be refused before."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the features were built")

    # The module: the package's attribute clvtier.predict is the function.
    monkeypatch.setattr(importlib.import_module("clvtier.predict"), "write_feature_parts", refuse)


@pytest.mark.usefixtures("no_feature_work")
def test_an_output_that_is_a_directory_is_refused_before_scoring(
    data_dir: Path, run_dir: Path, model: Model, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    out.mkdir()
    res = predict_cli(data_dir, run_dir, out)
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert f"Error: {out} is a directory." in res.output
    assert "Fix: Name a file inside it, or another output path." in res.output
    with pytest.raises(InputError, match="scores.csv is a directory"):
        score_to_file(model, clvtier.load(data_dir), out)
    with pytest.raises(InputError, match="scores.csv is a directory"):
        write_scores(pd.DataFrame({"customer_id": ["1"]}), out)
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_an_output_that_is_a_file_of_the_models_run_is_refused(data_dir: Path, run_dir: Path) -> None:
    before = (run_dir / "test_predictions.csv").read_bytes()
    res = predict_cli(data_dir, run_dir, run_dir / "test_predictions.csv")
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert "test_predictions.csv is a file of the model's run; writing there would replace it." in flat(res.output)
    assert (run_dir / "test_predictions.csv").read_bytes() == before


@pytest.mark.usefixtures("no_feature_work")
def test_a_write_protected_output_file_is_kept(data_dir: Path, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    out.write_text("keep me\n")
    out.chmod(0o444)
    res = predict_cli(data_dir, run_dir, out)
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert f"Error: {out} is write-protected; it is not replaced." in flat(res.output)
    assert f"Fix: Make it writable (chmod u+w {out}) or choose another output path." in flat(res.output)
    assert out.read_text() == "keep me\n" and out.stat().st_mode & 0o777 == 0o444
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_full_disk_names_the_output(
    data_dir: Path, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to an open file fails

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    monkeypatch.setattr("pyarrow.parquet.ParquetWriter.write_table", full)
    out = tmp_path / "out" / f"scores{suffix}"
    res = predict_cli(data_dir, run_dir, out)
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert f"Error: {out}: No space left on device." in res.output
    assert "Fix: The disk is full: free some space or write to another disk. Nothing was written." in res.output
    assert list(out.parent.iterdir()) == []


def test_a_failed_rename_names_the_output_not_the_temporary_file(
    data_dir: Path, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "scores.csv"
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == out:  # a directory made there while scoring
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(src), None, str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    res = predict_cli(data_dir, run_dir, out)
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert f"Error: {out}: Is a directory." in res.output
    assert list(tmp_path.iterdir()) == []


# -- arguments of the wrong type (Python API) -------------------------------------------------------
@pytest.mark.parametrize("run", [None, 123], ids=["none", "number"])
def test_load_model_refuses_what_is_not_a_path(run: Any) -> None:
    with pytest.raises(InputError, match=f"expected the path of a run directory, got {type(run).__name__}") as info:
        clvtier.load_model(run)
    assert "clvtier.load_model('runs/1')" in info.value.fix


@pytest.fixture(scope="module")
def features(data_dir: Path, model: Model) -> pd.DataFrame:
    return clvtier.build_features(clvtier.load(data_dir), AS_OF, model.spec).frame


def test_score_frame_names_the_columns_with_infinite_values(model: Model, features: pd.DataFrame) -> None:
    frame = features.copy()
    frame.loc[0, "total_spend"] = np.inf
    frame.loc[[1, 2], "spend_30d"] = -np.inf
    with pytest.raises(InputError, match=r"the features hold infinite values: total_spend \(1 row\), "
                                         r"spend_30d \(2 rows\)\.") as info:
        score_frame(model, frame)
    assert "finite" in info.value.fix


def test_score_frame_refuses_categories_that_are_not_text(model: Model, features: pd.DataFrame) -> None:
    frame = features.copy()
    frame["gender"] = 1.5
    with pytest.raises(InputError, match=rf"categorical features hold values that are not text: "
                                         rf"gender \({len(frame):,} rows\)\.") as info:
        score_frame(model, frame)
    assert "as text (str)" in info.value.fix
    frame = features.copy()
    frame["location"] = frame["location"].astype(object)
    frame.loc[3, "location"] = 7
    with pytest.raises(InputError, match=r"not text: location \(1 row\)\."):
        score_frame(model, frame)
    missing = features.head(5).assign(gender=np.nan, location=None)  # missing is not a wrong type
    assert len(score_frame(model, missing)) == 5


def test_with_reasons_must_be_true_or_false(data_dir: Path, model: Model, features: pd.DataFrame,
                                            tmp_path: Path) -> None:
    with pytest.raises(InputError, match="with_reasons must be True or False, got 'no'"):
        score_frame(model, features.head(3), with_reasons="no")  # type: ignore[arg-type]
    data = clvtier.load(data_dir)
    with pytest.raises(InputError, match="with_reasons must be True or False, got 0"):
        clvtier.predict(model, data, with_reasons=0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="with_reasons must be True or False, got None"):
        score_to_file(model, data, tmp_path / "s.csv", with_reasons=None)  # type: ignore[arg-type]
    assert list(score_frame(model, features.head(3), with_reasons=np.bool_(False)).columns)[-1] == "p_high"


def test_predict_refuses_a_date_before_the_data_as_the_cli_does(
    data_dir: Path, run_dir: Path, model: Model, tmp_path: Path
) -> None:
    data = clvtier.load(data_dir)
    with pytest.raises(InputError, match="no customer is known before the scoring date 1990-01-01") as info:
        clvtier.predict(model, data, as_of=dt.date(1990, 1, 1))
    res = predict_cli(data_dir, run_dir, tmp_path / "s.csv", "--as-of", "1990-01-01")
    assert res.exit_code == EXIT_BAD_INPUT
    assert f"Error: {info.value.message}" in res.output and f"Fix: {info.value.fix}" in res.output
    assert len(clvtier.predict(model, data, as_of="2024-01-01", with_reasons=False)) > 0
