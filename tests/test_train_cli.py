"""End-to-end: train, predict and demo through the CLI on small generated data."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clvtier.cli import app
from clvtier.generate import generate

runner = CliRunner()

FAST = ["--cv", "3", "--bootstrap", "50", "--backtests", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "data"
    generate(1500, 7, out)
    return out


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    res = runner.invoke(
        app, ["train", str(data_dir), "--out", str(out), "--candidates", "logreg,naive_bayes,hist_gb", *FAST]
    )
    assert res.exit_code == 0, res.output
    return out


def test_train_writes_every_artifact(run_dir: Path) -> None:
    for name in ("model.skops", "metadata.json", "metrics.json", "cv.csv", "test_predictions.csv"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["mode"] == "predictive"
    assert meta["target"] == "future"
    assert meta["horizon_days"] == 365
    assert meta["thresholds"]["low_cut"] < meta["thresholds"]["high_cut"]
    assert "btyd_frequency" in meta["feature_names"]
    assert len(meta["data_fingerprint"]) == 64
    assert meta["versions"]["scikit-learn"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"baseline_majority", "baseline_carry_forward"} <= set(metrics["test"])
    assert metrics["chosen"] in {"logreg", "naive_bayes", "hist_gb"}
    cv = pd.read_csv(run_dir / "cv.csv")
    assert list(cv["model"]) == ["logreg", "naive_bayes", "hist_gb"]


def test_chosen_model_beats_both_baselines(run_dir: Path) -> None:
    """The generator plants a learnable signal: the model must beat the naive rules."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    chosen = metrics["test"][metrics["chosen"]]
    for baseline in ("baseline_majority", "baseline_carry_forward"):
        assert chosen["macro_f1"] > metrics["test"][baseline]["macro_f1"] + 0.05, baseline


def test_selection_uses_cross_validation_only(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best_cv = max(metrics["cv"], key=lambda r: r["mean"])["model"]
    assert metrics["chosen"] == best_cv


def test_timed_steps_account_for_the_training_time(run_dir: Path) -> None:
    """``--verbose`` prints these: the named steps add up to (nearly all of) the total."""
    timings = json.loads((run_dir / "metrics.json").read_text())["timings_seconds"]
    assert list(timings) == ["features", "cross_validation", "evaluation", "explanation", "leakage_audit",
                             "backtest", "total"]
    steps = sum(v for k, v in timings.items() if k != "total")
    assert 0.9 * timings["total"] <= steps <= timings["total"]


def test_predict_scores_every_known_customer_once(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    res = runner.invoke(app, ["predict", str(data_dir), "--model", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    scores = pd.read_csv(out, dtype={"customer_id": str})
    customers = pd.read_csv(data_dir / "customers_final.csv", dtype={"customer_id": str})
    assert sorted(scores["customer_id"]) == sorted(customers["customer_id"])
    assert not scores["customer_id"].duplicated().any()
    assert set(scores["tier"]) <= {"Low", "Medium", "High"}
    probs = scores[["p_low", "p_medium", "p_high"]].sum(axis=1)
    assert (probs - 1).abs().max() < 1e-9
    assert scores["reason_1"].notna().all()
    assert f"Scored {len(scores):,} customers" in res.output


def test_predict_is_deterministic(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for out in (a, b):
        res = runner.invoke(app, ["predict", str(data_dir), "--model", str(run_dir), "--out", str(out)])
        assert res.exit_code == 0, res.output
    assert a.read_bytes() == b.read_bytes()


def test_training_is_reproducible(data_dir: Path, tmp_path: Path) -> None:
    outs = []
    for k in range(2):
        out = tmp_path / f"r{k}"
        res = runner.invoke(app, ["train", str(data_dir), "--out", str(out), "--candidates", "logreg", *FAST])
        assert res.exit_code == 0, res.output
        outs.append(out)
    assert (outs[0] / "test_predictions.csv").read_bytes() == (outs[1] / "test_predictions.csv").read_bytes()
    assert (outs[0] / "cv.csv").read_text() == (outs[1] / "cv.csv").read_text()


def test_parallel_fits_give_the_same_run(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large training sets fit folds and candidates in parallel processes: same scores, same predictions."""
    train_mod = importlib.import_module("clvtier.train")
    outs = []
    for threshold in (10**9, 0):  # sequential, then parallel (every size counts as large)
        monkeypatch.setattr(train_mod, "PARALLEL_FIT_ROWS", threshold)
        out = tmp_path / f"t{threshold}"
        res = runner.invoke(app, ["train", str(data_dir), "--out", str(out), "--candidates", "logreg,hist_gb",
                                  "--cv", "3", "--bootstrap", "50", "--backtests", "0"])
        assert res.exit_code == 0, res.output
        outs.append(out)
    assert (outs[0] / "test_predictions.csv").read_bytes() == (outs[1] / "test_predictions.csv").read_bytes()
    assert (outs[0] / "cv.csv").read_text() == (outs[1] / "cv.csv").read_text()
    metrics = [json.loads((out / "metrics.json").read_text()) for out in outs]
    assert metrics[0]["leakage_audit"] == metrics[1]["leakage_audit"]
    assert metrics[0]["test"] == metrics[1]["test"]


def test_tampered_model_is_refused(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in run_dir.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray((bad / "model.skops").read_bytes())
    raw[-10] ^= 0xFF
    (bad / "model.skops").write_bytes(bytes(raw))
    out = tmp_path / "s.csv"
    res = runner.invoke(app, ["predict", str(data_dir), "--model", str(bad), "--out", str(out)])
    assert res.exit_code == 3
    assert "changed after training" in res.output
    assert not out.exists()


def test_incompatible_version_is_refused_naming_both(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "old"
    bad.mkdir()
    for f in run_dir.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bad / "metadata.json").read_text())
    meta["versions"]["scikit-learn"] = "0.24.2"
    (bad / "metadata.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["predict", str(data_dir), "--model", str(bad), "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 3
    assert "0.24.2" in res.output
    import sklearn

    assert sklearn.__version__ in res.output


def test_model_refused_when_data_lack_its_features(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    only_tx = tmp_path / "tx"
    only_tx.mkdir()
    (only_tx / "transactions.csv").write_bytes((data_dir / "transactions_final.csv").read_bytes())
    res = runner.invoke(app, ["predict", str(only_tx), "--model", str(run_dir), "--out", str(tmp_path / "s.csv")])
    assert res.exit_code in (2, 3)
    assert "Fix:" in res.output


def test_snapshot_mode_is_labelled(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "snap"
    res = runner.invoke(app, ["train", str(data_dir), "--out", str(out), "--mode", "snapshot",
                              "--candidates", "logreg", *FAST])
    assert res.exit_code == 0, res.output
    assert "SNAPSHOT MODE" in res.output
    assert "not evidence of prediction" in res.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["describes_past_only"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert "not evidence of prediction" in metrics["leakage_audit"]["note"]
    assert "horizon None" not in res.output and "Snapshot of every event before" in res.output
    scores = tmp_path / "scores.csv"
    res = runner.invoke(app, ["predict", str(data_dir), "--model", str(out), "--out", str(scores), "--no-reasons"])
    assert res.exit_code == 0, res.output
    assert "trained in snapshot mode" in res.output and "not a prediction" in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "sideways"], "unknown mode"),
        (["--target", "total_spend"], "does not exist in predictive mode"),
        (["--metric", "auc-ish"], "unknown metric"),
        (["--candidates", "deep_net"], "unknown candidate"),
        (["--tiers", "thirds"], "--tiers"),
        (["--cutoff", "2019-01-01"], "history"),
        (["--cutoff", "2024-05-01"], "horizon"),
        (["--cutoff", "not-a-date"], "not a date"),
        (["--seed", "-1"], "seed=-1 (--seed) is out of range"),
        (["--tiers", "amounts:1000000,2000000"], "(--tiers quartile)"),
        (["--as-of", "2023-01-01", "--cutoff", "2023-01-02"], "horizon"),
    ],
    ids=["mode", "target", "metric", "candidate", "tiers", "cutoff-too-early", "cutoff-too-late", "cutoff-format",
         "seed", "amounts-outside-the-values", "horizon-after-the-as-of-date"],
)
def test_bad_training_options_exit_2_and_write_nothing(data_dir: Path, tmp_path: Path, args: list[str],
                                                       needle: str) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(data_dir), "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Fix:" in res.output
    assert not out.exists()


def test_custom_amount_tiers(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "amt"
    res = runner.invoke(app, ["train", str(data_dir), "--out", str(out), "--tiers", "amounts:1,3000",
                              "--candidates", "logreg", *FAST])
    assert res.exit_code == 0, res.output
    th = json.loads((out / "metadata.json").read_text())["thresholds"]
    assert (th["low_cut"], th["high_cut"]) == (1.0, 3000.0)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--customers", "800"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "demo" / "run"
    assert (run / "model.skops").is_file()
    assert (run / "scores.csv").is_file()
    assert "Chosen:" in res.output


def test_permutation_importance_subsamples_large_test_sets(monkeypatch: pytest.MonkeyPatch) -> None:

    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin

    train_mod = importlib.import_module("clvtier.train")  # the package exports train() under that name

    seen: list[int] = []

    class SpendRule(ClassifierMixin, BaseEstimator):
        classes_ = np.array(["High", "Low", "Medium"], dtype=object)

        def predict(self, X: pd.DataFrame) -> np.ndarray:
            seen.append(len(X))
            return np.where(X["total_spend"].to_numpy() > 1, "High", "Low").astype(object)

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"total_spend": rng.random(500) * 2, "age": rng.random(500)})
    y = np.where(X["total_spend"] > 1, "High", "Low").astype(object)
    cfg = train_mod.TrainConfig(metric="accuracy")
    monkeypatch.setattr(train_mod, "IMPORTANCE_MAX_ROWS", 100)
    rows = train_mod._permutation_importance(SpendRule(), X, y, cfg, {}, n_repeats=2)
    assert seen and set(seen) == {100}
    by = {r["feature"]: r["mean"] for r in rows}
    assert by["total_spend"] > 0.2 and by["age"] == 0.0
    seen.clear()
    monkeypatch.setattr(train_mod, "IMPORTANCE_MAX_ROWS", 10_000)
    train_mod._permutation_importance(SpendRule(), X, y, cfg, {}, n_repeats=1)
    assert set(seen) == {500}


def test_engine_out_of_memory_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "features.parquet"
    res = runner.invoke(app, ["features", str(data_dir), "--cutoff", "2023-06-01", "--out", str(out),
                              "--memory-limit", "1MB"])
    assert res.exit_code == 2, res.output
    assert "ran out of memory" in res.output and "--memory-limit" in res.output
    assert "Traceback" not in res.output and "parsed as CSV" not in res.output
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["other-files", "working-directory", "parent-of-working-directory", "a-file"])
def test_train_refuses_to_replace_what_is_not_a_run(data_dir: Path, tmp_path: Path, where: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("important")
    (victim / "sub" / "keep.txt").write_text("keep")
    out = {"other-files": victim, "working-directory": Path("."), "parent-of-working-directory": Path(".."),
           "a-file": victim / "notes.txt"}[where]
    monkeypatch.chdir(victim / "sub" if where == "parent-of-working-directory" else victim)
    res = runner.invoke(app, ["train", str(data_dir), "--out", str(out), "--candidates", "logreg",
                              "--backtests", "0"])
    assert res.exit_code == 2, res.output
    assert "Fix:" in res.output and "Traceback" not in res.output
    assert (victim / "notes.txt").read_text() == "important"
    assert (victim / "sub" / "keep.txt").read_text() == "keep"


def test_a_run_directory_is_replaced_and_an_empty_one_filled(tmp_path: Path) -> None:
    from clvtier.errors import InputError
    from clvtier.persist import atomic_dir

    run = tmp_path / "run"
    run.mkdir()  # empty: fine
    with atomic_dir(run) as tmp:
        (tmp / "metadata.json").write_text(json.dumps({"clvtier_run": True}))
    with atomic_dir(run) as tmp:  # an earlier run: replaced
        (tmp / "metadata.json").write_text(json.dumps({"clvtier_run": True, "n": 2}))
    assert json.loads((run / "metadata.json").read_text())["n"] == 2
    (run / "metadata.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(InputError, match="not a clvtier run directory"), atomic_dir(run):
        pass
    assert json.loads((run / "metadata.json").read_text()) == {"something": "else"}


def test_an_earlier_run_holding_other_files_is_not_replaced(tmp_path: Path) -> None:
    from clvtier.errors import InputError
    from clvtier.persist import atomic_dir

    run = tmp_path / "run"
    with atomic_dir(run) as tmp:
        (tmp / "metadata.json").write_text(json.dumps({"clvtier_run": True}))
        (tmp / "report.html").write_text("the report")  # written into the run by 'clvtier train'
    (run / "notes.txt").write_text("important")
    (run / "scores.csv").write_text("customer_id,tier")
    with pytest.raises(InputError, match=r"earlier run that also holds notes.txt, scores.csv, which 'clvtier train' "
                                         r"did not write; replacing the run would delete them"), atomic_dir(run):
        pass
    assert (run / "notes.txt").read_text() == "important"


@pytest.mark.parametrize("args, message", [
    (["features", "{data}", "--cutoff", "2023-06-01", "--out", "{out}", "--memory-limit", "lots"],
     "--memory-limit 'lots' is not a size"),
    (["features", "{data}", "--cutoff", "2023-06-01", "--out", "{out}", "--memory-limit", "-5GB"],
     "--memory-limit '-5GB' is not a size"),
    (["features", "{data}", "--cutoff", "2023-06-01", "--out", "{out}", "--memory-limit", "0MB"],
     "--memory-limit '0MB' is not a size"),
    (["features", "{data}", "--cutoff", "2023-06-01", "--out", "{out}", "--engine", "spark", "--memory-limit", "4GB"],
     "--memory-limit applies to the DuckDB engine only"),
    (["features", "{data}", "--cutoff", "1990-01-01", "--out", "{out}"],
     "no customer is known before the cutoff 1990-01-01"),
    (["generate", "--customers", "10", "--out", "{out}", "--format", "xlsx"], "--format 'xlsx' is not known"),
    (["train", "{data}", "--out", "{out}", "--tiers", "quantiles:0.8,0.3"], "the two cut points must increase"),
    (["features", "{data}", "--cutoff", "2023-06-01", "--as-of", "2023-01-01", "--out", "{out}"],
     "the cutoff 2023-06-01 is more than a day after the data's as-of date 2023-01-01"),
    (["features", "{data}", "--cutoff", "2023-06-01", "--as-of", "2023-01-01", "--engine", "spark", "--out", "{out}"],
     "the cutoff 2023-06-01 is more than a day after the data's as-of date 2023-01-01"),
    (["predict", "{data}", "--model", "{out}.missing", "--out", "{out}", "--as-of", "2999-01-01", "--engine", "spark"],
     "--as-of 2999-01-01 is after today"),
    (["predict", "{data}", "--model", "{out}.missing", "--out", "{out}"], "out.csv.missing does not exist"),
    (["report", "{out}.missing"], "out.csv.missing does not exist"),
], ids=["memory-limit", "memory-limit-negative", "memory-limit-zero", "memory-limit-with-spark",
        "cutoff-before-the-data", "format", "tiers", "cutoff-after-the-as-of-date",
        "spark-cutoff-after-the-as-of-date", "spark-scoring-date-in-the-future", "no-such-model", "no-such-run"])
def test_bad_options_are_refused_before_any_output(data_dir: Path, tmp_path: Path, args: list[str],
                                                   message: str) -> None:
    out = tmp_path / "out.csv"
    res = runner.invoke(app, [a.format(data=data_dir, out=out) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Fix:" in res.output and "Internal error" not in res.output
    assert not out.exists()


def test_backtests_set_the_model_against_both_naive_baselines(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [r for r in metrics["backtest"] if "skipped" not in r]
    assert rows
    for row in rows:
        for rule in ("carry_forward", "bgnbd_gg"):
            assert 0 <= row[rule]["macro_f1"] <= 1, rule
        assert row["bgnbd_gg"] != row["carry_forward"]
    res = runner.invoke(app, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output


def test_a_cutoff_by_default_ends_the_horizon_at_the_as_of_date(data_dir: Path) -> None:
    """Transactions dated after the as-of date reach neither the features nor the target."""
    import datetime as dt

    from clvtier.train import TrainConfig, resolve_cutoff
    from clvtier.validate import load

    as_of = dt.date(2023, 1, 1)
    ds = load(data_dir, as_of=as_of)
    assert ds.summary["transactions"]["last_date"] > as_of
    assert ds.last_date == as_of
    cfg = TrainConfig(horizon_days=365)
    assert resolve_cutoff(ds, cfg) + dt.timedelta(days=365) == as_of + dt.timedelta(days=1)
    assert resolve_cutoff(ds, TrainConfig(mode="snapshot", target="total_spend")) == as_of + dt.timedelta(days=1)


def test_predict_refuses_a_scoring_date_in_the_future(run_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    import datetime as dt

    later = dt.date.today() + dt.timedelta(days=30)
    out = tmp_path / "scores.csv"
    res = runner.invoke(app, ["predict", str(data_dir), "--model", str(run_dir), "--out", str(out),
                              "--as-of", later.isoformat()])
    assert res.exit_code == 2, res.output
    assert f"--as-of {later} is after today" in res.output and "Fix:" in res.output
    assert not out.exists()


@pytest.mark.parametrize("command", ["features", "predict"])
def test_an_output_over_an_input_file_is_refused(run_dir: Path, data_dir: Path, tmp_path: Path,
                                                 command: str) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    target = data / "customers_final.csv"
    before = target.read_bytes()
    extra = ["--cutoff", "2023-06-01"] if command == "features" else ["--model", str(run_dir)]
    res = runner.invoke(app, [command, str(data), *extra, "--out", str(target)])
    assert res.exit_code == 2, res.output
    assert "is the input file of the customers table" in res.output and "Fix:" in res.output
    assert target.read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in data_dir.iterdir())


def test_a_read_only_output_is_bad_input_not_a_bug(data_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import tempfile

    out = tmp_path / "ro" / "features.parquet"

    def read_only(*args: object, dir: object = None, **kwargs: object) -> object:
        raise OSError(errno.EROFS, "Read-only file system", str(Path(str(dir)) / ".features.parquet.x1.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    res = runner.invoke(app, ["features", str(data_dir), "--cutoff", "2023-06-01", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert f"cannot create a file in {out.parent}: Read-only file system" in res.output
    assert "file system is read-only" in res.output and "Internal error" not in res.output
    assert not out.exists()


def test_a_file_in_the_way_of_the_output_directory_is_bad_input(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a directory")
    out = tmp_path / "taken" / "features.csv"
    res = runner.invoke(app, ["features", str(data_dir), "--cutoff", "2023-06-01", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "A file stands where a directory is needed" in res.output and "Internal error" not in res.output


def test_the_summary_shows_what_no_high_prediction_leaves_undefined(run_dir: Path) -> None:
    from types import SimpleNamespace

    from clvtier import cli

    metrics = json.loads((run_dir / "metrics.json").read_text())
    majority = metrics["test"]["baseline_majority"]
    assert not np.asarray(majority["confusion"])[:, 2].any()  # the majority tier is Medium: nobody in High
    assert majority["high_precision"] == 0.0  # stored as 0 ...
    with cli.out.capture() as captured:
        cli.print_result(SimpleNamespace(metrics=metrics), run_dir)
    text = captured.get()
    cells = [c.strip() for c in next(ln for ln in text.splitlines() if "baseline_majority" in ln).split("│")]
    assert (cells[5], cells[7]) == ("-", "-")  # ... shown as undefined
    assert "- : undefined (no customer predicted High" in text
