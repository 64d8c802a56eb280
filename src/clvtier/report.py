"""Report: one self-contained HTML page (inline CSS and SVG) from a run directory.

The page is rendered by an autoescaped Jinja2 template shipped with the package,
so every value that comes from the data (customer ids, categories, column names,
warning text) is escaped. The only markup inserted unescaped is the SVG that
matplotlib writes for our own figures (matplotlib escapes the text it draws) and
the marked dash of an undefined value (built with ``Markup.format``, which escapes).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clvtier.errors import InputError, ModelError
from clvtier.evaluate import NEEDS_PREDICTED_HIGH, none_predicted_high
from clvtier.persist import METADATA_FILE, read_metadata, read_run_file
from clvtier.target import TIERS

__all__ = ["REPORT_FILE", "render_report", "write_report"]

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
TOPS = (0.10, 0.25)
NBSP = "\u00a0"

#: Headline metrics in display order: key, label, kind (how it is formatted), what it means.
HEADLINE = (
    ("revenue_capture_high", "Revenue held by predicted High", "pct",
     "Share of the test customers' revenue held by those the model puts in High."),
    ("lift_top25", "Lift in the top 25 %", "lift",
     "Revenue share of the 25 % ranked highest, divided by 25 %; 1.0× is random."),
    ("high_precision", "Precision of High", "pct", "Of the customers predicted High, the share that were High."),
    ("high_recall", "Recall of High", "pct", "Of the customers that were High, the share predicted High."),
    ("macro_f1", "Macro-F1", "score", "F1 averaged over the three tiers (1 is perfect)."),
    ("accuracy", "Accuracy", "pct", "Share of customers whose tier is predicted exactly."),
    ("roc_auc_high", "ROC AUC, High vs rest", "score",
     "Chance that a High customer gets a higher P(High) than a non-High one (0.5 is random)."),
    ("spearman", "Spearman correlation", "score", "Rank correlation between the score and the actual value."),
)
KIND = {key: kind for key, _label, kind, _help in HEADLINE}
LABEL = {key: label for key, label, _kind, _help in HEADLINE}

BASELINES = {
    "baseline_carry_forward": "Carry-forward (tier of past spend)",
    "baseline_bgnbd_gg": "BG/NBD + Gamma-Gamma",
    "baseline_majority": "Majority tier",
}
#: How the baselines are named in sentences.
BASELINE_WORDS = {
    "baseline_carry_forward": "carry-forward",
    "baseline_bgnbd_gg": "BG/NBD + Gamma-Gamma",
    "baseline_majority": "the majority tier",
}
METRIC_LABELS = {
    "macro_f1": "macro-F1", "accuracy": "accuracy", "weighted_f1": "weighted F1",
    "balanced_accuracy": "balanced accuracy", "revenue_capture_high": "revenue held by predicted High",
    "lift_top25": f"lift in the top 25{NBSP}%", "high_precision": "precision of High",
    "high_recall": "recall of High", "roc_auc_high": "ROC AUC of High", "spearman": "Spearman correlation",
}
#: Metrics of how a score ranks customers: undefined for a score that is the same for everyone.
RANKING_METRICS = frozenset({"lift_top25", "spearman", "roc_auc_high"})
#: A baseline's point estimate against the model's 95 % interval, from the model's side.
VERDICTS = {
    "gain": "lies below the model's interval: a clear gain on this metric",
    "tie": "lies inside the model's interval: no clear gain on this metric",
    "loss": "lies above the model's interval: the baseline does better on this metric",
}
NO_HIGH = "undefined: no customer predicted High"
#: The footnote of a table that shows undefined values (:func:`_undefined`).
UNDEFINED_NOTE = ("A dotted – is undefined, not zero: no test customer was predicted in that tier, so there "
                  "is no precision to compute and no revenue held (hover over it for details).")
#: The members of the purchase-history group (:func:`clvtier.predict.explanation_groups`) in words.
GROUP_MEMBER_WORDS = {
    "btyd_frequency": "repeat purchase days",
    "btyd_recency": "days from the first to the last purchase",
    "btyd_T": "days from the first purchase to the cutoff",
    "btyd_monetary": "mean spend per repeat purchase day",
}

_REPORT_RC: dict[Any, Any] = {
    "svg.fonttype": "none",  # text stays text: smaller files, selectable and searchable
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "text.parse_math": False,  # '$' in a category or feature name is text, not TeX
    "svg.image_inline": True,  # raster parts (the confusion heat maps) embedded, never linked
}


# --------------------------------------------------------------------------- formatting


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage: ``0.612 -> '61.2 %'`` (non-breaking space)."""
    return "–" if _missing(x) else f"{100 * float(x):.{digits}f}{NBSP}%"


def fmt_score(x: Any, digits: int = 3) -> str:
    """A score such as F1 or AUC: ``0.61234 -> '0.612'``."""
    return "–" if _missing(x) else f"{float(x):.{digits}f}"


def fmt_lift(x: Any) -> str:
    """A lift: ``2.314 -> '2.31×'``."""
    return "–" if _missing(x) else f"{float(x):.2f}×"


def fmt_int(x: Any) -> str:
    """A count with thousands separators."""
    return "–" if _missing(x) else f"{int(x):,}"


def fmt_money(x: Any) -> str:
    """An amount of money (no currency is known): whole units when large."""
    if _missing(x):
        return "–"
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


def fmt_metric(key: str, x: Any) -> str:
    """Format a metric value the way the report shows it (see :data:`HEADLINE`)."""
    kind = KIND.get(key, "pct" if key.startswith(("high_", "revenue_")) else "score")
    return {"pct": fmt_pct, "lift": fmt_lift}.get(kind, fmt_score)(x)


def fmt_ci(key: str, entry: Mapping[str, Any] | None) -> str:
    """The 95 % interval of a headline entry ``{value, lo, hi}``: ``'58.0 % – 64.1 %'``."""
    if not entry or _missing(entry.get("lo")) or _missing(entry.get("hi")):
        return ""
    return f"{fmt_metric(key, entry['lo'])} – {fmt_metric(key, entry['hi'])}"


def _undefined(why: str) -> Any:
    """A dash for an undefined value that says why on hover (and has a dotted underline)."""
    from markupsafe import Markup

    return Markup('<span class="undefined" title="{}">–</span>').format(why)


def _pp(x: float) -> str:
    return f"{100 * x:.1f}{NBSP}percentage points"


def _points(change: float) -> str:
    """A change in probability in percentage points, e.g. ``-11.8 points``; tiny ones as ``< 0.1``."""
    pts = 100 * change
    if abs(pts) < 0.05:
        return f"<{NBSP}0.1{NBSP}points"
    return f"{pts:+.1f}{NBSP}points"


def _join(items: Sequence[str]) -> str:
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------- inputs


@dataclass
class _Run:
    path: Path
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    predictions: pd.DataFrame | None
    values: pd.DataFrame | None


def _read_json(run_dir: Path, meta: Mapping[str, Any], name: str) -> dict[str, Any]:
    path = run_dir / name
    raw = read_run_file(run_dir, meta, name)
    if raw is None:
        raise ModelError(f"{path} is not a file of this run ({METADATA_FILE} does not list it).",
                         "Pass the RUN_DIR written by 'clvtier train'.")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}).", "Train the model again.") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is damaged: it is not a JSON object.", "Train the model again.")
    return data


def _read_csv(run_dir: Path, meta: Mapping[str, Any], name: str) -> pd.DataFrame | None:
    raw = read_run_file(run_dir, meta, name)
    if raw is None:
        return None
    try:
        # Ids stay text: "007" is not 7, and a hostile id is shown exactly as written.
        return pd.read_csv(io.BytesIO(raw), dtype={"customer_id": str}, keep_default_na=False, na_values=[""])
    except ValueError as exc:  # pandas' ParserError and EmptyDataError, a UnicodeDecodeError
        raise ModelError(f"{run_dir / name} is not a readable CSV file ({exc}).", "Train the model again.") from None


def _load(run_dir: Path) -> _Run:
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a directory.", "Pass the RUN_DIR written by 'clvtier train'.")
    # Every file is checked against the SHA-256 training recorded: the page describes this run only.
    meta = read_metadata(run_dir)
    return _Run(
        path=run_dir,
        metadata=meta,
        metrics=_read_json(run_dir, meta, "metrics.json"),
        predictions=_read_csv(run_dir, meta, "test_predictions.csv"),
        values=_read_csv(run_dir, meta, "values.csv"),
    )


# --------------------------------------------------------------------------- figures


def _svg(ax_or_fig: Any, name: str) -> Any:
    """Our own matplotlib figure as inline SVG markup (XML prolog and metadata removed)."""
    import matplotlib
    from markupsafe import Markup

    fig = ax_or_fig.get_figure() if hasattr(ax_or_fig, "get_figure") else ax_or_fig
    buf = io.StringIO()
    # A salt per figure keeps the clip-path ids unique across the page and the output deterministic.
    with matplotlib.rc_context({**_REPORT_RC, "svg.hashsalt": f"clvtier-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.S)
    # matplotlib numbers its groups per figure (figure_1, patch_1, ...); make them unique in the page.
    # Referenced ids (clip paths, markers) are salted hashes without an underscore and stay as they are.
    svg = re.sub(r'id="([A-Za-z][\w.]*_\d+)"', rf'id="{name}-\1"', svg)
    svg = svg.replace("<svg ", f'<svg class="plot" role="img" aria-labelledby="{name}-caption" ', 1)
    return Markup(svg)  # our own matplotlib output; matplotlib escapes the text it writes


def _figure(name: str, draw: Callable[[], Any]) -> Any:
    import matplotlib

    with matplotlib.rc_context(_REPORT_RC):
        ax = draw()
    return _svg(ax, name)


def _panels(name: str, draws: Sequence[Callable[[Any], Any]], figsize: tuple[float, float]) -> Any:
    """Several plots side by side in one figure, as inline SVG."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_REPORT_RC):
        fig = Figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(1, len(draws))
        for ax, draw in zip(np.atleast_1d(axes), draws, strict=True):
            draw(ax)
    return _svg(fig, name)


# --------------------------------------------------------------------------- sections


def _value_words(m: Mapping[str, Any]) -> tuple[str, str]:
    """How to name the value in sentences and on axes, by mode and target."""
    horizon = m.get("horizon_days")
    period = "next-year" if horizon == 365 else f"next-{horizon}-day"
    if m.get("mode") == "snapshot":
        if m.get("target") == "formula":
            return "formula CLV", "Formula CLV: order value × frequency × lifespan (currency units)"
        return "total spend", "Total spend over the whole history (currency units)"
    if m.get("target") == "total":
        return (f"past plus {period} revenue",
                f"Spend before the cutoff plus the {horizon} days after (currency units)")
    return f"{period} revenue", f"Spend in the {horizon} days after the cutoff (currency units)"


def _model_label(m: Mapping[str, Any]) -> str:
    return f"Model ({m.get('chosen', '?')})"


def _baseline_names(base: Mapping[str, Any]) -> list[str]:
    """The baselines a run evaluated: the known ones in display order, then any others by name."""
    return [b for b in BASELINES if b in base] + sorted(b for b in base if b not in BASELINES)


def _unranked(run: _Run, names: Sequence[str]) -> set[str]:
    """Baselines that give every test customer the same score, so rank no one.

    Their lift, Spearman correlation and AUC would only reflect the order the ties happen to be in.
    """
    p = run.predictions
    out = {b for b in names if b == "baseline_majority"}  # one tier for everyone, by definition
    if p is not None:
        for b in names:
            col = next((c for c in (f"{b}_score", f"{b}_tier") if c in p), None)
            if col is not None and p[col].nunique(dropna=False) <= 1:
                out.add(b)
    return out


def _no_high(m: Mapping[str, Any], name: str) -> bool:
    """Whether a method put no test customer in High."""
    return none_predicted_high((m.get("test") or {}).get(name))


def _cell(key: str, value: Any, no_high: bool) -> Any:
    """A metric as a table cell: a marked dash where it is undefined because no one was predicted High."""
    return _undefined(NO_HIGH) if no_high and key in NEEDS_PREDICTED_HIGH else fmt_metric(key, value)


def _best_baseline(key: str, values: Mapping[str, Mapping[str, Any]]) -> tuple[str, float] | None:
    """The baseline with the highest value of a metric (all headline metrics are higher-is-better)."""
    known = [(b, float(v[key])) for b, v in values.items() if not _missing(v.get(key))]
    return max(known, key=lambda bv: bv[1]) if known else None


def _verdict(entry: Mapping[str, Any], baseline: float) -> str | None:
    """Where a baseline's point estimate falls against the model's 95 % interval, from the model's side."""
    if _missing(entry.get("lo")) or _missing(entry.get("hi")):
        return None
    return "gain" if baseline < float(entry["lo"]) else "loss" if baseline > float(entry["hi"]) else "tie"


def _versus_best(key: str, entry: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]]) -> str:
    """'; the best baseline, X, v (carry-forward w), lies inside the model's interval: ...' or ''."""
    best = _best_baseline(key, values)
    if best is None:
        return ""
    name, value = best
    s = f"; the best baseline, {BASELINE_WORDS.get(name, name)}, {fmt_metric(key, value)}"
    cf = (values.get("baseline_carry_forward") or {}).get(key)
    if name != "baseline_carry_forward" and not _missing(cf):
        s += f" (carry-forward {fmt_metric(key, cf)})"
    verdict = _verdict(entry, value)
    return s + (f", {VERDICTS[verdict]}" if verdict else ", and the model has no interval to set it against")


def _tally(head: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]]) -> str:
    """One sentence on every headline metric: is the best baseline below, inside or above the model's interval?"""
    verdicts: dict[str, list[str]] = {"gain": [], "tie": [], "loss": []}
    for key, *_ in HEADLINE:
        best = _best_baseline(key, values)
        if key in head and best is not None and (verdict := _verdict(head[key], best[1])):
            verdicts[verdict].append(METRIC_LABELS[key])
    gain, ties, loss = verdicts["gain"], len(verdicts["tie"]), verdicts["loss"]
    n = len(gain) + ties + len(loss)
    if not n:
        return ""
    s = ("Metric by metric, the model beats the best baseline clearly on "
         + (f"{len(gain)} of the {n} headline metrics ({_join(gain)})" if gain else f"none of the {n} headline metrics")
         + (f" and is clearly worse on {len(loss)} ({_join(loss)})" if loss else " and is clearly worse on none"))
    if ties:
        s += f"; on {'all' if ties == n else 'the other'} {ties} the best baseline lies inside the model's interval"
    # Paired differences would account for the baseline's noise too; train writes none, so say what was compared.
    return s + (f". These checks set the best baseline's point estimate against the model's 95{NBSP}% bootstrap "
                "interval (the run stores no paired-difference intervals), so they ignore the baseline's own "
                "uncertainty.")


def _summary(run: _Run, words: str) -> dict[str, Any]:
    m = run.metrics
    head = m.get("headline") or {}
    base = m.get("headline_baselines") or {}
    names = _baseline_names(base)
    unranked = _unranked(run, names)
    no_high = {b for b in names if _no_high(m, b)}
    model_no_high = _no_high(m, str(m.get("chosen")))
    # A constant score ranks no one: its ranking metrics reflect the order of ties, so they are not shown;
    # with no one predicted High, the precision of High and the revenue held by them are undefined.
    values = {b: {key: (base[b].get(key) or {}).get("value") for key, *_ in HEADLINE
                  if not (key in RANKING_METRICS and b in unranked)
                  and not (key in NEEDS_PREDICTED_HIGH and b in no_high)} for b in names}
    rows = []
    for key, label, _kind, help_text in HEADLINE:
        if key not in head:
            continue
        undefined = model_no_high and key in NEEDS_PREDICTED_HIGH
        rows.append({
            "key": key, "label": label, "help": help_text,
            "value": _cell(key, head[key].get("value"), model_no_high),
            "ci": "" if undefined else fmt_ci(key, head[key]),
            "baselines": [_cell(key, values[b].get(key), b in no_high) for b in names],
        })
    if model_no_high:
        head = {k: v for k, v in head.items() if k not in NEEDS_PREDICTED_HIGH}
    sentences = []
    cap = head.get("revenue_capture_high")
    if cap:
        s = f"Customers predicted High hold {fmt_metric('revenue_capture_high', cap['value'])} of {words}"
        if fmt_ci("revenue_capture_high", cap):
            s += f" (95{NBSP}% CI {fmt_ci('revenue_capture_high', cap)})"
        sentences.append(s + _versus_best("revenue_capture_high", cap, values) + ".")
    f1 = head.get("macro_f1")
    if f1:
        s = (f"The {m.get('chosen')} model gets the tier exactly right for "
             f"{fmt_pct((head.get('accuracy') or {}).get('value'))} of test customers "
             f"(macro-F1 {fmt_score(f1['value'])}")
        if fmt_ci("macro_f1", f1):
            s += f", 95{NBSP}% CI {fmt_ci('macro_f1', f1)}"
        sentences.append(s + ")" + _versus_best("macro_f1", f1, values) + ".")
    if tally := _tally(head, values):
        sentences.append(tally)
    audit = m.get("leakage_audit") or {}
    undated = audit.get("undated_features") or []
    if undated and (changes := _audit_changes(audit, ("macro_f1", "revenue_capture_high"))):
        sentences.append(f"The saved model uses {len(undated)} feature{'s' if len(undated) != 1 else ''} not "
                         "bounded by the cutoff, which may carry information from after it (see the leakage "
                         f"audit); refitted without them, {changes}.")
    if unstable := [key for key, _here, _behind in _unstable_leads(m)]:
        s = (f"At most earlier cutoffs a baseline is ahead on {_join([BACKTEST_WORDS[k] for k in unstable])}: "
             "that lead is not stable (see the backtests)")
        done, methods = _backtest_methods(m)
        records = [_record(done, "lift_top25", k) for k, _name in methods]
        if "lift_top25" not in unstable and records and all(n and wins == n for wins, _losses, n in records):
            s += (f"; on lift in the top 25{NBSP}%, which compares the same number of customers, the model is "
                  "ahead of every baseline at every earlier cutoff")
        sentences.append(s + ".")
    if m.get("describes_past_only"):
        sentences.append("Snapshot mode: these numbers describe the past; they are not evidence that "
                         "the model can predict.")
    facts = [
        ("Chosen model", str(m.get("chosen", "–"))),
        ("Mode", str(m.get("mode", "–"))),
        ("Cutoff", str(m.get("cutoff", "–"))),
        ("Horizon", f"{m['horizon_days']} days" if m.get("horizon_days") else "–"),
        ("Customers", f"{fmt_int(m.get('n_customers'))} ({fmt_int(m.get('n_train'))} train, "
                      f"{fmt_int(m.get('n_test'))} test)"),
    ]
    labels = [BASELINES.get(b, b) for b in names]
    unranked_note = ""
    if unranked:
        which = [BASELINES.get(b, b) for b in names if b in unranked]
        one = len(which) == 1
        unranked_note = (f"{_join(which)} {'gives' if one else 'give'} every customer the same score, so "
                         f"{'it ranks' if one else 'they rank'} no one: {'its' if one else 'their'} lift, Spearman "
                         "correlation and ROC AUC are shown as –.")
    no_high_note = ""
    if no_high or model_no_high:
        which = ([_model_label(m)] if model_no_high else []) + [BASELINES.get(b, b) for b in names if b in no_high]
        one = len(which) == 1
        no_high_note = (f"{_join(which)} {'puts' if one else 'put'} no test customer in High, so "
                        f"{'its' if one else 'their'} precision of High and revenue held by predicted High are "
                        f"undefined: shown as a dotted –, not as 0{NBSP}%.")
    return {"rows": rows, "baselines": labels, "reading": " ".join(sentences), "facts": facts,
            "unranked_note": unranked_note, "no_high_note": no_high_note}


def _data(run: _Run) -> dict[str, Any]:
    m, meta = run.metrics, run.metadata
    summary = meta.get("data_summary") or {}
    tables = []
    for name, t in summary.items():
        if not isinstance(t, Mapping):
            continue
        dates = (f"{t['first_date']} to {t['last_date']}" if t.get("first_date") and t.get("last_date") else "–")
        tables.append({"name": name, "rows": fmt_int(t.get("rows")), "customers": fmt_int(t.get("customers")),
                       "dates": dates, "file": str(t.get("file") or "")})
    warnings = [w for w in (m.get("warnings") or []) if isinstance(w, Mapping)]
    rows = sorted(warnings, key=lambda w: -int(w.get("count") or 0))
    affected = sum(int(w.get("count") or 0) for w in warnings)
    tx = summary.get("transactions") or {}
    s = f"The run read {len(tables)} table{'s' if len(tables) != 1 else ''}"
    if tx.get("rows") is not None:
        s += f", including {fmt_int(tx['rows'])} transactions"
        if tx.get("first_date"):
            s += f" from {tx['first_date']} to {tx['last_date']}"
    s += f"; {fmt_int(m.get('n_customers'))} customers are known at the cutoff. "
    if warnings:
        s += (f"Validation raised {len(warnings)} warning{'s' if len(warnings) != 1 else ''} "
              f"({fmt_int(affected)} affected rows counted over all of them); they were handled automatically and "
              "are listed below.")
    else:
        s += "Validation raised no warnings."
    return {"tables": tables, "warnings": [{
        "severity": str(w.get("severity", "")), "table": str(w.get("table", "")),
        "column": str(w.get("column") or ""), "message": str(w.get("message", "")),
        "count": fmt_int(w.get("count") or 0), "fix": str(w.get("fix", "")),
    } for w in rows], "reading": s}


def _target(run: _Run, words: str, axis_label: str) -> dict[str, Any]:
    from clvtier import plotting

    m = run.metrics
    th = m.get("thresholds") or {}
    low, high = th.get("low_cut"), th.get("high_cut")
    shares = m.get("class_shares") or {}
    n_fit = th.get("n_samples_fit")
    fitted_on = f"the {fmt_int(n_fit)} training customers" if n_fit else "the training customers"
    out: dict[str, Any] = {"rule": str(th.get("rule", "")), "figures": [],
                           "rule_fit": f"fitted on {fitted_on}; the shares it quotes are of them"}
    splits = {"train": "Training", "test": "Test"}
    out["shares"] = [{"split": splits.get(split, split), **{t: fmt_pct(s.get(t)) for t in TIERS}}
                     for split, s in shares.items()]
    sentences = []
    if low is not None and high is not None:
        low_words = ("with no spend (zero or refunds)" if th.get("zero_rule_applied") or 0 < low < 1e-6
                     else f"below {fmt_money(low)}")
        sentences.append(f"Customers {low_words} are Low and those from {fmt_money(high)} up are High; the "
                         "thresholds were fitted on the training customers only.")
    v = run.values
    if v is not None and {"value"} <= set(v.columns) and low is not None and high is not None:
        values = v["value"].to_numpy(dtype=float)
        out["figures"].append({"name": "value-distribution", "caption": f"Distribution of {words} per customer, "
                               "coloured by tier; dashed lines are the tier thresholds.",
                               "svg": _figure("value-distribution", lambda: plotting.plot_value_distribution(
                                   values, low, high, value_label=axis_label))})
        total = values.sum()
        if total > 0:
            high_share = values[values >= high].sum() / total
            s = (f"Of all {fmt_int(values.size)} customers (training and test), {fmt_pct((values <= 0).mean())} "
                 f"have no {words}")
            if "split" in v.columns and (train := (v["split"] == "train").to_numpy()).any():
                s += f" ({fmt_pct((values[train] <= 0).mean())} of the training customers alone)"
            sentences.append(s + f"; the High tier ({fmt_pct((values >= high).mean())} of all customers) holds "
                             f"{fmt_pct(high_share)} of it.")
    if shares:
        out["figures"].append({"name": "class-shares", "caption": "Share of customers in each tier, "
                               "training and test customers.",
                               "svg": _figure("class-shares", lambda: plotting.plot_class_shares(shares))})
    out["reading"] = " ".join(sentences) or "The run directory has no tier thresholds."
    return out


def _comparison(run: _Run) -> dict[str, Any]:
    from clvtier import plotting

    m = run.metrics
    cv = [r for r in (m.get("cv") or []) if isinstance(r, Mapping)]
    metric = str(m.get("selection_metric", "macro_f1"))
    label = METRIC_LABELS.get(metric, metric)
    test = m.get("test") or {}
    rows = []
    for r in sorted(cv, key=lambda r: -float(r["mean"])):
        t = test.get(r["model"]) or {}
        rows.append({"model": str(r["model"]), "chosen": r["model"] == m.get("chosen"),
                     "mean": fmt_score(r["mean"]), "std": fmt_score(r["std"]),
                     "folds": ", ".join(fmt_score(f) for f in r.get("folds") or []),
                     "test_f1": fmt_score(t.get("macro_f1")),
                     "test_capture": _cell("revenue_capture_high", t.get("revenue_capture_high"),
                                           _no_high(m, r["model"]))})
    out: dict[str, Any] = {"rows": rows, "metric": label, "figures": [],
                           "undefined_note": UNDEFINED_NOTE if any(_no_high(m, r["model"]) for r in cv) else ""}
    if not cv:
        out["reading"] = "No cross-validation results in this run."
        return out
    ranked = sorted(cv, key=lambda r: -float(r["mean"]))
    best = ranked[0]
    n_folds = len(best.get("folds") or [])
    s = (f"{best['model']} had the best mean {label} over {n_folds} cross-validation folds on the training "
         f"customers ({fmt_score(best['mean'])} ± {fmt_score(best['std'])}).")
    if len(ranked) > 1:
        gap = float(best["mean"]) - float(ranked[1]["mean"])
        within = gap <= max(float(best["std"]), float(ranked[1]["std"]))
        s += (f" The runner-up, {ranked[1]['model']}, is {fmt_score(gap)} lower, "
              + ("within one standard deviation of the fold scores: the two are practically tied."
                 if within else "more than one standard deviation of the fold scores."))
    out["reading"] = s
    out["figures"].append({"name": "cv-scores", "caption": f"Cross-validated {label} per candidate: fold scores "
                           "(dots) and mean ± one standard deviation (diamond).",
                           "svg": _figure("cv-scores", lambda: plotting.plot_cv_scores(
                               cv, metric_label=f"Cross-validated {label} (0–1, higher is better)",
                               chosen=m.get("chosen")))})
    return out


def _chosen(run: _Run) -> dict[str, Any]:
    from clvtier import plotting

    m = run.metrics
    t = (m.get("test") or {}).get(m.get("chosen")) or {}
    cm = t.get("confusion")
    # A tier no one was predicted in has no precision (evaluate.py stores 0 for it).
    unused = {tier for k, tier in enumerate(TIERS) if cm and np.asarray(cm, dtype=float)[:, k].sum() == 0}
    out: dict[str, Any] = {"figures": [], "per_class": [], "undefined_note": UNDEFINED_NOTE if unused else ""}
    for tier in TIERS:
        pc = (t.get("per_class") or {}).get(tier) or {}
        precision = (_undefined(f"undefined: no customer predicted {tier}") if tier in unused
                     else fmt_pct(pc.get("precision")))
        out["per_class"].append({"tier": tier, "precision": precision,
                                 "recall": fmt_pct(pc.get("recall")), "f1": fmt_score(pc.get("f1")),
                                 "support": fmt_int(pc.get("support"))})
    if not cm:
        out["reading"] = "The run has no test metrics for the chosen model."
        return out
    a = np.asarray(cm, dtype=float)
    n = a.sum()
    far = a[0, 2] + a[2, 0]
    wrong = n - np.trace(a)
    pc_high = (t.get("per_class") or {}).get("High") or {}
    s = (f"Of the {fmt_int(a[2].sum())} test customers who turned out High, the model found "
         f"{fmt_pct(pc_high.get('recall'))}; "
         + ("it called no one High." if "High" in unused else
            f"of the {fmt_int(a[:, 2].sum())} it called High, {fmt_pct(pc_high.get('precision'))} were."))
    if wrong > 0:
        s += (f" {fmt_pct(1 - far / wrong)} of the mistakes are between neighbouring tiers; "
              f"{fmt_int(far)} customers were confused between Low and High.")
    out["reading"] = s
    svg = _panels("confusion", [lambda ax: plotting.plot_confusion(cm, ax=ax),
                                lambda ax: plotting.plot_confusion(cm, normalize=True, ax=ax)], (7.2, 3.2))
    out["figures"].append({"name": "confusion", "caption": "Confusion matrix on the test customers: counts "
                           "(left) and each row as shares of the actual tier (right; recall on the diagonal).",
                           "svg": svg})
    return out


def _ranking_scores(run: _Run) -> dict[str, tuple[str, np.ndarray]]:
    """Scores that rank the test customers: label -> (colour key, score)."""
    p = run.predictions
    out: dict[str, tuple[str, np.ndarray]] = {}
    if p is None:
        return out
    if "p_high" in p and np.isfinite(p["p_high"].to_numpy(dtype=float)).all():
        out[_model_label(run.metrics)] = ("model", p["p_high"].to_numpy(dtype=float))
    for col, key, label in (("baseline_carry_forward_score", "carry_forward", BASELINES["baseline_carry_forward"]),
                            ("baseline_bgnbd_gg_score", "bgnbd_gg", BASELINES["baseline_bgnbd_gg"])):
        if col in p:
            s = p[col].to_numpy(dtype=float)
            if np.isfinite(s).all():
                out[label] = (key, s)
    return out


def _business(run: _Run, words: str) -> dict[str, Any]:
    from clvtier import plotting
    from clvtier.evaluate import capture_at, gains_curve, lift_at
    from clvtier.plotting import METHOD_COLORS

    m = run.metrics
    p = run.predictions
    out: dict[str, Any] = {"figures": [], "rows": [], "tops": [fmt_pct(t, 0) for t in TOPS], "undefined_note": ""}
    scores = _ranking_scores(run)
    if (p is None or "actual_value" not in p or _model_label(m) not in scores
            or not np.isfinite(p["actual_value"].to_numpy(dtype=float)).all()):
        out["reading"] = "The run directory has no test predictions to draw the gains curve from."
        return out
    value = p["actual_value"].to_numpy(dtype=float)
    high = (p["actual_tier"].astype(str) == "High").to_numpy(dtype=float) if "actual_tier" in p else None
    test = m.get("test") or {}
    tier_cols = {_model_label(m): ("predicted_tier", m.get("chosen")),
                 BASELINES["baseline_carry_forward"]: ("baseline_carry_forward_tier", "baseline_carry_forward"),
                 BASELINES["baseline_bgnbd_gg"]: ("baseline_bgnbd_gg_tier", "baseline_bgnbd_gg")}
    captures: dict[str, dict[float, float | None]] = {}
    for label, (_key, score) in scores.items():
        captures[label] = {t: capture_at(score, value, t) if value.sum() > 0 else None for t in TOPS}
        col, name = tier_cols[label]
        flagged = (p[col].astype(str) == "High").mean() if col in p else None
        out["rows"].append({
            "method": label, "captures": [fmt_pct(captures[label][t]) for t in TOPS],
            "lifts": [fmt_lift(lift_at(score, value, t) if value.sum() > 0 else None) for t in TOPS],
            "tier_share": fmt_pct(flagged),
            "tier_capture": _cell("revenue_capture_high", (test.get(name) or {}).get("revenue_capture_high"),
                                  _no_high(m, str(name))),
        })
    if any(_no_high(m, str(tier_cols[label][1])) for label in scores):
        out["undefined_note"] = UNDEFINED_NOTE
    out["rows"].append({"method": "Random targeting", "captures": [fmt_pct(t) for t in TOPS],
                        "lifts": [fmt_lift(1.0) for _ in TOPS], "tier_share": "", "tier_capture": ""})
    if value.sum() <= 0:
        out["reading"] = f"The test customers have no {words}, so shares of revenue are undefined."
        return out
    colours = {label: METHOD_COLORS[key] for label, (key, _s) in scores.items()}
    curves = {label: gains_curve(s, value) for label, (_k, s) in scores.items()}
    draws = [lambda ax: plotting.plot_gains(curves, colors=colours, value_label=f"Share of {words} captured (%)",
                                            ax=ax)]
    if high is not None and high.sum() > 0:
        found = {label: gains_curve(s, high) for label, (_k, s) in scores.items()}
        draws.append(lambda ax: plotting.plot_gains(found, colors=colours, value_label="Share of actual High "
                                                    "customers reached (%)", ax=ax))
    svg = _panels("gains", draws, (9.6 if len(draws) == 2 else 6.0, 4.2))
    out["figures"].append({"name": "gains", "caption": "Cumulative gains on the test customers, ranked by "
                           "P(High) for the model and by score for the baselines: share of revenue captured "
                           "(left) and of actual High customers reached (right). The dotted diagonal is "
                           "random targeting.", "svg": svg})
    model = _model_label(m)
    top, top2 = TOPS
    s = (f"Targeting the {fmt_pct(top, 0)} of customers the model ranks highest reaches "
         f"{fmt_pct(captures[model][top])} of {words}, {fmt_lift(lift_at(scores[model][1], value, top))} "
         "what random targeting would")
    cf = BASELINES["baseline_carry_forward"]
    if cf in captures:
        s += f"; ranking by past spend (carry-forward) reaches {fmt_pct(captures[cf][top])}"
    s += f". The top {fmt_pct(top2, 0)} reach {fmt_pct(captures[model][top2])}"
    if cf in captures:
        s += f" (carry-forward {fmt_pct(captures[cf][top2])})"
    s += "."
    out["reading"] = s
    return out


def _calibration(run: _Run) -> dict[str, Any]:
    from clvtier import plotting
    from clvtier.evaluate import reliability_curve

    p = run.predictions
    out: dict[str, Any] = {"figures": [], "rows": []}
    if p is None or "p_high" not in p or "actual_tier" not in p:
        out["reading"] = "The run directory has no test probabilities."
        return out
    prob = p["p_high"].to_numpy(dtype=float)
    keep = np.isfinite(prob)
    if not keep.any():
        out["reading"] = "The run's test probabilities are missing."
        return out
    prob = np.clip(prob[keep], 0.0, 1.0)
    y = (p["actual_tier"].astype(str) == "High").to_numpy(dtype=float)[keep]
    curve = reliability_curve(prob, y, n_bins=10)
    n = curve["count"].sum()
    gap = curve["mean_predicted"] - curve["fraction_positive"]
    ece = float((curve["count"] * gap.abs()).sum() / n)
    bias = float((curve["count"] * gap).sum() / n)
    out["rows"] = [{"bin": f"{fmt_pct(r.mean_predicted)}", "observed": fmt_pct(r.fraction_positive),
                    "count": fmt_int(r.count)} for r in curve.itertuples()]
    out["figures"].append({"name": "reliability", "caption": "Reliability of P(High) on the test customers: "
                           "customers grouped by predicted probability (bins of 10 points); on the dotted "
                           "line the predicted probability matches the observed share.",
                           "svg": _figure("reliability", lambda: plotting.plot_reliability(curve))})
    direction = ("overstates" if bias > 0 else "understates") if abs(bias) >= 0.01 else "matches"
    s = (f"Weighted by customers, the predicted P(High) is {_pp(ece)} away from the observed share of High "
         f"customers on average (expected calibration error {fmt_score(ece)}); overall the model {direction} "
         "the chance of being High")
    s += "." if direction == "matches" else f" by {_pp(abs(bias))}."
    s += " Read the probabilities as a ranking first and as exact chances with that margin."
    out["reading"] = s
    return out


def _feature_value(value: Any) -> str:
    """One feature's value in a worked example: whole numbers (counts) without decimals, text as written."""
    if _missing(value):
        return "missing"
    if isinstance(value, int | float):
        return f"{value:,.0f}" if float(value).is_integer() else fmt_money(value)
    return str(value)


def _member_value(feature: str, value: Any) -> str:
    """A group member in a few characters: ``btyd_recency`` 120.0 -> ``'recency 120 d'``."""
    name = feature.removeprefix("btyd_")
    if isinstance(value, int | float) and not math.isnan(value):
        if feature in ("btyd_recency", "btyd_T"):
            return f"{name} {value:,.0f}{NBSP}d"
        if feature == "btyd_frequency":
            return f"{name} {value:,.0f}"
    return f"{name} {_feature_value(value)}"


def _reason_value(reason: Mapping[str, Any], groups: Mapping[str, Sequence[str]]) -> str:
    """The value shown next to a reason; a group of features (the BTYD summary) shows its members' values."""
    feature, value = str(reason.get("feature", "")), reason.get("value")
    if isinstance(value, Mapping):
        return ", ".join(_member_value(str(k), v) for k, v in value.items())
    if value is None and feature in groups:
        # A group has no single value; a run that stored none for it still says what the group is made of.
        return ", ".join(f.removeprefix("btyd_") for f in groups[feature]) + " (values not stored)"
    return _feature_value(value)


def _drivers(run: _Run) -> dict[str, Any]:
    from clvtier import plotting
    from clvtier.predict import explanation_groups

    m = run.metrics
    label = METRIC_LABELS.get(str(m.get("selection_metric", "macro_f1")), "score")
    imp = [r for r in (m.get("importance") or []) if isinstance(r, Mapping)]
    out: dict[str, Any] = {"figures": [], "examples": [], "metric": label,
                           "importance": [{"feature": str(r["feature"]), "mean": fmt_score(r["mean"]),
                                           "std": fmt_score(r["std"])} for r in imp]}
    if imp:
        ranked = sorted(imp, key=lambda r: -float(r["mean"]))
        top = [f"{r['feature']} ({fmt_score(r['mean'])})" for r in ranked[:3]]
        idle = sum(1 for r in imp if float(r["mean"]) <= float(r["std"]))
        out["reading"] = (f"Shuffling {_join(top)} lowers the test {label} the most, so the model leans on "
                          f"these features; {idle} of {len(imp)} features change it by less than their own "
                          "noise (one standard deviation).")
        out["figures"].append({"name": "importance", "caption": f"Permutation importance on the test customers: "
                               f"drop in {label} when one feature is shuffled (mean ± SD over repeats).",
                               "svg": _figure("importance", lambda: plotting.plot_importance(
                                   imp, metric_label=f"Drop in test {label} when shuffled"))})
    else:
        out["reading"] = "The run has no feature importance."
    effects: list[list[float]] = []
    groups = {name: cols for name, cols in explanation_groups(list(run.metadata.get("feature_names") or []))
              if len(cols) > 1}
    shown = {str(r["feature"]) for r in imp} | {str(r.get("feature", "")) for ex in m.get("examples") or []
                                                 if isinstance(ex, Mapping) for r in ex.get("reasons") or []}
    notes = []
    for name, cols in groups.items():
        if name in shown:
            members = [f"{c} ({GROUP_MEMBER_WORDS[c]})" if c in GROUP_MEMBER_WORDS else c for c in cols]
            notes.append(f"{name} is a group of {len(cols)} features, shuffled and set to typical as one because "
                         f"they only make sense together: {_join(members)}.")
    out["groups_note"] = " ".join(notes)
    for ex in m.get("examples") or []:
        if not isinstance(ex, Mapping):
            continue
        effects.append([float(r.get("effect") or 0) for r in ex.get("reasons") or []])
        probs = list(ex.get("p") or [])
        pred = str(ex.get("predicted_tier", ""))
        # An effect is how much the probability falls; shown as the change, so a fall is negative.
        reasons = [{"feature": str(r.get("feature", "")), "value": _reason_value(r, groups),
                    "change": _points(-float(r.get("effect") or 0))} for r in ex.get("reasons") or []]
        out["examples"].append({
            "customer_id": str(ex.get("customer_id", "")), "predicted": pred,
            "actual": str(ex.get("actual_tier", "")), "value": fmt_money(ex.get("actual_value")),
            "p": [fmt_pct(x) for x in probs], "reasons": reasons,
        })
    if out["examples"]:
        # The High example matters most for targeting, unless its probability is saturated (no reason moves it).
        def strength(k: int) -> tuple[bool, float]:
            top = effects[k][0] if effects[k] else 0.0
            return (out["examples"][k]["predicted"] == "High" and top >= 0.01, top)

        k = max(range(len(out["examples"])), key=strength)
        ex = out["examples"][k]
        first = ex["reasons"][0] if ex["reasons"] else None
        s = (f" For example, customer {ex['customer_id']} is predicted {ex['predicted']} and was actually "
             f"{ex['actual']}")
        if first and effects[k][0] >= 0.0005:
            s += (f"; setting {first['feature']} to its typical value would lower P({ex['predicted']}) by "
                  f"{first['change'].lstrip('-')}")
        elif first:
            s += (f"; P({ex['predicted']}) is so close to 100{NBSP}% that no single feature moves it by even "
                  "0.1 points")
        out["examples_reading"] = (
            "Each worked example shows the features that move one customer's prediction most: the change in "
            "the probability of the predicted tier when that feature alone is set to its typical training "
            "value (negative: the probability falls, so the feature supports the prediction)." + s + ".")
    return out


def _span(key: str, values: Sequence[Any]) -> str:
    """The range of a metric over cutoffs: '0.726 to 0.738', or one value when they all round alike."""
    known = [float(v) for v in values if not _missing(v)]
    if not known:
        return "–"
    lo, hi = fmt_metric(key, min(known)), fmt_metric(key, max(known))
    return lo if lo == hi else f"{lo} to {hi}"


def _record(done: Sequence[Mapping[str, Any]], key: str, method: str) -> tuple[int, int, int]:
    """At how many backtest cutoffs the model is ahead of a baseline on a metric, behind it, and compared."""
    pairs = [(float(r["model"][key]), float(r[method][key])) for r in done
             if not _missing((r.get("model") or {}).get(key)) and not _missing((r.get(method) or {}).get(key))]
    return sum(a > b for a, b in pairs), sum(b > a for a, b in pairs), len(pairs)


#: The backtest metrics the readings compare, in words.
BACKTEST_WORDS = {"macro_f1": "macro-F1", "revenue_capture_high": "the share of revenue held by predicted High",
                  "lift_top25": f"lift in the top 25{NBSP}% (the same number of customers for every method)"}


def _backtest_methods(m: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[tuple[str, str]]]:
    """The backtests that ran (by cutoff) and the baselines they scored, by their key in a row and in words."""
    rows = [r for r in (m.get("backtest") or []) if isinstance(r, Mapping)]
    done = sorted([r for r in rows if "model" in r], key=lambda r: str(r["cutoff"]))
    # BG/NBD + Gamma-Gamma only when it could be fitted.
    methods = [(k, BASELINE_WORDS[f"baseline_{k}"]) for k in ("carry_forward", "bgnbd_gg")
               if any(k in r for r in done)]
    return done, methods


def _unstable_leads(m: Mapping[str, Any]) -> list[tuple[str, Any, list[str]]]:
    """Leads of the model at the main cutoff that a baseline takes back at most backtest cutoffs.

    One ``(metric, the model's value, ["0.392 for carry-forward", ...])`` per such metric.
    """
    done, methods = _backtest_methods(m)
    head, base = m.get("headline") or {}, m.get("headline_baselines") or {}
    out = []
    for key in BACKTEST_WORDS:
        here: Any = (head.get(key) or {}).get("value")
        if _missing(here):
            continue
        behind = []
        for k, name in methods:
            wins, losses, _n = _record(done, key, k)
            v: Any = ((base.get(f"baseline_{k}") or {}).get(key) or {}).get("value")
            if losses > wins and not _missing(v) and float(v) < float(here):
                behind.append(f"{fmt_metric(key, v)} for {name}")
        if behind:
            out.append((key, here, behind))
    return out


def _backtest_tally(done: Sequence[Mapping[str, Any]], key: str, methods: Sequence[tuple[str, str]]) -> str:
    """Who is ahead on one metric at how many backtest cutoffs, said from the leader's side.

    E.g. 'the model beats carry-forward at 2 of 2 cutoffs, and BG/NBD + Gamma-Gamma is ahead at 2 of 2 cutoffs'.
    """

    def at(name: str, k: int, n: int) -> str:
        return f"{name} at {k} of {n} cutoff{'s' if n != 1 else ''}"

    beaten: list[tuple[str, int, int]] = []
    ahead: list[tuple[str, int, int]] = []
    for method, name in methods:
        wins, losses, n = _record(done, key, method)
        if n:
            (beaten if wins >= losses else ahead).append((name, max(wins, losses), n))
    clauses = [f"the model beats {_join([at(*b) for b in beaten])}"] if beaten else []
    if ahead:
        (name, k, n), *rest = ahead
        clauses.append(_join([f"{name} is ahead at {k} of {n} cutoff{'s' if n != 1 else ''}",
                              *(at(*a) for a in rest)]))
    return ", and ".join(clauses)


def _stability(run: _Run) -> dict[str, Any]:
    from clvtier import plotting
    from clvtier.plotting import METHOD_COLORS

    m = run.metrics
    rows = [r for r in (m.get("backtest") or []) if isinstance(r, Mapping)]
    done, methods = _backtest_methods(m)
    skipped = [{"cutoff": str(r.get("cutoff", "")), "reason": str(r.get("skipped", ""))}
               for r in rows if "model" not in r]
    # Runs saved before the backtests recorded lift show the columns they have.
    keys = tuple(k for k in ("macro_f1", "revenue_capture_high", "lift_top25", "roc_auc_high")
                 if k != "lift_top25" or any("lift_top25" in (r.get("model") or {}) for r in done))
    out: dict[str, Any] = {"figures": [], "skipped": skipped, "rows": [],
                           "metrics": [LABEL[k] for k in keys],
                           "methods": ["Model"] + [name[0].upper() + name[1:] for _k, name in methods]}
    for r in done:
        out["rows"].append({"cutoff": str(r["cutoff"]), "train_cutoff": str(r.get("train_cutoff", "")),
                            "n": fmt_int(r.get("n_customers")),
                            "cells": [[fmt_metric(k, (r.get(method) or {}).get(k))
                                       for method in ("model", *(mk for mk, _name in methods))] for k in keys]})
    if m.get("mode") == "snapshot":
        out["reading"] = "Backtests need a cutoff and a future window; snapshot mode has neither."
        return out
    if not done:
        out["reading"] = ("No backtest could be run: the data are too short for earlier cutoffs."
                          if skipped else "This run has no backtests.")
        return out
    model = _model_label(m)
    labels = {"model": model, **{k: BASELINES[f"baseline_{k}"] for k, _name in methods}}
    colours = {label: METHOD_COLORS[k] for k, label in labels.items()}
    cutoffs = [str(r["cutoff"]) for r in done]

    def series(key: str) -> dict[str, list[Any]]:
        return {label: [(r.get(k) or {}).get(key) for r in done] for k, label in labels.items()}

    svg = _panels("backtest", [
        lambda ax: plotting.plot_backtest(cutoffs, series("macro_f1"), metric_label="Macro-F1 (0–1)",
                                          colors=colours, ylim=(0, 1), ax=ax),
        lambda ax: plotting.plot_backtest(cutoffs, series("revenue_capture_high"), percent=True,
                                          metric_label="Revenue held by predicted High (%)",
                                          colors=colours, ylim=(0, 1), ax=ax),
    ], (9.0, 3.4))
    days = m.get("horizon_days")
    out["figures"].append({"name": "backtest", "caption": f"Out-of-time backtests: labels from the {days} days "
                           f"before each test cutoff for training, the {days} days after it for testing; model "
                           f"versus {_join([name for _k, name in methods])}.", "svg": svg})
    intro = (f"Retrained at {len(done)} earlier cutoffs and tested on the {days} days after each" if len(done) > 1
             else f"Retrained as of an earlier cutoff ({cutoffs[0]}) and tested on the {days} days after it")

    def spans(key: str) -> str:
        others = ", ".join(f"{name} {_span(key, [(r.get(k) or {}).get(key) for r in done])}" for k, name in methods)
        return f"{_span(key, [r['model'].get(key) for r in done])} ({others})"

    sentences = [f"{intro}, the model's macro-F1 is {spans('macro_f1')} and the revenue held by its High tier "
                 f"is {spans('revenue_capture_high')}."]
    tallies = [f"{word}, {t}" for k, word in BACKTEST_WORDS.items() if (t := _backtest_tally(done, k, methods))]
    if tallies:
        sentences.append("On " + "; on ".join(tallies) + ".")
    sentences += [f"At the main cutoff ({m.get('cutoff')}) the model leads on {BACKTEST_WORDS[key]} "
                  f"({fmt_metric(key, here)} against {_join(behind)}), so that lead is not stable across cutoffs."
                  for key, here, behind in _unstable_leads(m)]
    out["reading"] = " ".join(sentences)
    return out


def _audit_changes(audit: Mapping[str, Any], keys: Sequence[str]) -> str:
    """How metrics change without the undated features: 'the macro-F1 changes from 0.739 to 0.707 and ...'."""
    w, wo = audit.get("with_undated") or {}, audit.get("without_undated") or {}
    known = [k for k in keys if not _missing(w.get(k)) and not _missing(wo.get(k))]
    return _join([f"the {METRIC_LABELS[k]}{' changes' if i == 0 else ''} from {fmt_metric(k, w[k])} to "
                  f"{fmt_metric(k, wo[k])}" for i, k in enumerate(known)])


def _leakage(run: _Run) -> dict[str, Any]:
    m = run.metrics
    audit = m.get("leakage_audit") or {}
    undated = [str(c) for c in audit.get("undated_features") or []]
    keys = ("accuracy", "macro_f1", "high_recall", "high_precision", "revenue_capture_high", "roc_auc_high")
    labels = {"high_recall": "Recall of High", "high_precision": "Precision of High", "accuracy": "Accuracy",
              "macro_f1": "Macro-F1", "revenue_capture_high": "Revenue held by predicted High",
              "roc_auc_high": "ROC AUC, High vs rest"}
    w, wo = audit.get("with_undated") or {}, audit.get("without_undated") or {}
    rows = [{"label": labels[k], "with": fmt_metric(k, w.get(k)), "without": fmt_metric(k, wo.get(k))}
            for k in keys if k in w or k in wo]
    out = {"undated": undated, "rows": rows, "note": str(audit.get("note", ""))}
    gain = audit.get("macro_f1_gain_from_undated")
    if rows and gain is not None:
        s = (f"{len(undated)} feature{'s are' if len(undated) != 1 else ' is'} not bounded by the cutoff "
             f"({_join(undated)}); the saved model uses them. Refitted without them, "
             + _audit_changes(audit, ("macro_f1", "revenue_capture_high", "high_recall")))
        if abs(gain) < 0.01:
            s += ". On macro-F1 they add almost nothing, so even if they leak, macro-F1 does not depend on them."
        elif gain > 0:
            s += (f". They add {fmt_score(gain)} to macro-F1, but they may carry information from after the cutoff; "
                  "if they do, trust the numbers without them.")
        else:
            s += ". On macro-F1 the model is better without them."
        if m.get("mode") == "snapshot":
            s = ("In snapshot mode the leak is by design, not in these features: the customer value is computed "
                 "from the same spend the features contain, so near-perfect scores are expected. " + s)
        out["reading"] = s
    else:
        out["reading"] = str(audit.get("note") or "This run has no leakage audit.")
    return out


def _reproducibility(run: _Run) -> dict[str, Any]:
    m, meta = run.metrics, run.metadata
    cfg = meta.get("config") or {}
    items = [
        ("Command", str(meta.get("command") or "–")),
        ("Created", str(meta.get("created") or "–")),
        ("Seed", str(meta.get("seed", cfg.get("seed", "–")))),
        ("Mode / target", f"{m.get('mode')} / {m.get('target')}"),
        ("Cutoff", str(m.get("cutoff", "–"))),
        ("Horizon", f"{m['horizon_days']} days" if m.get("horizon_days") else "–"),
        ("Data fingerprint (SHA-256)", str(meta.get("data_fingerprint") or "–")),
        ("Model file SHA-256", str(meta.get("model_sha256") or "–")),
    ]
    versions = [(str(k), str(v)) for k, v in (meta.get("versions") or {}).items()]
    config = [(str(k), "default" if v is None else v if isinstance(v, str) else json.dumps(v))
              for k, v in cfg.items()]
    timings = [(str(k), f"{float(v):.1f}{NBSP}s") for k, v in (m.get("timings_seconds") or {}).items()]
    reading = ("Re-running the command below on data with the same fingerprint, with these library versions, "
               "reproduces these numbers: seeds are fixed and candidates are compared on identical folds.")
    return {"items": items, "versions": versions, "config": config, "timings": timings, "reading": reading}


# --------------------------------------------------------------------------- rendering


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("clvtier", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["wbr"] = _wbr
    return env


def _wbr(text: Any) -> Any:
    """Escape, then allow line breaks after underscores (long feature names in narrow cells)."""
    from markupsafe import Markup, escape

    return Markup(str(escape(text)).replace("_", "_<wbr>"))


def _context(run: _Run) -> dict[str, Any]:
    from clvtier.plotting import METHOD_COLORS, TIER_COLORS

    m = run.metrics
    words, axis_label = _value_words(m)
    snapshot = bool(m.get("describes_past_only") or m.get("mode") == "snapshot")
    sections = [
        ("summary", "Summary", _summary(run, words)),
        ("data", "Data", _data(run)),
        ("target", "Target: customer value and tiers", _target(run, words, axis_label)),
        ("comparison", "Model comparison", _comparison(run)),
        ("chosen", f"Chosen model: {m.get('chosen', '?')}", _chosen(run)),
        ("business", "Business view: whom to target", _business(run, words)),
        ("calibration", "Calibration of P(High)", _calibration(run)),
        ("drivers", "Drivers", _drivers(run)),
        ("stability", "Stability across cutoffs", _stability(run)),
        ("leakage", "Leakage audit", _leakage(run)),
        ("reproducibility", "Reproducibility", _reproducibility(run)),
    ]
    return {
        "title": f"clvtier report: {m.get('chosen', '?')} model, cutoff {m.get('cutoff', '?')}",
        "chosen": str(m.get("chosen", "?")),
        "snapshot": snapshot,
        "snapshot_note": str((m.get("leakage_audit") or {}).get("note") or ""),
        "sections": [{"id": sid, "title": title, **body} for sid, title, body in sections],
        "s": {sid: body for sid, _t, body in sections},
        "tier_colors": TIER_COLORS,
        "method_colors": METHOD_COLORS,
        "tiers": TIERS,
        "mode": str(m.get("mode", "")),
        "generated_from": str(run.path.name),
    }


def render_report(run_dir: str | Path) -> str:
    """Render the HTML report of a run directory and return it as a string.

    Parameters
    ----------
    run_dir : str or Path
        A directory written by ``clvtier train`` (:func:`clvtier.persist.write_run`).

    Returns
    -------
    str
        One self-contained HTML document.

    Raises
    ------
    InputError
        When ``run_dir`` is not a directory.
    ModelError
        When it is not a run directory, or a file of the run is missing, unreadable, damaged or changed
        after training (each file is checked against the SHA-256 in ``metadata.json``).
    """
    run = _load(Path(run_dir))
    return _environment().get_template(TEMPLATE).render(**_context(run))


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` atomically and return its path.

    Parameters
    ----------
    run_dir : str or Path
        A directory written by ``clvtier train``.

    Returns
    -------
    Path
        The written report.

    Examples
    --------
    >>> from clvtier.report import write_report
    >>> write_report("demo-run/run")  # doctest: +SKIP
    PosixPath('demo-run/run/report.html')
    """
    from clvtier.persist import atomic_path

    run_dir = Path(run_dir)
    html = render_report(run_dir)
    path = run_dir / REPORT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
        tmp.chmod(0o644)  # mkstemp creates 0600; a report is meant to be shared
    return path
