"""Plotting: one function per figure of the report, each drawing on an Axes it is given or creates.

Every function takes ``ax=None`` and returns the :class:`~matplotlib.axes.Axes`
it drew on. Without ``ax`` a new :class:`~matplotlib.figure.Figure` is created
directly (no pyplot, so no global figure state and no GUI backend). Colours come
from the Okabe-Ito palette, which stays distinguishable under the common forms
of colour blindness; the tiers have the same colour in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, PercentFormatter

from clvtier.target import TIERS

__all__ = [
    "METHOD_COLORS",
    "OKABE_ITO",
    "TIER_COLORS",
    "plot_backtest",
    "plot_class_shares",
    "plot_confusion",
    "plot_cv_scores",
    "plot_gains",
    "plot_importance",
    "plot_reliability",
    "plot_value_distribution",
]

#: The Okabe-Ito colour-blind-safe palette.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "grey": "#999999",
}

#: One colour per tier, used by every figure and by the report's CSS.
TIER_COLORS = {
    "Low": OKABE_ITO["sky_blue"],
    "Medium": OKABE_ITO["orange"],
    "High": OKABE_ITO["bluish_green"],
}

#: One colour per way of ranking customers (the chosen model and the baselines).
METHOD_COLORS = {
    "model": OKABE_ITO["blue"],
    "carry_forward": OKABE_ITO["vermillion"],
    "bgnbd_gg": OKABE_ITO["reddish_purple"],
    "majority": OKABE_ITO["grey"],
    "random": OKABE_ITO["black"],
}

_SEQUENTIAL_CMAP = "cividis"  # perceptually uniform and colour-blind safe


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    return Figure(figsize=figsize, layout="constrained").subplots()


def _short(label: object, width: int = 40) -> str:
    """A category label cut to ``width`` characters, so one long name cannot squash the plot."""
    text = str(label)
    return text if len(text) <= width else text[: width - 1] + "…"


def _signed_log(x: np.ndarray) -> np.ndarray:
    """log10(1 + |x|) with the sign of x: spreads skewed money amounts, keeps zero and refunds."""
    return np.sign(x) * np.log10(1.0 + np.abs(x))


def _money(v: float) -> str:
    """A compact amount for tick labels: 0, 950, 4.39k, 12M."""
    v = float(v)
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def plot_value_distribution(
    values: Sequence[float] | np.ndarray,
    low_cut: float,
    high_cut: float,
    *,
    value_label: str = "Customer value (currency units)",
    bins: int = 40,
    ax: Axes | None = None,
) -> Axes:
    """Histogram of customer values, coloured by tier, with the two tier thresholds drawn.

    The x axis is logarithmic in ``1 + value`` so that zero spend, typical spend
    and the few very large customers are all visible.

    Parameters
    ----------
    values : array-like of float
        One value per customer.
    low_cut, high_cut : float
        Tier thresholds: Low < ``low_cut`` <= Medium < ``high_cut`` <= High.
    value_label : str
        Label of the x axis, with its unit.
    bins : int
        Number of bins over the log-scaled range.
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    ax = _axes(ax, (7.0, 3.2))
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    t = _signed_log(v)
    lo, hi = (float(t.min()), float(t.max())) if t.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    groups = [t[v < low_cut], t[(v >= low_cut) & (v < high_cut)], t[v >= high_cut]]
    ax.hist(groups, bins=edges.tolist(), stacked=True, color=[TIER_COLORS[k] for k in TIERS], label=list(TIERS),
            edgecolor="white", linewidth=0.3)
    for cut, name in ((low_cut, "Low | Medium"), (high_cut, "Medium | High")):
        x = float(_signed_log(np.array([cut]))[0])
        shown = "no spend" if 0 < cut < 1e-6 else _money(cut)  # the zero rule's cut is the smallest float
        ax.axvline(x, color=OKABE_ITO["black"], linestyle="--", linewidth=1)
        ax.annotate(f"{name}\n{shown}", xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", va="top", ha="left", fontsize=8,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    # Ticks at round amounts (0, 10, 100, 1k, ...), placed where log10(1 + |v|) puts them.
    amounts = [0.0] + [10.0**k for k in range(1, int(np.ceil(max(abs(lo), abs(hi)))) + 1)]
    amounts = sorted({sign * a for a in amounts for sign in (1, -1)})
    ticks = [(float(_signed_log(np.array([a]))[0]), a) for a in amounts]
    ticks = [(t_, a) for t_, a in ticks if lo - 0.3 <= t_ <= hi + 0.3]
    ax.xaxis.set_major_locator(FixedLocator([t_ for t_, _a in ticks]))
    ax.xaxis.set_major_formatter(FixedFormatter([_money(a) for _t, a in ticks]))
    ax.set_xlabel(value_label + ", log scale")
    ax.set_ylabel("Customers (count)")
    ax.legend(title="Tier", frameon=False, loc="best")
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_class_shares(shares: Mapping[str, Mapping[str, float]], *, ax: Axes | None = None) -> Axes:
    """Horizontal stacked bars: the share of customers in each tier, one bar per split.

    Parameters
    ----------
    shares : mapping of split name to {tier: share}
        Shares in [0, 1], e.g. ``{"train": {"Low": .25, ...}, "test": {...}}``.
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    ax = _axes(ax, (7.0, 0.6 + 0.45 * max(1, len(shares))))
    names = [_short(n) for n in shares]
    left = np.zeros(len(names))
    for tier in TIERS:
        width = np.array([float(s.get(tier, 0.0)) for s in shares.values()])
        ax.barh(names, width, left=left, color=TIER_COLORS[tier], label=tier, edgecolor="white")
        for y, (x0, w) in enumerate(zip(left, width, strict=True)):
            if w >= 0.06:
                ax.text(x0 + w / 2, y, f"{w:.0%}", ha="center", va="center", fontsize=8)
        left += width
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("Share of customers (%)")
    ax.invert_yaxis()
    ax.legend(ncols=len(TIERS), frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_cv_scores(
    cv: Sequence[Mapping[str, Any]],
    *,
    metric_label: str = "Cross-validated score",
    chosen: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Cross-validated score per candidate: the fold scores as dots, mean +/- one SD as a bar.

    Parameters
    ----------
    cv : sequence of {"model", "mean", "std", "folds"}
    metric_label : str
        Label of the x axis.
    chosen : str, optional
        The selected candidate, drawn in the model colour; the others in grey.
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    ax = _axes(ax, (7.0, 0.8 + 0.45 * max(1, len(cv))))
    rows = sorted(cv, key=lambda r: -float(r["mean"]))
    for y, row in enumerate(rows):
        colour = METHOD_COLORS["model"] if row["model"] == chosen else OKABE_ITO["grey"]
        folds = np.asarray(row.get("folds") or [], dtype=float)
        if folds.size:
            ax.scatter(folds, np.full(folds.size, y), s=14, color=colour, alpha=0.5, zorder=2,
                       label="fold score" if y == 0 else None)
        ax.errorbar(float(row["mean"]), y, xerr=float(row["std"]), fmt="D", color=colour, capsize=4,
                    markersize=6, zorder=3, label="mean ± 1 SD" if y == 0 else None)
    ax.set_yticks(range(len(rows)), [_short(r["model"]) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(metric_label)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_confusion(
    confusion: Sequence[Sequence[float]] | np.ndarray,
    *,
    normalize: bool = False,
    labels: Sequence[str] = TIERS,
    ax: Axes | None = None,
) -> Axes:
    """Confusion matrix as a heat map: rows actual tier, columns predicted tier.

    Parameters
    ----------
    confusion : array-like (k, k)
        Counts, rows actual, columns predicted.
    normalize : bool
        Show each row as shares of the actual tier (recall on the diagonal).
    labels : sequence of str
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    ax = _axes(ax, (3.6, 3.2))
    cm = np.asarray(confusion, dtype=float)
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        shown = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    else:
        shown = cm
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    ax.imshow(shown, cmap=_SEQUENTIAL_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{shown[i, j]:.0%}" if normalize else f"{int(cm[i, j]):,}"
            dark = shown[i, j] / vmax < 0.55
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(labels)), list(labels))
    ax.set_yticks(range(len(labels)), list(labels))
    ax.set_xlabel("Predicted tier")
    ax.set_ylabel("Actual tier")
    ax.set_title("Share of each actual tier (%)" if normalize else "Customers (count)", fontsize=10)
    return ax


def plot_gains(
    curves: Mapping[str, pd.DataFrame],
    *,
    colors: Mapping[str, str] | None = None,
    marks: Sequence[float] = (0.10, 0.25),
    value_label: str = "Share of revenue captured (%)",
    ax: Axes | None = None,
) -> Axes:
    """Cumulative gains: share of value captured when customers are targeted by score, best first.

    Parameters
    ----------
    curves : mapping of label to DataFrame
        Each from :func:`clvtier.evaluate.gains_curve` (``share_of_customers``,
        ``share_of_value``). Random targeting is drawn as the diagonal.
    colors : mapping of label to colour, optional
    marks : sequence of float
        Shares of customers marked with a vertical line (e.g. the top 10 % and 25 %).
    value_label : str
        Label of the y axis.
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    ax = _axes(ax, (6.0, 4.0))
    colors = colors or {}
    palette = [c for k, c in OKABE_ITO.items() if k not in ("black", "grey", "yellow")]
    for k, (label, curve) in enumerate(curves.items()):
        ax.plot(curve["share_of_customers"], curve["share_of_value"], label=_short(label), linewidth=2,
                color=colors.get(label, palette[k % len(palette)]))
    ax.plot([0, 1], [0, 1], linestyle=":", color=METHOD_COLORS["random"], linewidth=1.2, label="random targeting")
    for m in marks:
        ax.axvline(m, color=OKABE_ITO["grey"], linewidth=0.8, linestyle="--")
        ax.annotate(f"top {m:.0%}", xy=(m, 0.02), xytext=(3, 0), textcoords="offset points", fontsize=8,
                    color="#555555")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("Share of customers targeted, highest score first (%)")
    ax.set_ylabel(value_label)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_reliability(curve: pd.DataFrame, *, event: str = "High", ax: Axes | None = None) -> Axes:
    """Reliability diagram: observed frequency against mean predicted probability per bin.

    Parameters
    ----------
    curve : DataFrame
        From :func:`clvtier.evaluate.reliability_curve` (``mean_predicted``,
        ``fraction_positive``, ``count``). Marker area grows with the count.
    event : str
        Name of the predicted event, for the labels.
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    ax = _axes(ax, (4.6, 4.0))
    ax.plot([0, 1], [0, 1], linestyle=":", color=OKABE_ITO["black"], linewidth=1, label="perfect calibration")
    counts = np.asarray(curve["count"], dtype=float)
    size = 20 + 180 * counts / counts.max() if counts.size else counts
    colour = TIER_COLORS.get(event, METHOD_COLORS["model"])
    ax.plot(curve["mean_predicted"], curve["fraction_positive"], color=colour, linewidth=1.5, zorder=2)
    ax.scatter(curve["mean_predicted"], curve["fraction_positive"], s=size, color=colour, edgecolor="black",
               linewidth=0.5, zorder=3, label="bins (area ∝ customers)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(f"Predicted P({event}) (%)")
    ax.set_ylabel(f"Observed share {event} (%)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="upper left", fontsize=8)
    return ax


def plot_importance(
    importance: Sequence[Mapping[str, Any]],
    *,
    metric_label: str = "Drop in score when shuffled",
    top: int = 15,
    ax: Axes | None = None,
) -> Axes:
    """Permutation importance: mean drop in the score when a feature is shuffled, +/- one SD.

    Parameters
    ----------
    importance : sequence of {"feature", "mean", "std"}
    metric_label : str
        Label of the x axis.
    top : int
        Show the ``top`` most important features.
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    rows = sorted(importance, key=lambda r: -float(r["mean"]))[:top]
    ax = _axes(ax, (7.0, 0.7 + 0.3 * max(1, len(rows))))
    names = [_short(r["feature"]) for r in rows]
    means = np.array([float(r["mean"]) for r in rows])
    stds = np.array([float(r["std"]) for r in rows])
    ax.barh(range(len(rows)), means, xerr=stds, color=METHOD_COLORS["model"], ecolor="#444444", capsize=2)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color=OKABE_ITO["black"], linewidth=0.8)
    ax.set_xlabel(metric_label)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_backtest(
    cutoffs: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    metric_label: str = "Score",
    colors: Mapping[str, str] | None = None,
    percent: bool = False,
    ylim: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """A metric across cutoffs, one line per method.

    Parameters
    ----------
    cutoffs : sequence of str
        Cutoff dates (x axis, in the given order).
    series : mapping of label to values
        One value per cutoff; None where the metric is undefined.
    metric_label : str
        Label of the y axis.
    colors : mapping of label to colour, optional
    percent : bool
        Values are shares in [0, 1], shown in %.
    ylim : (float, float), optional
        Fixed y range, e.g. ``(0, 1)`` so that small differences are not magnified.
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    ax = _axes(ax, (5.0, 3.4))
    colors = colors or {}
    x = np.arange(len(cutoffs))
    markers = ["o", "s", "^", "D"]
    for k, (label, values) in enumerate(series.items()):
        y = np.array([np.nan if v is None else float(v) for v in values])
        ax.plot(x, y, marker=markers[k % len(markers)], linewidth=1.8, label=_short(label),
                color=colors.get(label, list(METHOD_COLORS.values())[k % len(METHOD_COLORS)]))
    ax.set_xticks(x, [_short(c, 12) for c in cutoffs])
    ax.set_xlim(-0.5, len(cutoffs) - 0.5)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("Cutoff date (test period starts)")
    ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="best")
    ax.spines[["top", "right"]].set_visible(False)
    return ax
