"""Column-wise scoring and occlusion (:mod:`clvtier.occlusion`) against predicting perturbed copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from clvtier.models import make_pipeline, model_input
from clvtier.occlusion import SMALL_ROWS
from clvtier.predict import Model, explanation_groups, proba_in_tier_order, score_frame
from clvtier.train import _reference

CANDIDATES = ("blend", "logreg", "hist_gb", "knn")


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from clvtier.features import build_features
    from clvtier.generate import generate
    from clvtier.validate import load

    out = tmp_path_factory.mktemp("occlusion") / "data"
    generate(500, seed=5, out=out)
    ds = load(Path(out))
    return build_features(ds, ds.last_date).frame


@pytest.fixture(scope="module")
def fitted(features: pd.DataFrame) -> dict[str, Model]:
    """Each candidate fitted on tiers of spend plus noise (enough to give every group an effect)."""
    columns = [c for c in features.columns if c != "customer_id"]
    X = model_input(features, columns)
    rng = np.random.default_rng(0)
    score = np.log1p(X["total_spend"].fillna(0)) + rng.normal(scale=0.7, size=len(X))
    y = np.asarray(["Low", "Medium", "High"], dtype=object)[np.digitize(score, np.quantile(score, [0.5, 0.75]))]
    meta = {"feature_names": columns, "feature_dtypes": {c: str(X[c].dtype) for c in columns},
            "reference": _reference(X)}
    return {name: Model(make_pipeline(name, horizon_days=180, seed=1).fit(X, y), dict(meta))
            for name in CANDIDATES}


def brute_force(model: Model, X: pd.DataFrame) -> np.ndarray:
    """The definition: predict a copy of every customer with each group at the reference."""
    groups = explanation_groups(list(X.columns))
    proba = proba_in_tier_order(model.pipeline, X)
    pred = np.argmax(proba, axis=1)
    out = np.zeros((len(X), len(groups)))
    for j, (_, cols) in enumerate(groups):
        copy = X.copy()
        for c in cols:
            ref = model.reference.get(c)
            copy[c] = pd.Series([np.nan if ref is None else ref] * len(X), dtype=X[c].dtype)
        p = proba_in_tier_order(model.pipeline, copy)
        out[:, j] = proba[np.arange(len(X)), pred] - p[np.arange(len(X)), pred]
    return out


def reason_columns(scores: pd.DataFrame) -> list[str]:
    return [c for c in scores.columns if c.startswith("reason_") and not c.endswith("_effect")]


@pytest.mark.parametrize("name", ["blend", "logreg", "hist_gb"])
def test_plan_probabilities_equal_predict_proba_bit_for_bit(fitted: dict[str, Any], features: pd.DataFrame,
                                                            name: str) -> None:
    model = fitted[name]
    assert model.plan is not None
    X = model_input(features, model.feature_names)
    np.testing.assert_array_equal(model.plan.predict_proba(X), model.pipeline.predict_proba(X))


def test_no_plan_for_other_shapes(fitted: dict[str, Any]) -> None:
    assert fitted["knn"].plan is None


@pytest.mark.parametrize("name", CANDIDATES)
def test_effects_equal_the_definition(fitted: dict[str, Any], features: pd.DataFrame, name: str) -> None:
    model = fitted[name]
    X = model_input(features, model.feature_names)
    want = brute_force(model, X)
    scores = score_frame(model, features)
    groups = [g[0] for g in explanation_groups(model.feature_names)]
    for i in range(len(X)):
        for k in range(3):
            g = groups.index(scores.loc[i, f"reason_{k + 1}"])
            assert abs(scores.loc[i, f"reason_{k + 1}_effect"] - want[i, g]) <= 1e-12
        top = np.sort(want[i])[::-1][:3]
        np.testing.assert_allclose(scores.loc[i, [f"reason_{k}_effect" for k in (1, 2, 3)]].to_numpy(float), top,
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["blend", "hist_gb"])
def test_group_at_reference_has_effect_exactly_zero(fitted: dict[str, Any], features: pd.DataFrame,
                                                    name: str) -> None:
    model = fitted[name]
    X = model_input(features, model.feature_names)
    groups = explanation_groups(model.feature_names)
    at_ref = X.copy()
    for c in groups[0][1] + groups[1][1]:  # the BTYD summary and the first single feature
        ref = model.reference[c]
        at_ref[c] = np.nan if ref is None else ref
    _, effects = model.plan.scores(at_ref)
    assert (effects[:, :2] == 0).all()
    assert (effects[:, 2:] != 0).any()


@pytest.mark.parametrize("name", ["blend", "hist_gb"])
def test_one_customer_alone_gets_the_reasons_it_gets_in_a_batch(fitted: dict[str, Any], features: pd.DataFrame,
                                                                name: str) -> None:
    """Few customers take the perturbed-copy route, many the pruned-tree route: same reasons."""
    model = fitted[name]
    assert len(features) * len(explanation_groups(model.feature_names)) > SMALL_ROWS
    batch = score_frame(model, features)
    for i in range(0, len(features), 37):
        alone = score_frame(model, features.iloc[[i]])
        assert alone[reason_columns(alone)].iloc[0].tolist() == batch[reason_columns(batch)].iloc[i].tolist()
        effects = [f"reason_{k}_effect" for k in (1, 2, 3)]
        np.testing.assert_allclose(alone[effects].iloc[0].to_numpy(float), batch[effects].iloc[i].to_numpy(float),
                                   rtol=0, atol=1e-15)


def test_thread_count_changes_no_bit(fitted: dict[str, Any], features: pd.DataFrame) -> None:
    from clvtier.occlusion import compile_plan

    model = fitted["hist_gb"]
    X = model_input(features, model.feature_names)
    plans = []
    for threads in (1, 2):
        plan = compile_plan(model.pipeline, model.feature_names, explanation_groups(model.feature_names),
                            model.reference)
        assert plan is not None
        plan.set_threads(threads)
        plans.append(plan.scores(X))
    for got in plans:
        np.testing.assert_array_equal(got[0], model.pipeline.predict_proba(X))
    np.testing.assert_array_equal(plans[0][1], plans[1][1])
    assert np.abs(plans[0][1]).sum() > 0


@pytest.mark.parametrize(("name", "metric"), [("blend", "macro_f1"), ("hist_gb", "macro_f1"),
                                             ("blend", "accuracy"), ("hist_gb", "balanced_accuracy"),
                                             ("hist_gb", "weighted_f1")])
def test_permutation_importance_through_the_plan_equals_the_pipeline(
        fitted: dict[str, Any], features: pd.DataFrame, name: str, metric: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    train_mod = importlib.import_module("clvtier.train")
    model = fitted[name]
    X = model_input(features, model.feature_names)
    y = model.pipeline.predict(X)
    y[::7] = "Low"  # not a perfect score, so that shuffling has something to lose
    cfg = train_mod.TrainConfig(metric=metric)
    assert train_mod._shuffler(model.pipeline, X, model.reference) is not None
    fast = train_mod._permutation_importance(model.pipeline, X, y, cfg, model.reference, n_repeats=2)
    monkeypatch.setattr(train_mod, "_shuffler", lambda pipeline, X, reference: None)
    slow = train_mod._permutation_importance(model.pipeline, X, y, cfg, model.reference, n_repeats=2)
    assert fast == slow
    assert max(r["mean"] for r in fast) > 0


@pytest.mark.parametrize("name", ["blend", "logreg", "hist_gb"])
def test_shuffled_group_probabilities_equal_predict_proba_bit_for_bit(
        fitted: dict[str, Any], features: pd.DataFrame, name: str) -> None:
    from clvtier.occlusion import Shuffler

    model = fitted[name]
    X = model_input(features, model.feature_names)
    shuffler = Shuffler(model.plan, X)
    perm = np.random.default_rng(3).permutation(len(X))
    for g, (_, members) in enumerate(explanation_groups(model.feature_names)):
        Xp = X.copy()
        for col in members:
            Xp[col] = X[col].to_numpy()[perm]
        np.testing.assert_array_equal(shuffler.proba(g, perm), model.pipeline.predict_proba(Xp))


@pytest.mark.parametrize("name", ["blend", "hist_gb"])
def test_lookup_tables_and_parts_change_no_bit(fitted: dict[str, Any], features: pd.DataFrame, name: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Trees read through lookup tables, calls split into parts side by side: the same bits for
    the trees; a logistic member's matrix product may round the last bit differently on fewer rows."""
    import clvtier.occlusion as occ

    model = fitted[name]
    X = model_input(features, model.feature_names)
    plain = score_frame(model, features)
    monkeypatch.setattr(occ, "TABLE_ROWS", 1)
    monkeypatch.setattr(occ, "TABLE_AFTER_ROWS", 1)
    monkeypatch.setattr(occ, "PARALLEL_ROWS", 100)
    plan = occ.compile_plan(model.pipeline, model.feature_names, explanation_groups(model.feature_names),
                            model.reference)
    assert plan is not None
    plan.set_threads(3)
    calls = []
    real = occ.Plan._outputs
    monkeypatch.setattr(occ.Plan, "_outputs", lambda self, part, *a, **k: calls.append(len(part)) or real(
        self, part, *a, **k))
    got, want = plan.predict_proba(X), model.pipeline.predict_proba(X)
    if name == "hist_gb":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    assert sorted(calls) == sorted(len(p) for p in np.array_split(np.arange(len(X)), 3))
    boosting = [est for _, est in plan.members if isinstance(est, occ._Boosting)]
    assert boosting and all(any(t is not None for t in est.tables.values()) for est in boosting)
    monkeypatch.setattr(Model, "plan", plan)
    tabled = score_frame(model, features)
    pd.testing.assert_frame_equal(tabled, plain, check_exact=False, rtol=0, atol=1e-15)
    assert tabled[reason_columns(tabled)].equals(plain[reason_columns(plain)])


def test_lookup_table_values_equal_the_tree_with_missing_bins_and_large_trees(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tree's values through its table equal ``predict_binned``, including missing-value bins
    (those columns fall back to the tree) and trees too large for a table."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    import clvtier.occlusion as occ
    from clvtier.occlusion import TABLE_ENTRIES, TABLE_ROWS, _Boosting

    monkeypatch.setattr(occ, "TABLE_AFTER_ROWS", 6000)  # built on the second call

    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 6))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2]) > 0).astype(int) + (
        np.nan_to_num(X[:, 3]) > 1)
    model = HistGradientBoostingClassifier(max_iter=8, max_leaf_nodes=63, min_samples_leaf=5, max_bins=31,
                                           random_state=0).fit(X, y)
    est = _Boosting(model)
    preds = [p for _, p in est.trees]
    n = max(TABLE_ROWS, 4000)
    for missing_cols in ([], [], [1], list(range(6))):
        B = np.asfortranarray(rng.integers(0, est.missing_bin, size=(n, 6)).astype(np.uint8))
        for c in missing_cols:
            B[rng.random(n) < 0.2, c] = est.missing_bin
        got = list(est.values(preds, B, threads=1))
        assert bool(est.tables) == (sum(est.rows_seen.values()) >= 6000 * len(preds))
        for pred, values in zip(preds, got, strict=True):
            np.testing.assert_array_equal(values, pred.predict_binned(B, est.missing_bin, 1))
    tables = [est.tables[id(p)] for p in preds]
    assert any(t is None for t in tables), "no tree exceeded the table size; the fallback went untested"
    assert any(t is not None and len(t.table) > 1 for t in tables)
    assert all(t is None or len(t.table) <= TABLE_ENTRIES for t in tables)


def test_bins_from_the_trees_thresholds_send_every_row_where_the_bin_mapper_does() -> None:
    """Many rows are binned over the thresholds the trees use only: every tree gives the values it
    gives on the bin mapper's bins, including values equal to a threshold and missing values."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from clvtier.occlusion import TABLE_ROWS, _Boosting

    rng = np.random.default_rng(7)
    X = rng.normal(size=(3000, 5))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) - np.nan_to_num(X[:, 1]) > 0).astype(int) + (np.nan_to_num(X[:, 2]) > 0.5)
    model = HistGradientBoostingClassifier(max_iter=10, max_leaf_nodes=15, max_bins=63,
                                           random_state=0).fit(X, y)
    est = _Boosting(model)
    T = rng.normal(size=(max(TABLE_ROWS, 5000), 5)) * 1.5
    T[rng.random(T.shape) < 0.1] = np.nan
    for f in range(5):  # values exactly on thresholds, and just above them
        rows = rng.integers(0, len(T), size=200)
        picks = rng.choice(est.thresholds[f], size=200)
        T[rows[:100], f] = picks[:100]
        T[rows[100:], f] = np.nextafter(picks[100:], np.inf)
    T = np.asfortranarray(T)
    fast = est.binned(T, threads=1)
    exact = model._bin_mapper.transform(T)
    assert not np.array_equal(fast, exact), "the bins should differ where the trees use fewer thresholds"
    for _, pred in est.trees:
        np.testing.assert_array_equal(pred.predict_binned(fast, est.missing_bin, 1),
                                      pred.predict_binned(exact, est.missing_bin, 1))
    raw, _, _ = est.output(T, threads=1, keep=False)
    np.testing.assert_array_equal(est.proba(raw), model.predict_proba(T))


def test_every_tree_walked_at_once_gives_each_trees_values_and_the_pipelines_probabilities() -> None:
    """A few rows go down every tree side by side (:class:`_Forest`): each tree's values equal
    ``predict_binned``, missing-value bins included, and the probabilities ``predict_proba``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from clvtier.occlusion import FOREST_ROWS, _Boosting

    rng = np.random.default_rng(11)
    X = rng.normal(size=(2000, 5))
    X[rng.random(X.shape) < 0.15] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) > 0).astype(int) + (np.nan_to_num(X[:, 2]) > 0.7)
    model = HistGradientBoostingClassifier(max_iter=12, max_leaf_nodes=31, random_state=0).fit(X, y)
    est = _Boosting(model)
    assert est.forest.depth > 3
    for n in (1, 5, FOREST_ROWS):
        T = np.asfortranarray(rng.normal(size=(n, 5)) * 1.5)
        T[rng.random(T.shape) < 0.3] = np.nan
        B = est.binned(T, threads=1)
        walked = est.forest.values(B, est.missing_bin)
        for pred, values in zip([p for _, p in est.trees], walked, strict=True):
            np.testing.assert_array_equal(values, pred.predict_binned(B, est.missing_bin, 1))
        raw, _, _ = est.output(T, threads=1, keep=False)
        np.testing.assert_array_equal(est.proba(raw), model.predict_proba(T))


@pytest.mark.parametrize("name", ["blend", "hist_gb"])
def test_plan_on_a_few_customers_equals_predict_proba_bit_for_bit(fitted: dict[str, Any], features: pd.DataFrame,
                                                                  name: str) -> None:
    from clvtier.occlusion import FOREST_ROWS

    model = fitted[name]
    X = model_input(features, model.feature_names)
    for n in (1, 3, FOREST_ROWS):
        part = X.iloc[np.arange(n) * 7].reset_index(drop=True)
        np.testing.assert_array_equal(model.plan.predict_proba(part), model.pipeline.predict_proba(part))
