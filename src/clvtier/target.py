"""Turn each customer's value in the horizon into a Low / Medium / High tier.

The thresholds are learned by :class:`TierBinner` on the training customers only
and then applied unchanged to validation, test and scoring data.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import (
    _check_feature_names,
    _check_feature_names_in,
    check_array,
    check_is_fitted,
)

from clvtier.errors import InputError

__all__ = ["TIERS", "TierBinner", "tier_codes"]

#: The tier labels in ordinal order; ``tier_codes`` maps them to 0, 1, 2.
TIERS: tuple[str, str, str] = ("Low", "Medium", "High")

_TIER_ARRAY = np.array(TIERS, dtype=object)
_CODE_OF = {tier: code for code, tier in enumerate(TIERS)}
# Every positive float is >= this, so ``value < _NO_SPEND_CUT`` means ``value <= 0``.
_NO_SPEND_CUT = float(np.nextafter(0.0, 1.0))
_FIX_DEGENERATE = (
    "use a longer horizon so that more customers spend, fit on more customers, or pass "
    "custom cuts (method='amounts', cuts=(low, high))"
)


def tier_codes(tiers) -> np.ndarray:
    """Map tier labels to their ordinal codes.

    Parameters
    ----------
    tiers : array-like of str, shape (n,) or (n, 1)
        Labels from :data:`TIERS`.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)
        ``0`` for Low, ``1`` for Medium and ``2`` for High.

    Raises
    ------
    InputError
        If any label is not one of :data:`TIERS` (missing values included).

    Examples
    --------
    >>> tier_codes(["High", "Low", "Medium", "Low"]).tolist()
    [2, 0, 1, 0]
    """
    labels = np.asarray(tiers, dtype=object)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.ravel()
    if labels.ndim != 1:
        raise InputError(
            f"Tier labels must be one-dimensional; got shape {labels.shape}.",
            fix="pass one tier label per customer",
        )
    codes = np.fromiter(
        (_CODE_OF.get(label, -1) if isinstance(label, str) else -1 for label in labels),
        dtype=np.int64,
        count=labels.size,
    )
    unknown = codes < 0
    if unknown.any():
        examples = sorted({repr(label) for label in labels[unknown]})[:5]
        raise InputError(
            f"{int(unknown.sum())} of {labels.size} tier labels are not one of "
            f"{', '.join(TIERS)} (for example {', '.join(examples)}).",
            fix="use exactly the labels 'Low', 'Medium' and 'High' (case-sensitive)",
        )
    return codes


def _shares(values: np.ndarray, low_cut: float, high_cut: float) -> dict[str, float]:
    counts = np.bincount(_codes_for(values, low_cut, high_cut), minlength=3)
    return {tier: float(c) / values.size for tier, c in zip(TIERS, counts, strict=True)}


def _codes_for(values: np.ndarray, low_cut: float, high_cut: float) -> np.ndarray:
    # A value exactly at a threshold goes up: == low_cut is Medium, == high_cut is High.
    return (values >= low_cut).astype(np.int64) + (values >= high_cut)


def _format_shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{tier} {share:.1%}" for tier, share in shares.items())


def _empty_tiers(shares: dict[str, float]) -> list[str]:
    return [tier for tier, share in shares.items() if share == 0.0]


def _empty_phrase(empty: list[str]) -> str:
    return f"the {' and '.join(empty)} tier{'s' if len(empty) > 1 else ''} empty"


def _sentence(clause: str) -> str:
    return clause[0].upper() + clause[1:] + "."


class TierBinner(TransformerMixin, BaseEstimator):
    """Bin a customer value (CLV in the horizon) into Low / Medium / High.

    The thresholds are fitted on the training customers only and then applied
    unchanged to any other customers. A customer is

    * ``"Low"`` when ``value < low_cut_``,
    * ``"High"`` when ``value >= high_cut_``,
    * ``"Medium"`` otherwise.

    A value exactly at a threshold therefore goes *up*: ``value == low_cut_`` is
    Medium and ``value == high_cut_`` is High.

    Parameters
    ----------
    method : {"quartile", "quantiles", "amounts"}, default="quartile"
        How the thresholds are chosen.

        * ``"quartile"``: ``low_cut_`` is the first quartile and ``high_cut_`` the
          third quartile of the fit values (``numpy.quantile``, linear
          interpolation), so Low < Q1 <= Medium < Q3 <= High.
        * ``"quantiles"``: like ``"quartile"`` with the two quantile levels in
          ``cuts``, ``0 < q1 < q2 < 1``.
        * ``"amounts"``: the two money amounts in ``cuts``, ``a1 < a2``, used as
          they are (the zero rule below does not apply).
    cuts : tuple of two floats or None, default=None
        Quantile levels (``method="quantiles"``) or amounts (``method="amounts"``).
        Must be None for ``method="quartile"``.
    zero_rule : {"auto", "never"}, default="auto"
        What to do when the quantile thresholds leave a tier empty on the fit
        data; see Notes.

    Attributes
    ----------
    low_cut_ : float
        Values strictly below are Low.
    high_cut_ : float
        Values at or above are High.
    rule_ : str
        Which rule produced the thresholds, in words. It starts with the method
        name, or with ``"zero-inflated"`` when the zero rule applied.
    zero_rule_applied_ : bool
        Whether the zero rule replaced the quantile thresholds.
    class_shares_ : dict of str to float
        Share of the fit customers in each tier, in :data:`TIERS` order.
    n_samples_fit_ : int
        Number of customers the thresholds were fitted on.
    n_features_in_ : int
        Always 1.
    feature_names_in_ : ndarray of shape (1,)
        The column name, when fitted on a one-column DataFrame.

    Raises
    ------
    InputError
        From ``fit`` and ``transform``: values that are NaN or infinite (with
        their count), more than one column, fewer than three customers, invalid
        ``cuts``, or thresholds that leave a tier empty (with the tier shares).

    See Also
    --------
    tier_codes : Map the tier labels to 0 / 1 / 2.

    Notes
    -----
    **Zero inflation and ties.** Future spend is zero for many customers. With,
    say, 70 % zeros, Q1 = 0 and ``value < 0`` leaves Low empty; heavy ties can
    make Q1 == Q3 and leave Medium empty. For the quantile methods a fit is
    *degenerate* when any tier is empty on the fit data (this covers Q1 == Q3
    and Q1 equal to the minimum). Then:

    * ``zero_rule="never"`` raises :class:`~clvtier.errors.InputError`.
    * ``zero_rule="auto"`` switches to the zero rule:

      - Low = no spend, ``value <= 0``, implemented as
        ``low_cut_ = np.nextafter(0, 1)`` (the smallest positive float), so
        refunds (negative values) are Low too;
      - High = ``value >= Q3`` of *all* fit values when that quantile is
        positive (the upper level ``q2`` for ``method="quantiles"``), otherwise
        ``value >=`` the median of the *positive* values. If the first choice
        still leaves Medium empty, the median of the positive values is tried
        as well;
      - Medium = the rest (some spend, below the High threshold).

      ``rule_`` says which of these applied. If no choice gives three
      non-empty tiers (all values zero, all values equal, a single spender),
      ``fit`` raises :class:`~clvtier.errors.InputError` with the tier shares.

    For ``method="amounts"`` a tier that is empty on the fit data also raises,
    because a classifier cannot learn a tier it never sees.

    Only one value per customer is binned: ``X`` is 1-D or a single column, and
    ``transform`` returns a 1-D object array of tier labels.

    Examples
    --------
    >>> from clvtier.target import TierBinner
    >>> binner = TierBinner().fit([1, 2, 3, 4, 5, 6, 7, 8])
    >>> binner.low_cut_, binner.high_cut_
    (2.75, 6.25)
    >>> binner.transform([0, 2.75, 6.25, 100]).tolist()
    ['Low', 'Medium', 'High', 'High']

    Most customers spent nothing in the horizon, so the zero rule applies:

    >>> spend = [0] * 14 + [1, 2, 3, 4, 5, 6]
    >>> binner = TierBinner().fit(spend)
    >>> binner.rule_.startswith("zero-inflated")
    True
    >>> binner.class_shares_
    {'Low': 0.7, 'Medium': 0.05, 'High': 0.25}
    """

    _parameter_constraints: dict = {
        "method": [StrOptions({"quartile", "quantiles", "amounts"})],
        "cuts": ["array-like", None],
        "zero_rule": [StrOptions({"auto", "never"})],
    }

    def __init__(
        self,
        method: Literal["quartile", "quantiles", "amounts"] = "quartile",
        cuts: tuple[float, float] | None = None,
        zero_rule: Literal["auto", "never"] = "auto",
    ) -> None:
        self.method = method
        self.cuts = cuts
        self.zero_rule = zero_rule

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.one_d_array = True
        tags.transformer_tags.preserves_dtype = []
        tags.target_tags.required = False
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> TierBinner:
        """Learn the two thresholds from the fit (training) customers' values.

        Parameters
        ----------
        X : array-like of shape (n,) or (n, 1)
            One value per customer, e.g. the spend in the horizon.
        y : None
            Ignored.

        Returns
        -------
        TierBinner
            The fitted binner.
        """
        values = self._validate_values(X, reset=True)
        cuts = self._validated_cuts()
        n = values.size
        if n < 3:
            raise InputError(
                f"TierBinner needs at least 3 customers to form three tiers; got {n}.",
                fix="fit the binner on all training customers",
            )
        zero_rule_applied = False
        if self.method == "amounts":
            low_cut, high_cut = cuts
            shares = _shares(values, low_cut, high_cut)
            if empty := _empty_tiers(shares):
                raise InputError(
                    f"The amounts ({low_cut:g}, {high_cut:g}) leave "
                    f"{_empty_phrase(empty)} on the fit data "
                    f"({_format_shares(shares)}).",
                    fix=f"choose amounts inside the range of the values "
                    f"({values.min():g} to {values.max():g}), or use the quartile method (--tiers quartile)",
                )
            rule = f"amounts: Low < {low_cut:g} <= Medium < {high_cut:g} <= High"
        else:
            q_low, q_high = cuts
            low_cut, high_cut = (float(q) for q in np.quantile(values, [q_low, q_high]))
            shares = _shares(values, low_cut, high_cut)
            name_low, name_high = _quantile_names(self.method, q_low, q_high)
            if empty := _empty_tiers(shares):
                degenerate = (
                    f"the quantile thresholds {name_low} = {low_cut:g} and "
                    f"{name_high} = {high_cut:g} leave {_empty_phrase(empty)} "
                    f"on the fit data ({_format_shares(shares)})"
                )
                if self.zero_rule == "never":
                    raise InputError(_sentence(degenerate), fix="use zero_rule='auto' or " + _FIX_DEGENERATE)
                low_cut, high_cut, shares, rule = _zero_rule(values, q_high, name_high, degenerate)
                zero_rule_applied = True
            else:
                rule = f"{self.method}: Low < {name_low} = {low_cut:g} <= Medium < {name_high} = {high_cut:g} <= High"
        self.low_cut_ = float(low_cut)
        self.high_cut_ = float(high_cut)
        self.rule_ = rule
        self.zero_rule_applied_ = zero_rule_applied
        self.class_shares_ = shares
        self.n_samples_fit_ = int(n)
        return self

    def transform(self, X) -> np.ndarray:
        """Assign each customer's value to a tier with the fitted thresholds.

        Parameters
        ----------
        X : array-like of shape (n,) or (n, 1)
            One value per customer.

        Returns
        -------
        numpy.ndarray of object, shape (n,)
            ``"Low"``, ``"Medium"`` or ``"High"`` for each customer.
        """
        check_is_fitted(self)
        values = self._validate_values(X, reset=False)
        return _TIER_ARRAY[_codes_for(values, self.low_cut_, self.high_cut_)]

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Return the name of the single output column, ``["tier"]``.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Validated against the fitted input name; not used otherwise.

        Returns
        -------
        numpy.ndarray of object, shape (1,)
        """
        check_is_fitted(self)
        _check_feature_names_in(self, input_features)
        return np.asarray(["tier"], dtype=object)

    def describe(self) -> dict:
        """Summarise the fitted thresholds as a JSON-serialisable dict.

        Returns
        -------
        dict
            ``method``, ``cuts``, ``zero_rule``, ``low_cut``, ``high_cut``,
            ``rule``, ``zero_rule_applied``, ``class_shares``, ``n_samples_fit``
            and ``tiers``.

        Examples
        --------
        >>> TierBinner().fit([1, 2, 3, 4, 5, 6, 7, 8]).describe()["class_shares"]
        {'Low': 0.25, 'Medium': 0.5, 'High': 0.25}
        """
        check_is_fitted(self)
        return {
            "method": self.method,
            "cuts": None if self.cuts is None else [float(c) for c in self.cuts],
            "zero_rule": self.zero_rule,
            "low_cut": self.low_cut_,
            "high_cut": self.high_cut_,
            "rule": self.rule_,
            "zero_rule_applied": self.zero_rule_applied_,
            "class_shares": dict(self.class_shares_),
            "n_samples_fit": self.n_samples_fit_,
            "tiers": list(TIERS),
        }

    def _validated_cuts(self) -> tuple[float, float]:
        if self.method == "quartile":
            if self.cuts is not None:
                raise InputError(
                    f"cuts={self.cuts!r} is only used with method='quantiles' or 'amounts'.",
                    fix="drop cuts, or choose method='quantiles' or method='amounts'",
                )
            return (0.25, 0.75)
        if self.cuts is None:
            raise InputError(
                f"method={self.method!r} needs cuts=(first, second).",
                fix="pass two quantile levels, e.g. cuts=(0.5, 0.9)"
                if self.method == "quantiles"
                else "pass two amounts, e.g. cuts=(10.0, 100.0)",
            )
        try:
            cuts = np.asarray(self.cuts, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"cuts={self.cuts!r} are not two numbers.", fix="pass two numbers") from exc
        if cuts.shape != (2,) or not np.isfinite(cuts).all() or not cuts[0] < cuts[1]:
            raise InputError(
                f"cuts={self.cuts!r} must be two finite numbers in increasing order.",
                fix="pass cuts=(first, second) with first < second",
            )
        if self.method == "quantiles" and not (cuts[0] > 0 and cuts[1] < 1):
            raise InputError(
                f"Quantile cuts={self.cuts!r} must lie strictly between 0 and 1.",
                fix="pass two quantile levels 0 < q1 < q2 < 1, e.g. cuts=(0.5, 0.9)",
            )
        return float(cuts[0]), float(cuts[1])

    def _validate_values(self, X, *, reset: bool) -> np.ndarray:
        _check_feature_names(self, X, reset=reset)
        try:
            values = check_array(X, ensure_2d=False, dtype=np.float64, ensure_all_finite=False, input_name="X")
        except ValueError as exc:
            raise InputError(
                f"TierBinner needs one number per customer: {exc}",
                fix="pass a non-empty 1-D array (or a single column) of customer values",
            ) from exc
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise InputError(
                f"TierBinner bins one value per customer; got X of shape {values.shape}.",
                fix="pass a 1-D array or a single column of customer values",
            )
        if reset:
            self.n_features_in_ = 1
        bad = ~np.isfinite(values)
        if bad.any():
            raise InputError(
                f"{int(bad.sum())} of {values.size} customer values are NaN or infinite.",
                fix="fill missing horizon values (no purchase means 0) or drop those customers before binning",
            )
        return values


def _quantile_names(method: str, q_low: float, q_high: float) -> tuple[str, str]:
    if method == "quartile":
        return "Q1", "Q3"
    return f"q{q_low:g}", f"q{q_high:g}"


def _zero_rule(
    values: np.ndarray, q_high: float, name_high: str, degenerate: str
) -> tuple[float, float, dict[str, float], str]:
    """Low = no spend; High from the upper quantile of all values or the median spender."""
    positive = values[values > 0]
    candidates = []
    upper = float(np.quantile(values, q_high))
    if upper > 0:
        candidates.append((upper, f"{name_high} of all training customers"))
    if positive.size:
        candidates.append((float(np.median(positive)), "the median of the training customers who spent"))
    tried: list[str] = []
    seen: set[float] = set()
    for high_cut, source in candidates:
        if high_cut in seen:
            continue
        seen.add(high_cut)
        shares = _shares(values, _NO_SPEND_CUT, high_cut)
        if not _empty_tiers(shares):
            rule = (
                f"zero-inflated: {degenerate}, so Low = no spend (value <= 0, "
                f"{shares['Low']:.1%} of customers), High = value >= {source} "
                f"= {high_cut:g}, Medium = the rest"
            )
            return _NO_SPEND_CUT, high_cut, shares, rule
        tried.append(f"High >= {high_cut:g} gives {_format_shares(shares)}")
    n_zero = int((values <= 0).sum())
    detail = "; ".join(tried) if tried else "no customer has a positive value"
    raise InputError(
        f"{_sentence(degenerate)} The zero rule (Low = no spend, {n_zero} of {values.size} "
        f"customers) cannot fix it either: {detail}.",
        fix=_FIX_DEGENERATE,
    )
