"""CDNOW through clvtier's own ingestion (docs/cdnow.toml) and a small run of the CDNOW-78 benchmark code."""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from clvtier.errors import InputError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMOKE_CUSTOMERS = 2500


def _benchmark() -> ModuleType:
    name = "clvtier_benchmark_cdnow"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "cdnow.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def master() -> Path:
    from clvtier.datasets import fetch_cdnow

    try:
        return fetch_cdnow("master")
    except InputError as exc:  # offline and not cached
        pytest.skip(f"CDNOW master file unavailable: {exc.message}")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _benchmark()


@pytest.fixture(scope="module")
def dataset(master: Path, bench: ModuleType):
    return bench.load_cdnow(master)


def test_mapping_file_ingests_the_master_file(dataset) -> None:
    tx = dataset.summary["transactions"]
    assert tx["rows"] == 69_659
    assert tx["customers"] == 23_570
    assert (tx["first_date"], tx["last_date"]) == (dt.date(1997, 1, 1), dt.date(1998, 6, 30))
    assert [p.code for p in dataset.problems if p.severity == "error"] == []
    warnings = [(p.code, p.count) for p in dataset.warnings]
    assert warnings == [("zero_amount", 80)]


def test_mapping_maps_ids_dates_and_amounts(dataset) -> None:
    tx = dataset.tables["transactions"]
    first = tx.order_by(tx.transaction_id.cast("int64")).limit(3).execute()
    assert first["customer_id"].tolist() == ["00001", "00002", "00002"]
    assert first["transaction_date"].astype(str).tolist() == ["1997-01-01", "1997-01-12", "1997-01-12"]
    assert first["transaction_amount"].tolist() == pytest.approx([11.77, 12.0, 77.0])
    assert dataset.con.execute(tx.transaction_amount.sum()) == pytest.approx(2_500_315.63, abs=0.01)


def test_protocol_split_and_thresholds(dataset, bench: ModuleType) -> None:
    p = bench.make_protocol(dataset)
    assert (len(p.train), len(p.test)) == (16_499, 7_071)
    assert not set(p.train) & set(p.test)
    assert p.binner_a.low_cut_ == pytest.approx(19.97, abs=0.01)
    assert p.binner_a.high_cut_ == pytest.approx(106.46, abs=0.01)
    assert p.threshold_b == pytest.approx(18.98, abs=0.01)
    # The zero rule makes clvtier's future High tier exactly target B.
    future_binner = bench.TierBinner().fit(p.future[p.train])
    assert future_binner.zero_rule_applied_
    assert np.array_equal(future_binner.transform(p.future) == "High", p.high_b)


@pytest.fixture(scope="module")
def smoke(master: Path, bench: ModuleType, tmp_path_factory: pytest.TempPathFactory):
    """The benchmark's protocol code on the first customers of the master file."""
    lines = master.read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if int(ln.split()[0]) <= SMOKE_CUSTOMERS]
    path = tmp_path_factory.mktemp("cdnow") / "CDNOW_master.txt"
    path.write_text("\r\n".join(keep) + "\r\n")
    ds = bench.load_cdnow(path)
    p = bench.make_protocol(ds)
    rows = bench.anchor_rows(ds, p)
    run = bench.clvtier_row(ds, p, n_boot=50, candidates=("logreg", "blend"), cv_folds=3)
    table = bench.score_rows([*rows, run.row], p, n_boot=50)
    return ds, p, run, table


def test_smoke_protocol_on_a_subset(smoke) -> None:
    ds, p, run, _ = smoke
    assert ds.summary["transactions"]["customers"] == SMOKE_CUSTOMERS
    assert len(p.train) + len(p.test) == SMOKE_CUSTOMERS
    assert len(p.test) == pytest.approx(0.3 * SMOKE_CUSTOMERS, abs=1)
    assert run.row.note == ""
    # clvtier chose by cross-validation on the training customers only.
    for res in (run.total, run.future):
        assert res.metrics["n_test"] == len(p.test)
        best = max(res.metrics["cv"], key=lambda r: r["mean"])["model"]
        assert res.chosen == best


@pytest.mark.parametrize("name", ["majority", "carry-forward", "BG/NBD + GG", "Pareto/NBD + GG", "logreg", "knn",
                                  "random_forest", "naive_bayes", "hist_gb", "clvtier"])
def test_smoke_every_row_is_scored(smoke, name: str) -> None:
    table = smoke[3]
    cells = table.cells[name]
    expected = {"acc_a", "macro_f1_a", "auc_b"} | (set() if name == "majority" else {"f1top25_b", "capture_b"})
    assert set(cells) == expected
    for metric, (value, lo, hi) in cells.items():
        assert np.isfinite([value, lo, hi]).all(), metric
        assert lo <= value + 1e-9 and value <= hi + 1e-9, metric


def test_smoke_sanity_bounds(smoke, bench: ModuleType) -> None:
    table = smoke[3]
    clv = table.cells["clvtier"]
    assert clv["auc_b"][0] > 0.7
    assert clv["acc_a"][0] > table.cells["majority"]["acc_a"][0] + 0.2
    assert 0.25 < clv["capture_b"][0] <= 1.0
    assert set(table.diffs) == {"acc_a", "macro_f1_a", "auc_b", "f1top25_b", "capture_b"}
    assert all(d["anchor"] not in ("clvtier", "majority") for d in table.diffs.values())
    line = bench.summary_line(table)
    assert re.fullmatch(r"CDNOW-78 clvtier auc_b=\S+ capture_b=\S+ f1top25_b=\S+ acc_a=\S+ macro_f1_a=\S+", line)
