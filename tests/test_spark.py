"""Spark gives the same answers as DuckDB: features (1e-9 relative, same dtypes) and tiers (exactly).

One local Spark session serves the module (it takes 20-40 s to start); the data are
300 generated customers. Skipped only when PySpark or Java is missing; CI installs both.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("pyspark", reason="needs the spark extra: pip install 'clvtier[spark]'")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("needs Java 17 (apt-get install openjdk-17-jre-headless)", allow_module_level=True)

from clvtier.cli import app  # noqa: E402
from clvtier.errors import InputError  # noqa: E402
from clvtier.features import build_features  # noqa: E402
from clvtier.generate import generate  # noqa: E402
from clvtier.models import make_pipeline, model_input  # noqa: E402
from clvtier.persist import save_model  # noqa: E402
from clvtier.predict import load as load_model  # noqa: E402
from clvtier.predict import predict  # noqa: E402
from clvtier.spark import feature_frame, read_tables, spark_predict, spark_session  # noqa: E402
from clvtier.target import TIERS  # noqa: E402
from clvtier.validate import load  # noqa: E402

pytestmark = [
    pytest.mark.spark,
    pytest.mark.slow,
    # PySpark 4.0 passes pandas 3 a deprecated copy= keyword when it converts Arrow batches.
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning:pyspark"),
]

CUTOFF = dt.date(2023, 6, 1)


@pytest.fixture(scope="module")
def session():  # type: ignore[no-untyped-def]
    spark = spark_session("local[2]")
    yield spark
    spark.stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(300, 11, tmp_path_factory.mktemp("spark") / "data").out


def assert_same_frame(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    """Same columns, dtypes and customers; floats within 1e-9 relative (NaN equals NaN); text equal."""
    assert list(got.columns) == list(expected.columns)
    assert got.dtypes.to_dict() == expected.dtypes.to_dict()
    a = expected.sort_values("customer_id").reset_index(drop=True)
    b = got.sort_values("customer_id").reset_index(drop=True)
    assert b["customer_id"].tolist() == a["customer_id"].tolist()
    for col in a.columns:
        if pd.api.types.is_float_dtype(a[col]):
            np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=1e-9, atol=0, equal_nan=True,
                                       err_msg=col)
        else:
            assert b[col].isna().tolist() == a[col].isna().tolist(), col
            assert b[col].dropna().tolist() == a[col].dropna().tolist(), col


def test_features_equal_duckdb(session, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = build_features(load(data_dir), CUTOFF)
    assert len(local.frame) > 100

    out = tmp_path / "features.parquet"
    result = CliRunner().invoke(app, ["features", str(data_dir), "--cutoff", CUTOFF.isoformat(), "--out", str(out),
                                      "--engine", "spark", "--master", "local[2]"])
    assert result.exit_code == 0, result.output
    assert f"{len(local.frame):,} customers" in result.output
    assert_same_frame(local.frame, pd.read_parquet(out))

    collected = feature_frame(read_tables(session, data_dir, check=False), CUTOFF, local.spec).toPandas()
    assert_same_frame(local.frame, collected)


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model bundle: logistic regression (quick to fit) on the next 180 days' spend tiers."""
    data = load(data_dir)
    fs = build_features(data, CUTOFF)
    later = build_features(data, CUTOFF + dt.timedelta(days=180), fs.spec).frame.set_index("customer_id")
    future = later["total_spend"].reindex(fs.frame["customer_id"]).to_numpy() - fs.frame["total_spend"].to_numpy()
    y = np.asarray(TIERS)[np.searchsorted(np.quantile(future, [0.5, 0.8]), future, side="right")]
    names = list(fs.columns)
    pipeline = make_pipeline("logreg", horizon_days=180, seed=0).fit(model_input(fs.frame, names), y)
    metadata = {
        "feature_names": names,
        "feature_dtypes": {c: str(model_input(fs.frame, names)[c].dtype) for c in names},
        "feature_spec": fs.spec.to_dict(),
        "reference": {},
    }
    out = tmp_path_factory.mktemp("spark") / "run"
    save_model(pipeline, out, metadata)
    return out


def test_scores_equal_local(session, data_dir: Path, run_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = predict(load_model(run_dir), load(data_dir), with_reasons=False)
    assert set(local["tier"]) == set(TIERS)

    out = tmp_path / "scores.parquet"
    n = spark_predict(str(data_dir), run_dir, str(out), session=session, check=False)  # as_of from one query
    got = pd.read_parquet(out)

    assert n == len(local) == len(got)
    assert got.columns.tolist() == ["customer_id", "tier", "p_low", "p_medium", "p_high"]
    a = local.sort_values("customer_id").reset_index(drop=True)
    b = got.sort_values("customer_id").reset_index(drop=True)
    assert b["customer_id"].tolist() == a["customer_id"].tolist()
    assert b["tier"].tolist() == a["tier"].tolist()
    for col in ("p_low", "p_medium", "p_high"):
        assert b[col].dtype == np.float64
        np.testing.assert_allclose(b[col], a[col], rtol=0, atol=1e-12, err_msg=col)


def test_cli_scores_with_reasons_as_on_one_machine(session, data_dir: Path,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    from clvtier.persist import write_run
    from clvtier.train import TrainConfig, train

    # A run of 'clvtier train' (reasons need the typical training values it saves).
    result = train(load(data_dir), TrainConfig(candidates=("logreg",), cv_folds=3, n_boot=20, backtests=0,
                                               horizon_days=180))
    run_dir = tmp_path / "run"
    write_run(result, run_dir, command="clvtier train")
    local = predict(load_model(run_dir), load(data_dir), with_reasons=True)
    out = tmp_path / "scores.parquet"
    res = CliRunner().invoke(app, ["predict", str(data_dir), "--model", str(run_dir), "--out", str(out),
                                   "--engine", "spark", "--master", "local[2]"])
    assert res.exit_code == 0, res.output
    got = pd.read_parquet(out)
    assert got.columns.tolist() == local.columns.tolist() and "reason_1" in got.columns
    a = local.sort_values("customer_id").reset_index(drop=True)
    b = got.sort_values("customer_id").reset_index(drop=True)
    for col in a.columns:
        if pd.api.types.is_float_dtype(a[col]):
            np.testing.assert_allclose(b[col], a[col], rtol=0, atol=1e-12, err_msg=col)
        else:
            assert b[col].tolist() == a[col].tolist(), col
    res = CliRunner().invoke(app, ["predict", str(data_dir), "--model", str(run_dir), "--out", str(out),
                                   "--engine", "spark", "--master", "local[2]", "--no-reasons"])
    assert res.exit_code == 0, res.output
    assert pd.read_parquet(out).columns.tolist() == ["customer_id", "tier", "p_low", "p_medium", "p_high"]


def test_spark_output_never_replaces_data_or_other_files(session, data_dir: Path,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("not Spark's")
    for out, needle in ((data, "table's input"), (data / "transactions_final.csv", "table's input"),
                        (other, "exists and is not an earlier Spark output")):
        res = CliRunner().invoke(app, ["features", str(data), "--cutoff", CUTOFF.isoformat(), "--out", str(out),
                                       "--engine", "spark", "--master", "local[2]"])
        assert res.exit_code == 2, res.output
        assert needle in res.output and "Fix:" in res.output
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert (other / "keep.txt").read_text() == "not Spark's"
    earlier = tmp_path / "features.parquet"
    for _ in range(2):  # an earlier Spark output is replaced
        res = CliRunner().invoke(app, ["features", str(data), "--cutoff", CUTOFF.isoformat(), "--out", str(earlier),
                                       "--engine", "spark", "--master", "local[2]"])
        assert res.exit_code == 0, res.output


def test_spark_checks_a_uri_output_on_its_own_file_system(session, data_dir: Path,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    # An output URI (hdfs://, s3a://, ...) is checked through Hadoop's file system for its
    # scheme; file: URIs take the same route here.
    from clvtier.spark import _check_uri_output

    data = read_tables(session, data_dir, check=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("not Spark's")
    for out, needle in ((data_dir.as_uri(), "table's input"),
                        ((data_dir / "transactions_final.csv").as_uri(), "table's input"),
                        (other.as_uri(), "exists and is not an earlier Spark output"),
                        ((other / "keep.txt").as_uri(), "exists and is not an earlier Spark output")):
        with pytest.raises(InputError, match=needle):
            _check_uri_output(out, data)
    earlier = tmp_path / "earlier.parquet"
    earlier.mkdir()
    for name in ("part-00000-1.snappy.parquet", "_SUCCESS", ".part-00000-1.snappy.parquet.crc"):
        (earlier / name).write_bytes(b"")
    _check_uri_output(earlier.as_uri(), data)  # an earlier Spark output may be replaced
    _check_uri_output((tmp_path / "new.parquet").as_uri(), data)
    with pytest.raises(InputError, match="No FileSystem for scheme"):
        _check_uri_output("nosuchfs://bucket/features.parquet", data)


def test_spark_refuses_a_date_before_the_data(session, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "features.parquet"
    res = CliRunner().invoke(app, ["features", str(data_dir), "--cutoff", "2019-06-01", "--out", str(out),
                                   "--engine", "spark", "--master", "local[2]"])
    assert res.exit_code == 2, res.output
    assert "no customer is known before the cutoff 2019-06-01" in res.output
    assert not out.exists()


def test_spark_csv_guards_formulas_as_duckdb_does(session, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    customers = pd.read_csv(data / "customers_final.csv", dtype=str, keep_default_na=False)
    customers.loc[0, "location"] = '=HYPERLINK("http://example.com")'
    customers.loc[1, "location"] = "-7 Main Street"
    customers.to_csv(data / "customers_final.csv", index=False)
    outs = {"duckdb": tmp_path / "duckdb.csv", "spark": tmp_path / "spark.csv"}
    for engine, out in outs.items():
        res = CliRunner().invoke(app, ["features", str(data), "--cutoff", CUTOFF.isoformat(), "--out", str(out),
                                       "--engine", engine, "--master", "local[2]"])
        assert res.exit_code == 0, res.output
    duck = pd.read_csv(outs["duckdb"], dtype=str)
    spark = pd.concat([pd.read_csv(p, dtype=str) for p in sorted(outs["spark"].glob("part-*.csv"))])
    a, b = (f.sort_values("customer_id").set_index("customer_id")["location"] for f in (duck, spark))
    assert b.equals(a)
    assert {"'=HYPERLINK(\"http://example.com\")", "'-7 Main Street"} <= set(a)


@pytest.mark.parametrize(("master", "message"), [
    ("local[x]", "--master 'local[x]' is not a local master URL"),
    ("local[0]", "--master 'local[0]' is not a local master URL"),
    ("spark://127.0.0.1:1", "no Spark master answers at spark://127.0.0.1:1"),
], ids=["local-letters", "local-zero", "nobody-listening"])
def test_a_bad_master_is_refused_before_spark_starts(data_dir: Path, tmp_path: Path, master: str,
                                                     message: str) -> None:
    out = tmp_path / "features.parquet"
    res = CliRunner().invoke(app, ["features", str(data_dir), "--cutoff", CUTOFF.isoformat(), "--out", str(out),
                                   "--engine", "spark", "--master", master])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Fix:" in res.output
    assert not out.exists()
