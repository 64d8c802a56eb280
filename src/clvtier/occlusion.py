"""Occlusion: tier probabilities, and each feature group's occlusion effect, computed column by column.

The effect of a feature group on a customer is how much the probability of the
predicted tier drops when the group alone is set to its typical training value
(see :func:`clvtier.predict.reasons`). Predicting every customer once per group
costs one full prediction per group; this module gets the same numbers from one
pass over the customers by using how the candidate pipelines are built:

* the BTYD step reads only the BTYD summary columns, so its outputs move only
  with that group, and the group's reference gives one constant row;
* the preprocessing (imputation, signed log, scaling, one-hot encoding) works
  column by column, so setting a group to its reference replaces the group's
  output columns with the reference's, and leaves the others as they are;
* a logistic regression's decision moves by ``(reference - x) @ coef`` over those
  columns;
* a gradient-boosting tree's output can only move when the customer's path
  passes a split on one of those columns: each tree is evaluated once with the
  customer's values, and the trees that split on a group once more with that
  group's splits decided by the reference (the tree "pruned" at the reference).

The perturbed probabilities are those a full prediction of the perturbed
customer gives, up to the order of floating-point additions (about 1e-16); a
group whose columns already equal the reference's moves nothing and gets an
effect of exactly 0. The probabilities of the customers themselves are those of
``pipeline.predict_proba`` bit for bit (checked when the plan is built), except that
a logistic member's matrix product may round its last bit differently when a large
call is split into parts scored side by side (:data:`PARALLEL_ROWS`).

On many rows, the trees read bins counted over their own thresholds and, once a
tree has seen enough rows, a table of its leaf values (:class:`_Table`): the same
leaves as scikit-learn's walk down the tree, without a branch per row. On a few rows
(the service's single customers), every tree is walked at once (:class:`_Forest`), one
array operation per tree level instead of a call per tree.

Pipelines of other shapes (k-nearest neighbours, random forest, naive Bayes)
have no plan (:func:`compile_plan` returns None); their effects are computed by
predicting only the customers whose group differs from the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, VotingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.utils.extmath import softmax

from clvtier.btyd import BTYDFeatures
from clvtier.decision import TierDecision, _cumulative, _shifted
from clvtier.errors import ClvtierError
from clvtier.models import signed_log1p

#: Customers per block of the gradient-boosting pass (the binned block stays in cache).
BLOCK_ROWS = 8192
#: Up to this many (customer, group) pairs, trees run on perturbed copies rather than pruned trees.
SMALL_ROWS = 256
#: Up to this many rows, every tree is walked at once (:class:`_Forest`), not called tree by tree.
FOREST_ROWS = 32
#: From this many rows per call, columns are binned over the trees' own thresholds and trees
#: that have a lookup table (:class:`_Table`) are read through it.
TABLE_ROWS = 2048
#: A tree's table is built once the tree has been evaluated on this many rows in all: building
#: one costs about what reading 40,000 rows through it saves.
TABLE_AFTER_ROWS = 50_000
#: Largest lookup table (entries); a tree with more combinations of classes runs as it is.
TABLE_ENTRIES = 1 << 16
#: Up to this many thresholds on a column, a tree's table code counts them by comparisons.
COMPARE_CUTS = 4
#: From this many rows a plan scores a call in :attr:`Plan.threads` parts side by side.
PARALLEL_ROWS = 50_000
#: Occluded rows of several groups are turned into probabilities together, up to this many at once.
EFFECT_ROWS = 65_536


def _effective_threads() -> int:
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    return int(_openmp_effective_n_threads())


class _Unsupported(Exception):
    """The pipeline has a shape this module does not know; the caller falls back."""


# -- preprocessing ------------------------------------------------------------------------------
def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A frame's columns by name, read once: looking a column up in a frame costs more than
    transforming it on a few rows."""
    return {name: column.to_numpy() for name, column in frame.items()}


@dataclass
class _NumericBlock:
    """SimpleImputer (with indicator) followed by element-wise steps, on numeric columns."""

    columns: list[str]
    keep: np.ndarray             # input positions of the imputed value columns
    fill: np.ndarray             # their imputation values
    indicate: np.ndarray         # input positions of the missing-indicator columns
    steps: list[tuple[str, Any]]

    @classmethod
    def build(cls, pipe: Any, columns: list[str]) -> _NumericBlock:
        steps = list(pipe.steps) if isinstance(pipe, Pipeline) else [("only", pipe)]
        imputer = steps[0][1]
        if type(imputer) is not SimpleImputer or imputer.strategy == "constant":
            raise _Unsupported("numeric block")
        stats = np.asarray(imputer.statistics_, dtype=np.float64)
        keep = np.arange(len(columns)) if imputer.keep_empty_features else np.flatnonzero(~np.isnan(stats))
        indicate = (np.asarray(imputer.indicator_.features_, dtype=np.intp) if imputer.add_indicator
                    else np.zeros(0, dtype=np.intp))
        if imputer.add_indicator and imputer.indicator_.features != "missing-only":
            raise _Unsupported("missing indicator")
        program: list[tuple[str, Any]] = []
        for _, step in steps[1:]:
            if type(step) is FunctionTransformer and step.func is signed_log1p and not step.kw_args:
                program.append(("log", None))
            elif type(step) is StandardScaler:
                program.append(("scale", step))
            else:
                raise _Unsupported(f"numeric step {type(step).__name__}")
        return cls(columns, keep, stats[keep], indicate, program)

    @property
    def sources(self) -> list[str]:
        """The input column behind each output column."""
        return [self.columns[i] for i in self.keep] + [self.columns[i] for i in self.indicate]

    @property
    def width(self) -> int:
        return len(self.keep) + len(self.indicate)

    def transform_into(self, X: Mapping[str, np.ndarray], out: np.ndarray) -> None:
        """Write the block's output columns into ``out`` (rows x :attr:`width`), one column at a time.

        Every step works element by element, so a column gives the numbers the steps give
        on the whole block.
        """
        for j, i in enumerate([*self.keep, *self.indicate]):
            x = np.asarray(X[self.columns[i]], dtype=np.float64)
            missing = np.isnan(x)
            if j < len(self.keep):
                v = np.where(missing, self.fill[j], x) if missing.any() else x
            else:
                v = missing.astype(np.float64)
            for kind, step in self.steps:
                if kind == "log":
                    v = signed_log1p(v)
                else:
                    if step.with_mean:
                        v = v - step.mean_[j]
                    if step.with_std:
                        v = v / step.scale_[j]
            out[:, j] = v


@dataclass
class _CategoricalBlock:
    """A fitted categorical pipeline (imputer + one-hot) as a lookup matrix per column."""

    columns: list[str]
    widths: list[int]
    positions: list[dict[Any, int]]  # per column, each known value's row in its matrix
    matrices: list[np.ndarray]       # per column, the output rows: each known value's, missing, unseen

    @classmethod
    def build(cls, pipe: Any, columns: list[str]) -> _CategoricalBlock:
        steps = list(pipe.steps) if isinstance(pipe, Pipeline) else [("only", pipe)]
        kinds = [type(s) for _, s in steps]
        if kinds not in ([SimpleImputer, OneHotEncoder], [OneHotEncoder]):
            raise _Unsupported("categorical block")
        encoder = steps[-1][1]
        widths = list(getattr(encoder, "_n_features_outs", []))
        if len(widths) != len(columns) or encoder.drop is not None:
            raise _Unsupported("one-hot layout")
        starts = np.concatenate([[0], np.cumsum(widths)])
        base = [encoder.categories_[i][0] for i in range(len(columns))]
        positions, matrices = [], []
        for i, col in enumerate(columns):
            known = [v for v in encoder.categories_[i] if isinstance(v, str)]
            sentinel = "\x00unseen"
            while sentinel in known:
                sentinel += "\x00"
            values = [*known, np.nan, sentinel]
            frame = pd.DataFrame({c: [base[j]] * len(values) for j, c in enumerate(columns)}, dtype=object)
            frame[col] = pd.Series(values, dtype=object)
            positions.append({v: k for k, v in enumerate(known)})
            matrices.append(np.asarray(pipe.transform(frame), dtype=np.float64)[:, starts[i]:starts[i + 1]])
        return cls(columns, widths, positions, matrices)

    @property
    def sources(self) -> list[str]:
        return [c for c, w in zip(self.columns, self.widths, strict=True) for _ in range(w)]

    @property
    def width(self) -> int:
        return sum(self.widths)

    def transform_into(self, X: Mapping[str, np.ndarray], out: np.ndarray) -> None:
        """Write the one-hot columns into ``out`` (rows x :attr:`width`), one input column at a time."""
        start = 0
        for i, col in enumerate(self.columns):
            codes, uniques = pd.factorize(X[col], use_na_sentinel=True)
            position = self.positions[i]
            unseen = len(position) + 1  # the matrix's last row; missing values take the one before
            where = np.array([position.get(u, unseen) if isinstance(u, str) else unseen for u in uniques]
                             + [unseen - 1], dtype=np.intp)
            out[:, start:start + self.widths[i]] = self.matrices[i][where[codes]]
            start += self.widths[i]


@dataclass
class _Prep:
    """A ColumnTransformer of numeric and categorical blocks, evaluated without pandas per block."""

    blocks: list[Any]

    @classmethod
    def build(cls, ct: Any) -> _Prep:
        if type(ct) is not ColumnTransformer or ct.sparse_output_:
            raise _Unsupported("preprocessing")
        blocks: list[Any] = []
        for name, trans, cols in ct.transformers_:
            if trans == "drop" or (name == "remainder" and len(cols) == 0):
                continue
            if trans == "passthrough" or not all(isinstance(c, str) for c in cols):
                raise _Unsupported("column transformer")
            steps = trans.steps if isinstance(trans, Pipeline) else [("only", trans)]
            if type(steps[-1][1]) is OneHotEncoder:
                blocks.append(_CategoricalBlock.build(trans, list(cols)))
            else:
                blocks.append(_NumericBlock.build(trans, list(cols)))
        return cls(blocks)

    @property
    def sources(self) -> list[str]:
        return [s for b in self.blocks for s in b.sources]

    def transform(self, X: Mapping[str, np.ndarray], n: int, order: Literal["C", "F"] = "C") -> np.ndarray:
        """The transformed columns of ``n`` rows (``X``: see :func:`_columns`), in C order or (for the
        trees' column-wise binning) Fortran order."""
        out = np.empty((n, sum(b.width for b in self.blocks)), dtype=np.float64, order=order)
        start = 0
        for b in self.blocks:
            b.transform_into(X, out[:, start:start + b.width])
            start += b.width
        return out


# -- estimators ---------------------------------------------------------------------------------
@dataclass
class _Logistic:
    model: Any

    def output(self, T: np.ndarray) -> np.ndarray:
        return self.model.decision_function(T)

    def proba(self, decision: np.ndarray) -> np.ndarray:
        return softmax(decision.copy(), copy=False)

    def deltas(self, T: np.ndarray, ref: np.ndarray, cols: list[np.ndarray]) -> list[np.ndarray | None]:
        coef = self.model.coef_
        out: list[np.ndarray | None] = []
        for c in cols:
            if not len(c):
                out.append(None)
                continue
            diff = ref[c] - T[:, c]
            delta = diff[:, :1] * coef[:, c[0]]
            for j in range(1, len(c)):
                delta = delta + diff[:, j:j + 1] * coef[:, c[j]]
            out.append(delta)
        return out


@dataclass
class _Table:
    """One tree as a table of leaf values over its split classes, evaluated without a branch per row.

    Every split of a tree compares one column's bin with a threshold. A column's thresholds
    in the tree cut its bins into classes, and rows whose bins fall into the same class
    on every column the tree reads take the same path to the same leaf. The table holds,
    for each combination of classes, the value ``predict_binned`` gives on a row made of
    each class's lowest bin; a row's value is ``table[sum of class * stride]``, the same
    number bit for bit. Missing-value bins are not covered (the split sends them by its
    own rule): columns that hold one are read by ``predict_binned``.

    ``predict_binned`` walks each row down the tree, and its branches cannot be
    predicted; this has no branches. A column with few thresholds in the tree adds
    ``stride`` for each threshold its bin exceeds (a comparison, cheaper than a lookup);
    one with more adds its class through a table from bin to ``class * stride``.
    """

    features: np.ndarray            # the columns the tree splits on
    cuts: list[np.ndarray]          # per column, the tree's bin thresholds on it (sorted)
    strides: list[np.uint16]        # per column, its class's weight in the code
    classes: list[np.ndarray | None]  # per column, bin -> class * stride (uint16), or None: compare
    table: np.ndarray               # leaf values by combined code

    @classmethod
    def build(cls, pred: Any, n_columns: int, missing_bin: int) -> _Table | None:
        """The table of ``pred`` (a TreePredictor), or None when it would exceed :data:`TABLE_ENTRIES`."""
        nodes = pred.nodes
        inner = ~nodes["is_leaf"].astype(bool)
        if np.any(nodes["is_categorical"][inner]):
            return None
        features = np.unique(nodes["feature_idx"][inner]).astype(np.intp)
        cuts = [np.unique(nodes["bin_threshold"][inner & (nodes["feature_idx"] == f)]).astype(np.int64)
                for f in features]
        size = int(np.prod([len(c) + 1 for c in cuts], dtype=np.float64))
        if size > TABLE_ENTRIES:
            return None
        bins = np.arange(256)
        code = np.arange(size)
        rows = np.zeros((size, n_columns), dtype=np.uint8, order="F")
        strides: list[np.uint16] = []
        classes: list[np.ndarray | None] = []
        stride = 1
        for f, c in zip(features, cuts, strict=True):
            # The class of a bin is the number of thresholds below it; its lowest bin is the
            # threshold below plus one.
            strides.append(np.uint16(stride))
            classes.append(None if len(c) <= COMPARE_CUTS
                           else (np.searchsorted(c, bins, side="left") * stride).astype(np.uint16))
            lowest = np.concatenate([[0], c + 1])
            rows[:, f] = lowest[(code // stride) % (len(c) + 1)]
            stride *= len(c) + 1
        return cls(features, [c.astype(np.uint8) for c in cuts], strides, classes,
                   pred.predict_binned(rows, missing_bin, 1))

    def values(self, B: np.ndarray, work: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """The tree's value on every row of ``B``; ``work`` holds scratch arrays (code, addend, mask)
        of at least ``len(B)`` entries."""
        n = len(B)
        if not len(self.features):
            return np.full(n, self.table[0])
        code, add, above = (w[:n] for w in work)
        code.fill(0)
        for f, cuts, stride, classes in zip(self.features, self.cuts, self.strides, self.classes, strict=True):
            column = B[:, f]
            if classes is not None:
                np.add(code, classes.take(column), out=code)
                continue
            for cut in cuts:
                np.greater(column, cut, out=above)
                np.multiply(above, stride, out=add)
                np.add(code, add, out=code)
        return self.table.take(code)


@dataclass
class _Forest:
    """Every tree of a model walked side by side on a few rows, one array operation per level.

    ``predict_binned`` costs a call per tree, which is most of the time on a few rows
    (the service's single customers). Here the nodes of all trees sit in one set of
    arrays, and each row moves down one level of every tree per step, by the rule of
    ``predict_binned``: a missing-value bin goes where the split sends missing values,
    another bin left when at most the split's threshold. A leaf points to itself, so
    rows that reach one early stay there. The values are the leaves' values, bit for bit.
    """

    roots: np.ndarray      # each tree's root
    feature: np.ndarray
    threshold: np.ndarray  # uint8 bin threshold (255 at leaves: every bin goes "left", to itself)
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    depth: int

    @classmethod
    def build(cls, preds: Sequence[Any]) -> _Forest:
        nodes = [p.nodes for p in preds]
        sizes = np.array([len(n) for n in nodes])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        allnodes = np.concatenate(nodes)
        offset = np.repeat(starts, sizes)
        leaf = allnodes["is_leaf"].astype(bool)
        own = np.arange(len(allnodes), dtype=np.intp)
        left = np.where(leaf, own, allnodes["left"].astype(np.intp) + offset)
        right = np.where(leaf, own, allnodes["right"].astype(np.intp) + offset)
        return cls(starts, np.where(leaf, 0, allnodes["feature_idx"]).astype(np.intp),
                   np.where(leaf, 255, allnodes["bin_threshold"]).astype(np.uint8),
                   np.where(leaf, True, allnodes["missing_go_to_left"].astype(bool)),
                   left, right, allnodes["value"].astype(np.float64), int(allnodes["depth"].max(initial=0)))

    def values(self, B: np.ndarray, missing_bin: int) -> np.ndarray:
        """Each tree's value on each row of ``B`` (trees x rows)."""
        node = np.repeat(self.roots[:, None], len(B), axis=1)
        rows = np.arange(len(B))[None, :]
        for _ in range(self.depth):
            b = B[rows, self.feature[node]]
            go_left = np.where(b == missing_bin, self.missing_left[node], b <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        return self.value[node]


@dataclass
class _Boosting:
    model: Any
    trees: list[tuple[int, Any]] = field(default_factory=list)   # (class column, predictor), in sklearn order
    #: OpenMP threads per pass over the rows (the sums do not depend on it): as many as
    #: scikit-learn's own predict uses, unless :meth:`Plan.set_threads` says otherwise.
    threads: int = 0

    def __post_init__(self) -> None:
        self.threads = self.threads or _effective_threads()
        K = self.model.n_trees_per_iteration_
        self.trees = [(k, p) for it in self.model._predictors for k, p in enumerate(it)]
        if len(self.trees) != K * self.model.n_iter_:
            raise _Unsupported("gradient boosting layout")
        mapper = self.model._bin_mapper
        if mapper.is_categorical_ is not None and np.any(mapper.is_categorical_):
            raise _Unsupported("categorical splits")
        self.thresholds = mapper.bin_thresholds_
        self.missing_bin = mapper.missing_values_bin_idx_
        self.pruned: dict[tuple[int, ...], list[tuple[int, Any]]] = {}
        self.reading: dict[tuple[int, ...], set[int]] = {}
        #: Lookup tables by ``id`` of the predictor (None: the tree runs as it is), built once the
        #: tree has been evaluated on :data:`TABLE_AFTER_ROWS` rows (counted in ``rows_seen``).
        self.tables: dict[int, _Table | None] = {}
        self.rows_seen: dict[int, int] = {}
        self.forest = _Forest.build([pred for _, pred in self.trees])
        # Per column the trees split on: the values of the bin thresholds they use, and the
        # lowest bin above each (see :meth:`binned`). Pruned trees keep a subset of these splits.
        used: dict[int, set[int]] = {}
        for _, pred in self.trees:
            inner = ~pred.nodes["is_leaf"].astype(bool)
            for f, b in zip(pred.nodes["feature_idx"][inner], pred.nodes["bin_threshold"][inner], strict=True):
                used.setdefault(int(f), set()).add(int(b))
        # A split on the last bin sends every value left (and missing values right): its
        # threshold is +inf.
        self.cuts = [(f, np.append(np.asarray(self.thresholds[f], dtype=np.float64), np.inf)[
                         np.minimum(sorted(bs), len(self.thresholds[f]))],
                      np.asarray([0, *(b + 1 for b in sorted(bs))], dtype=np.uint8))
                     for f, bs in sorted(used.items())]

    def binned(self, T: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Bins of ``T`` (Fortran order) that send every row down the same branch of every split.

        Few rows: the bins the model's bin mapper assigns. Many: for each column the trees
        read, the lowest bin above the highest threshold the trees use that the value
        exceeds (0 when none), counted over those thresholds only; the bin mapper's
        binary search over every threshold costs several times more. A split on
        threshold bin ``u`` sends a value left exactly when ``x <= threshold[u]``, in
        both. Missing values get the missing-value bin; columns no tree reads, bin 0.
        """
        from sklearn.ensemble._hist_gradient_boosting._binning import _map_to_bins

        if len(T) < TABLE_ROWS:
            B = np.empty(T.shape, dtype=np.uint8, order="F")
            _map_to_bins(np.asarray(T, dtype=np.float64), self.thresholds, np.zeros(T.shape[1], dtype=np.uint8),
                         self.missing_bin, threads or self.threads, B)
            return B
        B = np.zeros(T.shape, dtype=np.uint8, order="F")
        above = np.empty(len(T), dtype=bool)
        count = np.empty(len(T), dtype=np.uint8)
        for f, values, lowest in self.cuts:
            x = np.ascontiguousarray(T[:, f], dtype=np.float64)
            count.fill(0)
            for v in values:
                np.greater(x, v, out=above)
                count += above
            column = lowest.take(count)
            column[np.isnan(x)] = self.missing_bin
            B[:, f] = column
        return B

    def values(self, preds: Sequence[Any], B: np.ndarray, threads: int | None = None) -> Iterator[np.ndarray]:
        """Each tree's values on the binned rows ``B``, in the order of ``preds``.

        Equal bit for bit to ``pred.predict_binned``; from :data:`TABLE_ROWS` rows on, through
        the trees' lookup tables (once built) wherever the columns they read hold no
        missing-value bin.
        """
        threads = threads or self.threads
        if len(B) < TABLE_ROWS:
            for pred in preds:
                yield pred.predict_binned(B, self.missing_bin, threads)
            return
        missing = set(np.flatnonzero(B.max(axis=0) >= self.missing_bin).tolist())
        work = (np.empty(len(B), dtype=np.uint16), np.empty(len(B), dtype=np.uint16), np.empty(len(B), dtype=bool))
        for pred in preds:
            key = id(pred)
            if key not in self.tables:
                seen = self.rows_seen[key] = self.rows_seen.get(key, 0) + len(B)
                if seen >= TABLE_AFTER_ROWS:
                    self.tables[key] = _Table.build(pred, B.shape[1], self.missing_bin)
            table = self.tables.get(key)
            if table is None or (missing and not missing.isdisjoint(table.features.tolist())):
                yield pred.predict_binned(B, self.missing_bin, threads)
            else:
                yield table.values(B, work)

    def every(self, B: np.ndarray, threads: int | None = None) -> np.ndarray | Iterator[np.ndarray]:
        """Every tree's values on ``B``, in sklearn's order: at most :data:`FOREST_ROWS` rows walk
        all the trees at once (an array, trees x rows), more go tree by tree (:meth:`values`)."""
        if len(B) <= FOREST_ROWS:
            return self.forest.values(B, self.missing_bin)
        return self.values([pred for _, pred in self.trees], B, threads)

    def prepare(self, ref: np.ndarray) -> None:
        self.ref_bins = self.binned(ref[None, :])[0]

    def trees_reading(self, key: tuple[int, ...]) -> set[int]:
        """Positions of the trees with a split on a column of ``key``."""
        if key not in self.reading:
            self.reading[key] = {
                t for t, (_, pred) in enumerate(self.trees)
                if key and np.isin(pred.nodes["feature_idx"][~pred.nodes["is_leaf"].astype(bool)], key).any()
            }
        return self.reading[key]

    def pruned_trees(self, key: tuple[int, ...]) -> list[tuple[int, Any]]:
        """The trees that split on a column of ``key``, pruned at the reference (built on first use)."""
        if key not in self.pruned:
            fixed = set(key)
            self.pruned[key] = [(t, _prune(self.trees[t][1], fixed, self.ref_bins, self.missing_bin))
                                for t in sorted(self.trees_reading(key))]
        return self.pruned[key]

    def output(self, T: np.ndarray, threads: int | None = None,
               keep: bool = True) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Raw predictions (summed in sklearn's order), each tree's values (empty unless ``keep``),
        and the binned input."""
        B = self.binned(T, threads)
        values = self.every(B, threads)
        if isinstance(values, np.ndarray):
            return self.raw(values, len(B)), list(values) if keep else [], B
        if keep:
            kept = list(values)
            return self.raw(kept, len(B)), kept, B
        return self.raw(values, len(B)), [], B

    def raw(self, values: Iterable[np.ndarray], n: int) -> np.ndarray:
        """The raw predictions from each tree's values: the baseline plus the trees, in sklearn's order."""
        K = self.model.n_trees_per_iteration_
        raw = np.zeros((n, K), dtype=np.float64, order="F")
        raw += self.model._baseline_prediction
        if isinstance(values, np.ndarray):  # every tree at once: each class's trees summed in order
            for k in range(K):
                raw[:, k] = np.cumsum(np.vstack([raw[None, :, k], values[k::K]]), axis=0)[-1]
            return raw
        for (k, _), v in zip(self.trees, values, strict=True):
            raw[:, k] += v
        return raw

    def proba(self, raw: np.ndarray) -> np.ndarray:
        return self.model._loss.predict_proba(raw)

    def deltas(self, B: np.ndarray, values: list[np.ndarray], cols: list[np.ndarray],
               threads: int | None = None) -> list[np.ndarray | None]:
        """Per group, the change of the raw predictions when the group is set to the reference.

        Each tree's change is its value on the customer with the group at the reference
        minus its value on the customer, summed over the trees that split on the group
        in sklearn's order. Few customers: the trees run on copies of the customers with
        each group at the reference (one call per tree); many: the pruned trees run on
        the customers (one call per pruned tree). Both give the same leaves, so the
        same sums, bit for bit.
        """
        K = self.model.n_trees_per_iteration_
        threads = threads or self.threads
        keys = [tuple(int(i) for i in c) for c in cols]
        live = [g for g, key in enumerate(keys) if self.pruned_trees(key)]
        out: list[np.ndarray | None] = [None] * len(keys)
        if live and len(B) * len(live) <= SMALL_ROWS:
            copies = np.repeat(B[None, :, :], len(live), axis=0)
            for j, g in enumerate(live):
                copies[j][:, list(keys[g])] = self.ref_bins[list(keys[g])]
            flat = copies.reshape(-1, B.shape[1])
            moved_values = self.every(flat, threads)
            # A tree that does not split on a group leaves its copy in the customer's leaf:
            # it adds exactly 0, so summing over every tree gives the pruned trees' sums.
            sums = np.zeros((K, len(live), len(B)))
            for (k, _), moved, v in zip(self.trees, moved_values, values, strict=True):
                sums[k] += moved.reshape(len(live), len(B)) - v
            for j, g in enumerate(live):
                out[g] = np.ascontiguousarray(sums[:, j, :].T)
            return out
        for g in live:
            pruned = self.pruned_trees(keys[g])
            delta = np.zeros((len(B), K))
            for (t, _), moved in zip(pruned, self.values([pred for _, pred in pruned], B, threads), strict=True):
                delta[:, self.trees[t][0]] += moved - values[t]
            out[g] = delta
        return out


def _prune(pred: Any, fixed: set[int], ref_bins: np.ndarray, missing_bin: int) -> Any:
    """The tree with every split on a ``fixed`` column decided by the reference's value."""
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

    nodes = pred.nodes
    kept: list[Any] = []

    def follow(i: int) -> int:
        while not nodes[i]["is_leaf"] and int(nodes[i]["feature_idx"]) in fixed:
            b = ref_bins[int(nodes[i]["feature_idx"])]
            left = bool(nodes[i]["missing_go_to_left"]) if b == missing_bin else b <= nodes[i]["bin_threshold"]
            i = int(nodes[i]["left"] if left else nodes[i]["right"])
        return i

    def copy(i: int) -> int:
        i = follow(i)
        pos = len(kept)
        kept.append(nodes[i].copy())
        if not nodes[i]["is_leaf"]:
            left = copy(int(nodes[i]["left"]))
            right = copy(int(nodes[i]["right"]))
            kept[pos]["left"], kept[pos]["right"] = left, right
        return pos

    copy(0)
    return TreePredictor(np.array(kept, dtype=nodes.dtype), pred.binned_left_cat_bitsets,
                         pred.raw_left_cat_bitsets)


def _member(step: Any) -> tuple[_Prep, Any]:
    if not isinstance(step, Pipeline) or len(step.steps) != 2:
        raise _Unsupported("member")
    prep, model = step.steps[0][1], step.steps[1][1]
    if type(model) is LogisticRegression and len(model.classes_) >= 3:
        return _Prep.build(prep), _Logistic(model)
    if type(model) is HistGradientBoostingClassifier:
        return _Prep.build(prep), _Boosting(model)
    raise _Unsupported(f"estimator {type(model).__name__}")


# -- the plan -----------------------------------------------------------------------------------
@dataclass
class Plan:
    """A fitted pipeline laid out for column-wise scoring and occlusion (see the module docstring).

    Build it with :func:`compile_plan`; between calls it keeps only what it builds once
    (pruned trees, lookup tables). From :data:`PARALLEL_ROWS` customers on, a call is
    split into :attr:`threads` consecutive parts scored side by side (customers are
    scored independently, so the parts give the rows the whole would).
    """

    pipeline: Any
    btyd: Any
    members: list[tuple[_Prep, Any]]
    vote: Any
    decision: Any
    columns: list[str]
    groups: list[tuple[str, list[str]]]
    reference: pd.DataFrame
    member_cols: list[list[np.ndarray]] = field(default_factory=list)
    member_refs: list[np.ndarray] = field(default_factory=list)
    #: Threads per call (see :meth:`set_threads`).
    threads: int = field(default_factory=_effective_threads)

    def prepare_reasons(self) -> None:
        """Build now what the first scoring with reasons would build (the pruned trees)."""
        for (_, est), cols in zip(self.members, self.member_cols, strict=True):
            if isinstance(est, _Boosting):
                for c in cols:
                    est.pruned_trees(tuple(int(i) for i in c))

    def set_threads(self, threads: int) -> None:
        """Threads per call (1 where calls already run side by side)."""
        self.threads = max(1, int(threads))
        for _, est in self.members:
            if isinstance(est, _Boosting):
                est.threads = max(1, int(threads))

    def _transformed(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.btyd.transform(X) if self.btyd is not None else X

    def _combine(self, probas: list[np.ndarray]) -> np.ndarray:
        """Member probabilities -> the pipeline's probabilities, in ``pipeline.classes_`` order."""
        if self.vote is None:
            proba = probas[0]
        else:
            proba = np.average(np.asarray(probas), axis=0, weights=self.vote._weights_not_none)
        if self.decision is None:
            return proba
        classes = list(self.vote.classes_ if self.vote is not None else self.members[0][1].model.classes_)
        aligned = np.zeros((proba.shape[0], len(self.decision.classes_)))
        for j, c in enumerate(self.decision.classes_):
            if c in classes:
                aligned[:, j] = proba[:, classes.index(c)]
        if aligned.shape[1] < 2:
            return aligned
        return _shifted(_cumulative(aligned), self.decision.shifts_)

    def _outputs(self, X: pd.DataFrame, threads: int | None = None, keep: bool = True) -> list[tuple[Any, Any]]:
        columns = _columns(self._transformed(X))
        out = []
        for prep, est in self.members:
            if isinstance(est, _Boosting):
                T = prep.transform(columns, len(X), order="F")
                out.append((T, est.output(T, threads, keep)))
            else:
                T = prep.transform(columns, len(X))
                out.append((T, est.output(T)))
        return out

    def _in_parts(self, X: pd.DataFrame, fn: Any) -> list[Any]:
        """``fn(part, threads)`` over consecutive parts of ``X``: one part, or one per thread side by side."""
        n = len(X)
        parts = self.threads if n >= PARALLEL_ROWS else 1
        if parts <= 1:
            return [fn(X, self.threads)]
        bounds = np.linspace(0, n, parts + 1).astype(int)
        with ThreadPoolExecutor(parts) as pool:
            return list(pool.map(lambda ab: fn(X.iloc[ab[0]:ab[1]], 1),
                                 zip(bounds[:-1], bounds[1:], strict=True)))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities of the pipeline (``pipeline.classes_`` order); equal to ``pipeline.predict_proba``."""
        return np.vstack(self._in_parts(X, self._predict_proba))

    def _predict_proba(self, X: pd.DataFrame, threads: int) -> np.ndarray:
        return self._combine([self._member_proba(est, o) for (_, est), (_, o) in
                              zip(self.members, self._outputs(X, threads, keep=False), strict=True)])

    @staticmethod
    def _member_proba(est: Any, output: Any) -> np.ndarray:
        return est.proba(output[0] if isinstance(est, _Boosting) else output)

    def scores(self, X: pd.DataFrame, choose: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (``pipeline.classes_`` order) and occlusion effects (customers x groups).

        The effect is the drop of the probability of the class ``choose(proba)``
        picks for each customer (default: the most probable one; ``choose`` maps rows
        of probabilities to their class, row by row).
        """
        parts = self._in_parts(X, lambda part, threads: self._scores(part, choose, threads))
        return np.vstack([p for p, _ in parts]), np.vstack([e for _, e in parts])

    def _scores(self, X: pd.DataFrame, choose: Any, threads: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(X)
        outputs = self._outputs(X, threads)
        proba = self._combine([self._member_proba(est, o) for (_, est), (_, o) in
                               zip(self.members, outputs, strict=True)])
        pred = np.argmax(proba, axis=1) if choose is None else choose(proba)
        base = proba[np.arange(n), pred]
        effects = np.zeros((n, len(self.groups)))
        deltas = []
        for (_, est), (T, out), cols, ref in zip(self.members, outputs, self.member_cols, self.member_refs,
                                                 strict=True):
            if isinstance(est, _Boosting):
                raw, values, B = out
                deltas.append([_blocks(functools.partial(est.deltas, threads=threads), B, values, cols)])
            else:
                deltas.append([est.deltas(T, ref, cols)])
        # The moved rows of several groups go through the members' probabilities and the
        # combination together (row by row, so the same numbers), up to EFFECT_ROWS rows at once.
        pending: list[tuple[int, np.ndarray, list[np.ndarray]]] = []
        size = 0

        def flush() -> None:
            probas = [est.proba(np.concatenate([outs[m] for _, _, outs in pending]))
                      for m, (_, est) in enumerate(self.members)]
            p = self._combine(probas)
            start = 0
            for g, rows, _ in pending:
                effects[rows, g] = base[rows] - p[start + np.arange(len(rows)), pred[rows]]
                start += len(rows)
            pending.clear()

        for g in range(len(self.groups)):
            moved = np.zeros(n, dtype=bool)
            member_delta = []
            for m in range(len(self.members)):
                d = deltas[m][0][g]
                member_delta.append(d)
                if d is not None:
                    moved |= (d != 0).any(axis=1)
            rows = np.flatnonzero(moved)
            if not len(rows):
                continue
            outs = []
            for (_, est), (_, out), d in zip(self.members, outputs, member_delta, strict=True):
                o = out[0] if isinstance(est, _Boosting) else out
                outs.append(o[rows] if d is None else o[rows] + d[rows])
            pending.append((g, rows, outs))
            size += len(rows)
            if size >= EFFECT_ROWS:
                flush()
                size = 0
        if pending:
            flush()
        return proba, effects


class Shuffler:
    """Probabilities of customers with one group's columns shuffled, for permutation importance.

    Every preprocessing step works column by column, so shuffling a group's inputs
    shuffles exactly its transformed columns (:attr:`Plan.member_cols`): the customers
    are transformed and binned once. Gradient-boosting trees that never split on the
    group keep their values; only the others run again, and the raw scores are summed
    in scikit-learn's order, so the probabilities equal the pipeline's on the shuffled
    frame bit for bit (tested).
    """

    def __init__(self, plan: Plan, X: pd.DataFrame) -> None:
        self.plan = plan
        self.outputs = plan._outputs(X)
        #: The probabilities of ``X`` as it is.
        self.base = plan._combine([plan._member_proba(est, o) for (_, est), (_, o) in
                                   zip(plan.members, self.outputs, strict=True)])

    def proba(self, group: int, perm: np.ndarray) -> np.ndarray:
        """Probabilities (``pipeline.classes_`` order) with group ``group``'s rows taken in order ``perm``."""
        probas = []
        for (_, est), (T, out), cols in zip(self.plan.members, self.outputs, self.plan.member_cols, strict=True):
            c = cols[group]
            if isinstance(est, _Boosting):
                raw, values, B = out
                if not len(c):
                    probas.append(est.proba(raw))
                    continue
                moved = B.copy(order="F")
                moved[:, c] = B[np.ix_(perm, c)]
                reading = est.trees_reading(tuple(int(i) for i in c))
                probas.append(est.proba(est.raw((
                    pred.predict_binned(moved, est.missing_bin, est.threads) if t in reading else values[t]
                    for t, (_, pred) in enumerate(est.trees)), len(B))))
            else:
                Tp = T.copy()
                Tp[:, c] = T[np.ix_(perm, c)]
                probas.append(est.proba(est.output(Tp)))
        return self.plan._combine(probas)


def _blocks(fn: Any, B: np.ndarray, values: list[np.ndarray], cols: list[np.ndarray]) -> list[np.ndarray | None]:
    """``fn`` over row blocks of at most :data:`BLOCK_ROWS`, stacked back."""
    n = len(B)
    if n <= BLOCK_ROWS:
        return fn(B, values, cols)
    parts = [fn(B[s:s + BLOCK_ROWS], [v[s:s + BLOCK_ROWS] for v in values], cols)
             for s in range(0, n, BLOCK_ROWS)]
    return [None if parts[0][g] is None else np.vstack([p[g] for p in parts]) for g in range(len(cols))]


def compile_plan(pipeline: Any, columns: Sequence[str], groups: list[tuple[str, list[str]]],
                 reference: dict[str, Any]) -> Plan | None:
    """A :class:`Plan` for ``pipeline``, or None when it has a shape the plan does not cover.

    Parameters
    ----------
    pipeline : Pipeline
        A fitted candidate pipeline (:func:`clvtier.models.make_pipeline`).
    columns : list of str
        The model's input columns, in order.
    groups : list of (label, columns)
        The feature groups explained (:func:`clvtier.predict.explanation_groups`).
    reference : dict
        Each column's typical training value (None for missing).
    """
    try:
        return _compile(pipeline, list(columns), groups, reference)
    except (_Unsupported, ClvtierError, ValueError, ArithmeticError):
        # A shape the plan does not cover, or a reference it cannot score (a model saved
        # without one): scoring and explanations take the general path.
        return None


def _compile(pipeline: Any, columns: list[str], groups: list[tuple[str, list[str]]],
             reference: dict[str, Any]) -> Plan:
    from clvtier.models import model_input

    if not isinstance(pipeline, Pipeline):
        raise _Unsupported("not a pipeline")
    steps = [s for _, s in pipeline.steps]
    btyd = None
    if isinstance(steps[0], BTYDFeatures):
        btyd, steps = steps[0], steps[1:]
    decision: TierDecision | None
    vote: VotingClassifier | None
    if len(steps) == 1 and type(steps[0]) is TierDecision:
        decision, inner = steps[0], steps[0].estimator_
        if type(inner) is not VotingClassifier or inner.voting != "soft":
            raise _Unsupported("decision")
        vote = inner
        members = [_member(e) for e in inner.estimators_]
    elif len(steps) == 2:
        decision = vote = None
        members = [_member(Pipeline([("prep", steps[0]), ("model", steps[1])]))]
    else:
        raise _Unsupported("layout")
    ref = model_input(pd.DataFrame({c: [reference.get(c)] for c in columns}), columns)
    plan = Plan(pipeline, btyd, members, vote, decision, columns, groups, ref)
    # Which transformed columns each group moves: its own, plus the BTYD outputs for the BTYD inputs.
    btyd_in = set(BTYD_INPUTS) if btyd is not None else set()
    owners = [g for g, (_, cols) in enumerate(groups) if btyd_in & set(cols)]
    if btyd is not None and (len(owners) != 1 or not btyd_in <= set(groups[owners[0]][1])):
        raise _Unsupported("BTYD inputs split across groups")
    ref_b = plan._transformed(ref)
    added = [c for c in ref_b.columns if c not in columns]
    for prep, est in members:
        sources = prep.sources
        cols = []
        for g, (_, members_of_g) in enumerate(groups):
            moved = set(members_of_g) | (set(added) if owners and g == owners[0] else set())
            cols.append(np.array([j for j, s in enumerate(sources) if s in moved], dtype=np.intp))
        if not set(sources) <= set(ref_b.columns):
            raise _Unsupported("sources")
        T_ref = prep.transform(_columns(ref_b), 1)[0]
        if isinstance(est, _Boosting):
            est.prepare(T_ref)
        plan.member_cols.append(cols)
        plan.member_refs.append(T_ref)
    _check(plan, ref)
    return plan


BTYD_INPUTS = ("btyd_frequency", "btyd_recency", "btyd_T", "btyd_monetary")


def _check(plan: Plan, ref: pd.DataFrame) -> None:
    """The plan must reproduce ``predict_proba`` exactly on probe rows, or it is not used.

    The probes are the reference, the reference with every other feature missing,
    and with every other feature moved (numbers scaled, categories unseen).
    """
    probe = pd.concat([ref, ref, ref], ignore_index=True)
    for col in plan.columns:
        if col in BTYD_INPUTS:
            continue
        probe.loc[1, col] = np.nan
        if pd.api.types.is_float_dtype(probe[col]):
            probe.loc[2, col] = 1.5 * probe.loc[2, col] + 1.0 if pd.notna(probe.loc[2, col]) else 3.0
        else:
            probe.loc[2, col] = "\x00probe"
    want = plan.pipeline.predict_proba(probe)
    got = plan.predict_proba(probe)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise _Unsupported("probe mismatch")
