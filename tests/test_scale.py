"""One machine, large data: the training sample, streaming batch scoring, the spill directory.

Everything runs on ~1,000 generated customers with limits set small enough that the
large-data paths are taken: ``max_train_customers=300`` and chunks of a few customers.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clvtier import clv
from clvtier.cli import app
from clvtier.errors import InputError
from clvtier.features import build_features, learn_spec, spend_summary_expr
from clvtier.generate import generate
from clvtier.ingest import connect
from clvtier.persist import write_run
from clvtier.predict import Model, load, predict, score_to_file, write_scores
from clvtier.train import TrainConfig, TrainResult, _strata, resolve_cutoff, train, training_sample
from clvtier.validate import Dataset
from clvtier.validate import load as load_data

SAMPLE = 300
CONFIG = TrainConfig(candidates=("logreg",), cv_folds=3, n_boot=20, backtests=1, max_train_customers=SAMPLE)
runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scale") / "data"
    generate(1000, 5, out, fmt="parquet")
    return out


@pytest.fixture(scope="module")
def ds(data_dir: Path) -> Dataset:
    return load_data(data_dir, con=connect(memory_limit="500MB"))


@pytest.fixture(scope="module")
def sampled(ds: Dataset) -> TrainResult:
    return train(ds, CONFIG)


@pytest.fixture(scope="module")
def model(sampled: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Model:
    run_dir = tmp_path_factory.mktemp("scale-run") / "run"
    write_run(sampled, run_dir)
    return load(run_dir)


def _population(ds: Dataset, cfg: TrainConfig) -> tuple[pd.Index, np.ndarray]:
    """Every customer known at the cutoff and its CLV value, from the full features."""
    cutoff = resolve_cutoff(ds, cfg)
    fs = build_features(ds, cutoff)
    customers = pd.Index(fs.frame["customer_id"])
    values = clv.values_for(customers, fs.frame, ds, cfg.mode, cfg.target, cutoff, cfg.horizon_days)  # type: ignore[arg-type]
    return customers, values.to_numpy()


# -- the training sample -------------------------------------------------------------------------
def test_sample_is_recorded(sampled: TrainResult, ds: Dataset) -> None:
    customers, _ = _population(ds, CONFIG)
    info = sampled.metrics["training_sample"]
    assert info["used"] is True
    assert info["size"] == SAMPLE == sampled.metrics["n_customers"]
    assert info["population"] == len(customers) > SAMPLE
    assert info["seed"] == CONFIG.seed
    assert "stratified" in info["method"]
    assert sum(s["sample"] for s in info["strata"]) == SAMPLE
    assert sum(s["population"] for s in info["strata"]) == len(customers)
    assert sampled.metrics["n_train"] + sampled.metrics["n_test"] == SAMPLE
    assert set(sampled.values["customer_id"]) <= set(customers)


def test_sample_preserves_strata_and_class_shares(sampled: TrainResult, ds: Dataset) -> None:
    _, values = _population(ds, CONFIG)
    for s in sampled.metrics["training_sample"]["strata"]:  # proportional allocation, up to rounding
        assert abs(s["sample"] - SAMPLE * s["population"] / len(values)) <= 1.0, s
    pop_tiers = pd.Series(sampled.binner.transform(values)).value_counts(normalize=True)
    sample_tiers = pd.Series(sampled.values["tier"]).value_counts(normalize=True)
    for tier in ("Low", "Medium", "High"):
        assert sample_tiers[tier] == pytest.approx(pop_tiers[tier], abs=0.05), tier


def test_training_on_the_sample_works(sampled: TrainResult, ds: Dataset) -> None:
    assert sampled.metrics["test"]["logreg"]["macro_f1"] > sampled.metrics["test"]["baseline_majority"]["macro_f1"]
    rows = [r for r in sampled.metrics["backtest"] if "skipped" not in r]
    assert rows and all(r["n_customers"] <= SAMPLE for r in rows)  # the backtest uses the sample too


def test_sample_is_deterministic_and_skipped_when_everyone_fits(ds: Dataset) -> None:
    cutoff = resolve_cutoff(ds, CONFIG)
    spec = learn_spec(ds.tables, ds.con)
    a = training_sample(ds, CONFIG, cutoff, spec)
    b = training_sample(ds, CONFIG, cutoff, spec)
    assert a is not None and b is not None
    assert np.array_equal(a.customer_ids, b.customer_ids)
    big = TrainConfig(**{**CONFIG.__dict__, "max_train_customers": 100_000})
    assert training_sample(ds, big, cutoff, spec) is None
    never = TrainConfig(**{**CONFIG.__dict__, "max_train_customers": None})
    assert training_sample(ds, never, cutoff, spec) is None


def test_sample_features_take_passes_for_the_sample_not_the_data(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass reads all transactions: a sample is built in passes for its own share of them."""
    import clvtier.features as features_mod

    cutoff = resolve_cutoff(ds, CONFIG)
    spec = learn_spec(ds.tables, ds.con)
    sample = training_sample(ds, CONFIG, cutoff, spec)
    assert sample is not None
    rows = int(ds.summary["transactions"]["rows"])
    monkeypatch.setattr(features_mod, "PASS_ROWS", -(-rows // 8))  # the whole data: eight passes
    share = len(sample.customer_ids) / sample.population
    assert sample.passes(ds) == max(1, math.ceil(rows * share / features_mod.PASS_ROWS)) < 8
    one = build_features(ds, cutoff, spec, restrict_to=sample.table(), passes=1).frame
    several = build_features(ds, cutoff, spec, restrict_to=sample.table(), passes=3).frame
    # Sums over a join's output may add in another order: equal to the last bits.
    pd.testing.assert_frame_equal(one, several, check_exact=False, rtol=1e-12)
    assert one["customer_id"].tolist() == sample.customer_ids.tolist()


def test_unsampled_run_records_the_population(ds: Dataset) -> None:
    cfg = TrainConfig(candidates=("logreg",), cv_folds=3, n_boot=20, backtests=0)
    info = train(ds, cfg).metrics["training_sample"]
    assert info == {"used": False, "size": info["population"], "population": info["population"]}


def test_restricted_features_equal_the_full_features_of_those_customers(ds: Dataset) -> None:
    cutoff = resolve_cutoff(ds, CONFIG)
    full = build_features(ds, cutoff).frame
    wanted = full["customer_id"].iloc[::7].tolist() + ["no-such-customer"]
    table = ibis.memtable(pd.DataFrame({"customer_id": pd.Series(wanted, dtype=object)}))
    part = build_features(ds, cutoff, full_spec := learn_spec(ds.tables, ds.con), restrict_to=table).frame
    expected = full[full["customer_id"].isin(wanted)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected)
    assert full_spec == build_features(ds, cutoff).spec


@pytest.mark.parametrize("cutoff", ["2021-01-01", "2023-06-01"], ids=["early", "late"])
def test_spend_summary_matches_the_features(ds: Dataset, cutoff: str) -> None:
    day = dt.date.fromisoformat(cutoff)
    spec = learn_spec(ds.tables, ds.con)
    expr, param = spend_summary_expr(ds.tables, spec)
    summary = ds.con.execute(expr, params={param: day}).reset_index(drop=True)
    cols = ["customer_id", "n_transactions", "total_spend", "btyd_recency"]
    features = build_features(ds, day, spec).frame[cols]
    summary["customer_id"] = summary["customer_id"].astype(str)
    pd.testing.assert_frame_equal(summary[cols], features, check_dtype=False, rtol=1e-12)


def test_strata_are_the_split_strata(ds: Dataset) -> None:
    _, values = _population(ds, CONFIG)
    strata = _strata(values)
    assert set(np.unique(strata)) == {0, 1, 2, 3, 4}
    assert (strata[values <= 0] == 0).all()


def test_cli_train_records_the_sample(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(data_dir), "--out", str(out), "--candidates", "logreg", "--cv", "3",
                              "--bootstrap", "20", "--backtests", "0", "--max-train-customers", str(SAMPLE),
                              "--memory-limit", "500MB", "--verbose"])
    assert res.exit_code == 0, res.output
    assert "stratified sample of 300" in res.output
    assert "Peak memory" in res.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["training_sample"]["used"] and meta["training_sample"]["size"] == SAMPLE
    assert meta["config"]["max_train_customers"] == SAMPLE


def test_max_train_customers_is_checked() -> None:
    with pytest.raises(Exception, match="too small"):
        TrainConfig(max_train_customers=5)


# -- streaming batch scoring ---------------------------------------------------------------------
def _assert_same_scores(got: pd.DataFrame, want: pd.DataFrame, exact: bool) -> None:
    """Same rows in the same order, same tiers and reasons; probabilities and effects to 1e-12.

    The linear algebra rounds the last bit differently for batches of different sizes, so
    only a single chunk (the same batch as in-memory predict) is compared bit for bit.
    """
    assert list(got.columns) == list(want.columns)
    text = [c for c in want.columns if not c.startswith("p_") and not c.endswith("_effect")]
    numbers = [c for c in want.columns if c not in text]
    pd.testing.assert_frame_equal(got[text], want[text])
    if exact:
        pd.testing.assert_frame_equal(got[numbers], want[numbers], check_exact=True)
    else:
        assert np.abs(got[numbers].to_numpy(float) - want[numbers].to_numpy(float)).max() <= 1e-12


@pytest.mark.parametrize("with_reasons", [True, False], ids=["reasons", "no-reasons"])
@pytest.mark.parametrize("chunk_size", [7, 250_000], ids=["tiny-chunks", "one-chunk"])
def test_streamed_parquet_equals_in_memory_predict(model: Model, ds: Dataset, tmp_path: Path,
                                                   with_reasons: bool, chunk_size: int) -> None:
    expected = predict(model, ds, with_reasons=with_reasons)
    write_scores(expected, tmp_path / "memory.parquet")
    seen: list[tuple[int, int]] = []
    summary = score_to_file(model, ds, tmp_path / "streamed.parquet", with_reasons=with_reasons,
                            chunk_size=chunk_size, progress=lambda done, total: seen.append((done, total)))
    streamed = pd.read_parquet(tmp_path / "streamed.parquet")
    _assert_same_scores(streamed, pd.read_parquet(tmp_path / "memory.parquet"), exact=chunk_size >= len(expected))
    assert summary.n_in == summary.n_out == len(expected)
    assert summary.tiers == {t: int((expected["tier"] == t).sum()) for t in ("Low", "Medium", "High")}
    assert seen[-1] == (len(expected), len(expected))
    assert len(seen) == -(-len(expected) // chunk_size)
    assert summary.customers_per_second > 0


@pytest.mark.parametrize("passes", [2, 5])
def test_features_built_in_id_ranges_equal_one_pass(model: Model, ds: Dataset, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, passes: int) -> None:
    """Large data are featurised one range of customer ids at a time: the same features, rows, order and scores."""
    import clvtier.features as features_mod

    write_scores(predict(model, ds), tmp_path / "memory.parquet")
    one_pass = build_features(ds, "2024-01-01").frame
    rows = int(ds.summary["transactions"]["rows"])
    monkeypatch.setattr(features_mod, "PASS_ROWS", -(-rows // passes))
    assert len(features_mod.pass_ranges(ds)) == passes
    pd.testing.assert_frame_equal(build_features(ds, "2024-01-01").frame, one_pass, check_exact=True)
    seen: list[int] = []
    summary = score_to_file(model, ds, tmp_path / "ranges.parquet", chunk_size=13,
                            progress=lambda done, total: seen.append(done))
    want = pd.read_parquet(tmp_path / "memory.parquet")
    got = pd.read_parquet(tmp_path / "ranges.parquet")
    assert summary.n_in == summary.n_out == len(want)
    # Chunks run across the files of the ranges: every chunk but the last is full.
    assert seen == [*range(13, len(want), 13), len(want)]
    _assert_same_scores(got, want, exact=False)


@pytest.mark.parametrize("passes", [1, 3])
def test_written_features_equal_built_features(ds: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               passes: int) -> None:
    """``clvtier features`` streams the engine's files to the output: the rows, order and types of build_features."""
    import clvtier.features as features_mod
    from clvtier.persist import safe_csv_frame

    want = build_features(ds, "2024-01-01").frame
    rows = int(ds.summary["transactions"]["rows"])
    monkeypatch.setattr(features_mod, "PASS_ROWS", -(-rows // passes))
    monkeypatch.setattr(features_mod, "WRITE_BATCH_ROWS", 97)  # many batches per file
    assert len(features_mod.pass_ranges(ds)) == passes
    written = features_mod.write_features(ds, "2024-01-01", tmp_path / "f.parquet")
    assert written.n_customers == len(want)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "f.parquet"), want, check_exact=True)
    meta = json.loads((tmp_path / "f.parquet.meta.json").read_text())
    assert meta["n_customers"] == len(want) and meta["cutoff"] == "2024-01-01"
    features_mod.write_features(ds, "2024-01-01", tmp_path / "f.csv")
    assert (tmp_path / "f.csv").read_text() == safe_csv_frame(want).to_csv(index=False)


@pytest.mark.parametrize("chunk_size", [11, 250_000], ids=["tiny-chunks", "one-chunk"])
def test_streamed_csv_equals_write_scores(model: Model, ds: Dataset, tmp_path: Path, chunk_size: int) -> None:
    write_scores(predict(model, ds), tmp_path / "memory.csv")
    score_to_file(model, ds, tmp_path / "streamed.csv", chunk_size=chunk_size)
    if chunk_size >= 1000:
        assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "memory.csv").read_bytes()
    read = lambda name: pd.read_csv(tmp_path / name, dtype={"customer_id": str}, keep_default_na=False)  # noqa: E731
    _assert_same_scores(read("streamed.csv"), read("memory.csv"), exact=False)
    assert read("streamed.csv").columns[0] == "customer_id"  # one header


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_failure_mid_stream_leaves_no_output(model: Model, ds: Dataset, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Chunks are read and written in threads next to the scoring: an error in the third chunk
    still propagates, and neither the output nor a temporary file is left behind."""
    import importlib

    predict_mod = importlib.import_module("clvtier.predict")
    calls = []
    real = predict_mod.score_frame

    def failing(*args: Any, **kwargs: Any) -> pd.DataFrame:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("scoring failed on the third chunk")
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "score_frame", failing)
    out = tmp_path / "out" / f"scores{suffix}"
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match="third chunk"):
        score_to_file(model, ds, out, chunk_size=7, with_reasons=False)
    assert len(calls) == 3
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("chunk_size", [5, 6, 1000], ids=["within-chunk", "across-chunks", "one-chunk"])
def test_a_customer_twice_in_the_features_stops_scoring(model: Model, ds: Dataset, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, chunk_size: int) -> None:
    """The streamed features must hold each customer once; a repeat (next to itself, since they are
    sorted) is found within a chunk or across two, and nothing is written."""
    import importlib

    predict_mod = importlib.import_module("clvtier.predict")
    frame = build_features(ds, ds.last_date + dt.timedelta(days=1), model.spec).frame
    doubled = pd.concat([frame.iloc[:6], frame.iloc[5:]], ignore_index=True)  # rows 5 and 6: one customer
    path = tmp_path / "features.parquet"
    doubled.to_parquet(path, index=False)
    monkeypatch.setattr(predict_mod, "write_feature_parts", lambda data, spec, as_of, work: [path])
    out = tmp_path / "out" / "scores.parquet"
    out.parent.mkdir()
    with pytest.raises(InputError, match="a customer twice"):
        score_to_file(model, ds, out, chunk_size=chunk_size, with_reasons=False)
    assert list(out.parent.iterdir()) == []
    path.unlink()
    frame.to_parquet(path, index=False)
    assert score_to_file(model, ds, out, chunk_size=chunk_size, with_reasons=False).n_out == len(frame)


def test_streaming_writes_nothing_on_bad_output(model: Model, ds: Dataset, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown output format"):
        score_to_file(model, ds, tmp_path / "scores.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_cli_predict_streams_and_counts(model: Model, data_dir: Path, sampled: TrainResult, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_run(sampled, run_dir)
    out = tmp_path / "scores.parquet"
    res = runner.invoke(app, ["predict", str(data_dir), "--model", str(run_dir), "--out", str(out),
                              "--chunk-size", "100", "--no-reasons", "--verbose", "--memory-limit", "500MB"])
    assert res.exit_code == 0, res.output
    scores = pd.read_parquet(out)
    assert not scores["customer_id"].duplicated().any()
    from clvtier.validate import load as load_data

    day_after = load_data(data_dir).last_date + dt.timedelta(days=1)
    assert f"Scored {len(scores):,} customers as of {day_after} (known then: {len(scores):,}; in = out)" in res.output
    assert "customers/s" in res.output and "Peak memory" in res.output


# -- the spill directory -------------------------------------------------------------------------
def test_duckdb_spills_under_the_system_temp_dir() -> None:
    con = connect(memory_limit="300MB")
    setting = con.raw_sql("SELECT current_setting('temp_directory')").fetchone()[0]
    assert Path(setting).parent == Path(tempfile.gettempdir())
    assert Path(setting).name.startswith("clvtier-duckdb-")
    assert con.raw_sql("SELECT current_setting('memory_limit')").fetchone()[0] in ("286.1 MiB", "300.0 MB")
