"""The HTML report: sections, numbers, escaping, self-containment, and the plot functions."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from test_persist import reseal

from clvtier import plotting, report
from clvtier.errors import EXIT_BAD_MODEL, InputError, ModelError
from clvtier.evaluate import gains_curve, reliability_curve
from clvtier.target import TIERS

HOSTILE_ID = "<script>alert(1)</script>"
HOSTILE_TAG = '<img src=x onerror="alert(2)">'
QUOTES = "O'Brien \"quoted\" & <b>bold</b>"
NON_ASCII = "Zoë Çelik 顧客 🚀"
LONG = "x" * 600
MATH = "$\\frac{1}{$ spend"

SECTIONS = ["summary", "data", "target", "comparison", "chosen", "business", "calibration", "drivers",
            "stability", "leakage", "reproducibility"]


def make_run(out: Path, n_customers: int = 1500, **config) -> Path:
    """Generate data, train a small, fast configuration and write the run directory."""
    from clvtier.generate import generate
    from clvtier.persist import write_run
    from clvtier.train import TrainConfig, train
    from clvtier.validate import load

    generate(n_customers, seed=3, out=out / "data")
    cfg = TrainConfig(**{"candidates": ("logreg", "naive_bayes"), "cv_folds": 3, "n_boot": 50,
                         "backtests": 1, **config})
    result = train(load(out / "data"), cfg)
    return write_run(result, out / "run", command="clvtier train data --out run --cv 3")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def html(run_dir: Path) -> str:
    return report.write_report(run_dir).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def text_of(html: str) -> str:
    """The visible text, entities decoded and spaces normalised (non-breaking spaces included)."""

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag, attrs):
            self.skip += tag in ("style", "svg")

        def handle_endtag(self, tag):
            self.skip -= tag in ("style", "svg")

        def handle_data(self, data):
            if not self.skip:
                self.parts.append(data)

    p = Text()
    p.feed(html)
    return re.sub(r"\s+", " ", " ".join(p.parts).replace("\u00a0", " "))


class Tags(HTMLParser):
    """Every start tag and its attributes, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def tags_of(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    p = Tags()
    p.feed(html)
    return p.tags


# Independent of report.py's formatters on purpose: these are the formats the report promises.
def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def formatted(key: str, v: float) -> str:
    if key in ("revenue_capture_high", "high_precision", "high_recall", "accuracy"):
        return pct(v)
    if key == "lift_top25":
        return f"{v:.2f}×"
    return f"{v:.3f}"


# ----------------------------------------------------------------------------- the report


def test_write_report_writes_one_file_atomically(run_dir: Path, html: str) -> None:
    path = run_dir / "report.html"
    assert path.is_file()
    assert html.startswith("<!DOCTYPE html>")
    assert not list(run_dir.glob(".report.html.*"))  # no temporary file left behind
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's default


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_is_present_with_a_reading(html: str, section: str) -> None:
    match = re.search(rf'<section id="{section}">(.*?)</section>', html, flags=re.S)
    assert match, section
    reading = re.search(r'<p class="reading[^"]*">(.*?)</p>', match.group(1), flags=re.S)
    assert reading and len(reading.group(1).split()) >= 8, f"{section} has no plain-language reading"


def test_headline_numbers_and_intervals_are_in_the_text(html: str, metrics: dict) -> None:
    text = text_of(html)
    for key, entry in metrics["headline"].items():
        assert formatted(key, entry["value"]) in text, key
        if entry["lo"] is not None:
            assert f"{formatted(key, entry['lo'])} – {formatted(key, entry['hi'])}" in text, key
    for name, head in metrics["headline_baselines"].items():
        for key in ("macro_f1", "revenue_capture_high"):
            assert formatted(key, head[key]["value"]) in text, (name, key)


BASELINE_WORDS = {"baseline_carry_forward": "carry-forward", "baseline_bgnbd_gg": "BG/NBD + Gamma-Gamma",
                  "baseline_majority": "the majority tier"}
VERDICTS = {"gain": "lies below the model's interval: a clear gain on this metric",
            "tie": "lies inside the model's interval: no clear gain on this metric",
            "loss": "lies above the model's interval: the baseline does better on this metric"}


def versus_best(metrics: dict, key: str) -> str:
    """The clause the summary should write: the strongest baseline on ``key`` against the model's interval."""
    head = metrics["headline"][key]
    base = {name: b[key]["value"] for name, b in metrics["headline_baselines"].items() if key in b}
    name = max(base, key=base.__getitem__)
    verdict = "gain" if base[name] < head["lo"] else "loss" if base[name] > head["hi"] else "tie"
    cf = base["baseline_carry_forward"]
    cf = "" if name == "baseline_carry_forward" else f" (carry-forward {formatted(key, cf)})"
    return f"; the best baseline, {BASELINE_WORDS[name]}, {formatted(key, base[name])}{cf}, {VERDICTS[verdict]}."


def test_summary_says_what_the_high_tier_is_worth(html: str, metrics: dict) -> None:
    text = text_of(html)
    cap = metrics["headline"]["revenue_capture_high"]
    assert (f"Customers predicted High hold {pct(cap['value'])} of next-year revenue "
            f"(95 % CI {pct(cap['lo'])} – {pct(cap['hi'])})" + versus_best(metrics, "revenue_capture_high")) in text
    f1 = metrics["headline"]["macro_f1"]
    assert (f"(macro-F1 {f1['value']:.3f}, 95 % CI {f1['lo']:.3f} – {f1['hi']:.3f})"
            + versus_best(metrics, "macro_f1")) in text
    assert "the run stores no paired-difference intervals" in text
    assert f"Chosen model {metrics['chosen']}" in text


def _set_baseline(m: dict, name: str, key: str, value: float) -> None:
    m["headline_baselines"][name][key]["value"] = value


@pytest.mark.parametrize("where", ["gain", "tie", "loss"])
def test_summary_names_the_strongest_baseline_and_whether_the_interval_excludes_it(copy_of: Path, where: str) -> None:
    """BG/NBD + GG close to the model: the summary must compare with it, not with the weaker carry-forward."""

    def edit(m: dict) -> None:
        for key in ("revenue_capture_high", "macro_f1"):
            head = m["headline"][key]
            head.update(value=0.60, lo=0.50, hi=0.70)
            _set_baseline(m, "baseline_carry_forward", key, 0.30)
            _set_baseline(m, "baseline_majority", key, 0.10)
            _set_baseline(m, "baseline_bgnbd_gg", key, {"gain": 0.45, "tie": 0.55, "loss": 0.75}[where])

    _edit_json(copy_of / "metrics.json", edit)
    text = text_of(report.render_report(copy_of))
    bg = {"gain": 0.45, "tie": 0.55, "loss": 0.75}[where]
    assert (f"(95 % CI 50.0 % – 70.0 %); the best baseline, BG/NBD + Gamma-Gamma, {pct(bg)} (carry-forward 30.0 %), "
            f"{VERDICTS[where]}.") in text
    assert (f"(macro-F1 0.600, 95 % CI 0.500 – 0.700); the best baseline, BG/NBD + Gamma-Gamma, {bg:.3f} "
            f"(carry-forward 0.300), {VERDICTS[where]}.") in text
    assert "the carry-forward rule" not in text and "against 0.300 for carry-forward" not in text


def test_summary_names_carry_forward_when_it_is_the_strongest(copy_of: Path) -> None:
    def edit(m: dict) -> None:
        m["headline"]["macro_f1"].update(value=0.60, lo=0.50, hi=0.70)
        _set_baseline(m, "baseline_carry_forward", "macro_f1", 0.40)
        _set_baseline(m, "baseline_bgnbd_gg", "macro_f1", 0.35)

    _edit_json(copy_of / "metrics.json", edit)
    text = text_of(report.render_report(copy_of))
    assert f"the best baseline, carry-forward, 0.400, {VERDICTS['gain']}." in text


def headline_cells(html: str, key: str) -> dict[str, str]:
    """The summary table's row for ``key``: column header -> cell text."""
    table = re.search(r'<table class="headline">(.*?)</table>', html, flags=re.S).group(1)
    heads = [text_of(h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table, flags=re.S)]
    row = re.search(rf'<tr id="headline-{key}">(.*?)</tr>', table, flags=re.S).group(1)
    cells = [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
    return dict(zip(heads, cells, strict=True))


def test_a_constant_score_has_no_lift(html: str, metrics: dict) -> None:
    """Majority gives everyone one score: its lift would be an artefact of the order of ties."""
    assert metrics["headline_baselines"]["baseline_majority"]["lift_top25"]["value"] is not None  # evaluate's number
    row = headline_cells(html, "lift_top25")
    assert row["Majority tier"] == "–"
    assert row["Carry-forward (tier of past spend)"] == formatted(
        "lift_top25", metrics["headline_baselines"]["baseline_carry_forward"]["lift_top25"]["value"])
    assert "Majority tier gives every customer the same score, so it ranks no one" in text_of(html)


def test_a_constant_score_is_found_in_the_predictions(copy_of: Path) -> None:
    preds = pd.read_csv(copy_of / "test_predictions.csv", dtype={"customer_id": str})
    preds["baseline_carry_forward_score"] = 100.0
    preds.to_csv(copy_of / "test_predictions.csv", index=False)
    reseal(copy_of)
    html = report.render_report(copy_of)
    assert headline_cells(html, "lift_top25")["Carry-forward (tier of past spend)"] == "–"
    assert headline_cells(html, "macro_f1")["Carry-forward (tier of past spend)"] != "–"  # a tier metric still counts
    assert "Carry-forward (tier of past spend) and Majority tier give every customer the same score" in text_of(html)


def test_business_view_uses_the_evaluate_functions(html: str, run_dir: Path) -> None:
    from clvtier.evaluate import capture_at, lift_at

    p = pd.read_csv(run_dir / "test_predictions.csv")
    text = text_of(html)
    for col in ("p_high", "baseline_carry_forward_score"):
        for top in (0.10, 0.25):
            assert pct(capture_at(p[col], p["actual_value"], top)) in text
            assert f"{lift_at(p[col], p['actual_value'], top):.2f}×" in text


def test_numbers_of_the_other_sections(html: str, metrics: dict) -> None:
    text = text_of(html)
    chosen = metrics["test"][metrics["chosen"]]
    for tier in TIERS:
        assert pct(chosen["per_class"][tier]["recall"]) in text
    for row in metrics["cv"]:
        assert f"{row['mean']:.3f}" in text
    for row in metrics["importance"][:3]:
        assert row["feature"] in text
    for bt in metrics["backtest"]:
        assert bt["cutoff"] in text and f"{bt['model']['macro_f1']:.3f}" in text
    audit = metrics["leakage_audit"]
    assert f"{audit['without_undated']['macro_f1']:.3f}" in text
    for ex in metrics["examples"]:
        assert f"Customer {ex['customer_id']}" in text
    assert metrics["cutoff"] in text


def test_reproducibility_lists_versions_seed_fingerprint_command(html: str, run_dir: Path) -> None:
    meta = json.loads((run_dir / "metadata.json").read_text())
    text = text_of(html)
    for lib, version in meta["versions"].items():
        assert f"{lib} {version}" in text
    for value in (meta["data_fingerprint"], meta["command"], meta["model_sha256"], str(meta["seed"])):
        assert value in text


def section_text(html: str, section: str) -> str:
    return text_of(re.search(rf'<section id="{section}">(.*?)</section>', html, flags=re.S).group(1))


def test_summary_says_how_the_undated_features_move_the_numbers(html: str, metrics: dict) -> None:
    audit = metrics["leakage_audit"]
    w, wo = audit["with_undated"], audit["without_undated"]
    n = len(audit["undated_features"])
    assert n
    assert (f"The saved model uses {n} features not bounded by the cutoff, which may carry information from after "
            f"it (see the leakage audit); refitted without them, the macro-F1 changes from {w['macro_f1']:.3f} to "
            f"{wo['macro_f1']:.3f} and the revenue held by predicted High from {pct(w['revenue_capture_high'])} to "
            f"{pct(wo['revenue_capture_high'])}.") in section_text(html, "summary")
    assert (f"the saved model uses them. Refitted without them, the macro-F1 changes from {w['macro_f1']:.3f} to "
            f"{wo['macro_f1']:.3f}, the revenue held by predicted High from {pct(w['revenue_capture_high'])} to "
            f"{pct(wo['revenue_capture_high'])} and the recall of High from {pct(w['high_recall'])} to "
            f"{pct(wo['high_recall'])}.") in section_text(html, "leakage")


def test_a_model_without_undated_features_has_no_leakage_sentence_in_the_summary(copy_of: Path) -> None:
    _edit_json(copy_of / "metrics.json", lambda m: m["leakage_audit"].update(undated_features=[]))
    assert "not bounded by the cutoff" not in section_text(report.render_report(copy_of), "summary")


def test_undefined_metrics_of_a_method_that_predicts_no_high_are_dashes(html: str, metrics: dict) -> None:
    """Majority puts everyone in one tier: its precision of High and revenue held are undefined, not 0 %."""
    majority = metrics["test"]["baseline_majority"]
    assert not np.asarray(majority["confusion"])[:, TIERS.index("High")].any()
    assert majority["high_precision"] == 0.0 and majority["revenue_capture_high"] == 0.0  # evaluate's zero_division
    for key in ("high_precision", "revenue_capture_high"):
        assert headline_cells(html, key)["Majority tier"] == "–", key
        row = re.search(rf'<tr id="headline-{key}">(.*?)</tr>', html, flags=re.S).group(1)
        assert 'title="undefined: no customer predicted High"' in row, key
    assert headline_cells(html, "high_recall")["Majority tier"] == "0.0 %"  # defined: High customers, none found
    assert ("Majority tier puts no test customer in High, so its precision of High and revenue held by predicted "
            "High are undefined") in text_of(html)


def test_a_chosen_model_that_predicts_no_high_shows_dashes_everywhere(copy_of: Path) -> None:
    def no_high(m: dict) -> None:
        t = m["test"][m["chosen"]]
        cm = np.asarray(t["confusion"])
        cm[:, 1] += cm[:, 2]
        cm[:, 2] = 0
        t.update(confusion=cm.tolist(), high_precision=0.0, revenue_capture_high=0.0)
        t["per_class"]["High"]["precision"] = 0.0
        m["headline"]["high_precision"].update(value=0.0, lo=0.0, hi=0.0)

    _edit_json(copy_of / "metrics.json", no_high)
    html = report.render_report(copy_of)
    assert headline_cells(html, "high_precision")["Model"] == "–"
    assert headline_cells(html, "high_precision")["95 % interval"] == ""
    chosen = section_text(html, "chosen")
    assert "it called no one High" in chosen and "High – " in chosen and "A dotted – is undefined" in chosen
    comparison = re.search(r'<tr class="chosen">(.*?)</tr>', html, flags=re.S).group(1)
    assert 'title="undefined: no customer predicted High"' in comparison
    assert "A dotted – is undefined" in section_text(html, "business")


def test_the_backtest_says_who_is_ahead_on_each_metric(copy_of: Path) -> None:
    """Macro-F1 favours the model, revenue in predicted High favours carry-forward: the reading must say both."""

    def row(cutoff: str, model: tuple[float, float], cf: tuple[float, float], bg: tuple[float, float]) -> dict:
        return {"cutoff": cutoff, "train_cutoff": "2021-01-01", "n_customers": 1000,
                **{k: {"macro_f1": f1, "revenue_capture_high": cap, "roc_auc_high": 0.8}
                   for k, (f1, cap) in (("model", model), ("carry_forward", cf), ("bgnbd_gg", bg))}}

    def edit(m: dict) -> None:
        m["backtest"] = [row("2022-12-02", (0.738, 0.392), (0.417, 0.512), (0.663, 0.455)),
                         row("2023-03-03", (0.726, 0.439), (0.414, 0.500), (0.666, 0.451))]
        m["headline"]["revenue_capture_high"]["value"] = 0.540
        m["headline_baselines"]["baseline_carry_forward"]["revenue_capture_high"]["value"] = 0.392
        m["headline_baselines"]["baseline_bgnbd_gg"]["revenue_capture_high"]["value"] = 0.515

    _edit_json(copy_of / "metrics.json", edit)
    html = report.render_report(copy_of)
    text = section_text(html, "stability")
    assert ("the model's macro-F1 is 0.726 to 0.738 (carry-forward 0.414 to 0.417, BG/NBD + Gamma-Gamma 0.663 to "
            "0.666) and the revenue held by its High tier is 39.2 % to 43.9 % (carry-forward 50.0 % to 51.2 %, "
            "BG/NBD + Gamma-Gamma 45.1 % to 45.5 %).") in text
    assert ("On macro-F1, the model beats carry-forward at 2 of 2 cutoffs and BG/NBD + Gamma-Gamma at 2 of 2 "
            "cutoffs; on the share of revenue held by predicted High, carry-forward is ahead at 2 of 2 cutoffs and "
            "BG/NBD + Gamma-Gamma at 2 of 2 cutoffs.") in text
    assert ("the model leads on the share of revenue held by predicted High (54.0 % against 39.2 % for carry-forward "
            "and 51.5 % for BG/NBD + Gamma-Gamma), so that lead is not stable across cutoffs.") in text
    assert ("At most earlier cutoffs a baseline is ahead on the share of revenue held by predicted High: that lead "
            "is not stable (see the backtests).") in section_text(html, "summary")
    table = re.search(r'<section id="stability">.*?<table>(.*?)</table>', html, flags=re.S).group(1)
    heads = [text_of(h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table, flags=re.S)]
    assert heads[6:9] == ["Model", "Carry-forward", "BG/NBD + Gamma-Gamma"]
    first = [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", table, flags=re.S)][:9]
    assert first == ["2022-12-02", "2021-01-01", "1,000", "0.738", "0.417", "0.663", "39.2 %", "51.2 %", "45.5 %"]


def test_a_backtest_without_bgnbd_compares_with_carry_forward_only(copy_of: Path) -> None:
    _edit_json(copy_of / "metrics.json", lambda m: [r.pop("bgnbd_gg", None) for r in m["backtest"]])
    html = report.render_report(copy_of)
    text = section_text(html, "stability")
    assert "carry-forward" in text and "BG/NBD" not in text


def test_lift_in_the_backtests_compares_the_same_number_of_customers(copy_of: Path) -> None:
    """Carry-forward holds more revenue only by putting more customers in High: lift says so."""

    def edit(m: dict) -> None:
        for k, r in enumerate(r for r in m["backtest"] if "model" in r):
            lifts = (2.1 - k / 10, 1.6 - k / 10, 1.9 - k / 10)
            r["model"]["revenue_capture_high"], r["carry_forward"]["revenue_capture_high"] = 0.40, 0.50
            r["bgnbd_gg"]["revenue_capture_high"] = 0.45
            for method, lift in zip(("model", "carry_forward", "bgnbd_gg"), lifts, strict=True):
                r[method]["lift_top25"] = lift
        m["headline"]["revenue_capture_high"]["value"] = 0.540
        m["headline_baselines"]["baseline_carry_forward"]["revenue_capture_high"]["value"] = 0.392
        m["headline_baselines"]["baseline_bgnbd_gg"]["revenue_capture_high"]["value"] = 0.515

    _edit_json(copy_of / "metrics.json", edit)
    n = sum("model" in r for r in json.loads((copy_of / "metrics.json").read_text())["backtest"])
    assert n
    html = report.render_report(copy_of)
    assert ("on lift in the top 25 %, which compares the same number of customers, the model is ahead of every "
            "baseline at every earlier cutoff.") in section_text(html, "summary")
    cutoffs = f"{n} of {n} cutoff{'s' * (n > 1)}"
    assert ("on lift in the top 25 % (the same number of customers for every method), the model beats "
            f"carry-forward at {cutoffs} and BG/NBD + Gamma-Gamma at {cutoffs}") in section_text(html, "stability")
    table = re.search(r'<section id="stability">.*?<table>(.*?)</table>', html, flags=re.S).group(1)
    assert "Lift in the top 25 %" in text_of(table)


def test_reasons_show_the_change_with_the_sign_the_text_uses(copy_of: Path) -> None:
    def edit(m: dict) -> None:
        ex = m["examples"][0]
        ex.update(predicted_tier="High", p=[0.02, 0.32, 0.66])
        ex["reasons"] = [{"feature": "share_home_goods", "effect": 0.163, "value": 0.0},
                         {"feature": "n_transactions", "effect": 0.05, "value": 17.0},
                         {"feature": "share_electronics", "effect": -0.02, "value": 0.5069}]
        m["examples"] = [ex]  # the one the reading quotes

    _edit_json(copy_of / "metrics.json", edit)
    html = report.render_report(copy_of)
    assert "setting share_home_goods to its typical value would lower P(High) by 16.3 points" in text_of(html)
    assert "Change in P(High) if set to typical" in html and "Effect on" not in html
    shown = reason_values(html)
    assert ("share_home_goods", "0") in shown and ("n_transactions", "17") in shown  # counts without decimals
    assert ("share_electronics", "0.51") in shown
    changes = [text_of(c).strip() for c in re.findall(r'<td class="num">([^<]*points)</td>', html)]
    assert changes[:3] == ["-16.3 points", "-5.0 points", "+2.0 points"]


def test_feature_groups_are_defined_where_reasons_are_shown(html: str) -> None:
    text = section_text(html, "drivers")
    assert "purchase_history_rfm" in text
    assert ("purchase_history_rfm is a group of 4 features, shuffled and set to typical as one because they only "
            "make sense together: btyd_frequency (repeat purchase days), btyd_recency (days from the first to the "
            "last purchase), btyd_T (days from the first purchase to the cutoff) and btyd_monetary (mean spend per "
            "repeat purchase day).") in text


def test_header_names_the_currency_and_the_run_directory_plainly(html: str, run_dir: Path) -> None:
    header = text_of(re.search(r'<header class="top">(.*?)</header>', html, flags=re.S).group(1))
    assert "Amounts of money are in the data's own currency, which the data do not name." in header
    assert "Run:" not in text_of(html)
    assert f"Generated by clvtier from the run directory {run_dir.name} ." in text_of(html)


def test_shares_of_no_spend_say_which_customers_they_are_of(html: str, run_dir: Path, metrics: dict) -> None:
    values = pd.read_csv(run_dir / "values.csv")
    train = values[values["split"] == "train"]
    text = section_text(html, "target")
    assert (f"Of all {len(values):,} customers (training and test), {pct((values['value'] <= 0).mean())} have no "
            f"next-year revenue ({pct((train['value'] <= 0).mean())} of the training customers alone)") in text
    assert (f"Threshold rule, fitted on the {metrics['thresholds']['n_samples_fit']:,} training customers; the shares "
            "it quotes are of them:") in text
    assert "training customers" in metrics["thresholds"]["rule"]


def test_every_figure_is_inline_svg(html: str) -> None:
    names = re.findall(r'<figure id="fig-([a-z-]+)">\s*<svg class="plot"', html)
    assert names == ["value-distribution", "class-shares", "cv-scores", "confusion", "gains", "reliability",
                     "importance", "backtest"]
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "element ids (clip paths included) must be unique in the page"
    refs = set(re.findall(r'href="#([^"]+)"', html)) | set(re.findall(r"url\(#([^)]+)\)", html))
    assert refs and refs <= set(ids), "every internal reference resolves"


def test_the_report_is_self_contained(html: str) -> None:
    for tag, attrs in tags_of(html):
        assert tag not in ("script", "link", "iframe", "object", "embed", "img"), tag
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "srcset"):
                assert (value or "").startswith(("#", "data:")), (tag, name, value)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", html)
    assert "@import" not in html and "@font-face" not in html
    assert not re.search(r"url\(\s*[\"']?(?!#)", html), "only same-document url(#id) references"


def test_tier_colours_are_defined_once_and_used_in_the_page(html: str) -> None:
    assert list(plotting.TIER_COLORS) == list(TIERS)
    for tier, colour in plotting.TIER_COLORS.items():
        assert f"--tier-{tier.lower()}: {colour};" in html


@pytest.mark.parametrize("name", ["value_distribution", "class_shares"])
def test_plots_use_the_tier_colours(name: str) -> None:
    from matplotlib.colors import to_hex

    handles, labels = PLOTS[name](None).get_legend_handles_labels()
    shown = {lab: to_hex(getattr(h, "patches", [h])[0].get_facecolor()) for h, lab in zip(handles, labels, strict=True)}
    assert shown == {t: c.lower() for t, c in plotting.TIER_COLORS.items()}


def test_print_styles_and_laptop_layout(html: str) -> None:
    assert "@media print" in html
    assert 'name="viewport"' in html
    assert "max-width: 1120px" in html


def test_predictive_report_has_no_snapshot_warning(html: str) -> None:
    assert 'id="snapshot-warning"' not in html


# ----------------------------------------------------------------------------- variants of the run


@pytest.fixture
def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    (target / "report.html").unlink(missing_ok=True)
    return target


def _edit_json(path: Path, edit) -> None:
    """Edit a file of a run, and record its new SHA-256 as training would (the hashes have tests of their own)."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    reseal(path.parent)


def test_hostile_values_are_shown_as_text(copy_of: Path) -> None:
    preds = pd.read_csv(copy_of / "test_predictions.csv", dtype={"customer_id": str})
    preds.loc[0, "customer_id"] = HOSTILE_ID
    preds.to_csv(copy_of / "test_predictions.csv", index=False)
    reseal(copy_of)

    def edit_metrics(m: dict) -> None:
        m["examples"][0]["customer_id"] = HOSTILE_ID
        m["examples"][1]["customer_id"] = LONG
        m["examples"][0]["reasons"][0]["feature"] = HOSTILE_TAG
        m["examples"][0]["reasons"][1]["value"] = NON_ASCII
        m["importance"][0]["feature"] = HOSTILE_ID
        m["importance"][1]["feature"] = MATH
        m["importance"][2]["feature"] = LONG
        m["cv"][0]["model"] = QUOTES
        m["leakage_audit"]["undated_features"].append(HOSTILE_TAG)
        m["warnings"].append({"severity": "warning", "table": QUOTES, "column": HOSTILE_TAG,
                              "message": f"{HOSTILE_ID} {NON_ASCII} {LONG}", "fix": QUOTES, "count": 3})

    _edit_json(copy_of / "metrics.json", edit_metrics)
    _edit_json(copy_of / "metadata.json", lambda m: m.update(command=f"clvtier train {HOSTILE_ID} {NON_ASCII}"))

    html = report.write_report(copy_of).read_text(encoding="utf-8")

    assert HOSTILE_ID not in html and "<img" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert NON_ASCII in html and LONG in html
    for tag, attrs in tags_of(html):
        assert tag not in ("script", "img", "b"), tag
        assert not [name for name, _ in attrs if name.startswith("on")], (tag, attrs)
    text = text_of(html)
    assert f"Customer {HOSTILE_ID}" in text  # shown literally, as text
    assert QUOTES in text and f"clvtier train {HOSTILE_ID} {NON_ASCII}" in text
    assert MATH in text  # '$' is text in the table, and did not break matplotlib's mathtext


def test_snapshot_mode_warns_at_the_top_and_in_the_summary(copy_of: Path) -> None:
    def to_snapshot(m: dict) -> None:
        m.update(mode="snapshot", describes_past_only=True, target="total_spend", horizon_days=None, backtest=[])
        m["leakage_audit"]["note"] = "Snapshot mode: the label is computed from the same spend."

    _edit_json(copy_of / "metrics.json", to_snapshot)
    html = report.render_report(copy_of)
    banner = html.index('id="snapshot-warning"')
    assert banner < html.index('<section id="summary">')
    assert "these numbers describe the past, they do not predict" in html[banner:banner + 400]
    summary = re.search(r'<section id="summary">(.*?)</section>', html, flags=re.S).group(1)
    assert "Snapshot mode: these numbers describe the past" in text_of(summary)
    assert "of total spend" in text_of(summary)
    stability = re.search(r'<section id="stability">(.*?)</section>', html, flags=re.S).group(1)
    assert "snapshot mode has neither" in stability and "<svg" not in stability


def reason_values(html: str) -> list[tuple[str, str]]:
    """(feature, shown value) of every reason in the worked examples."""
    rows = re.findall(r'<tr><td class="mono">(.*?)</td><td class="num">(.*?)</td>', html, flags=re.S)
    return [(text_of(f).replace(" ", ""), text_of(v).strip()) for f, v in rows]


def test_a_feature_group_shows_its_members_values(copy_of: Path) -> None:
    members = {"btyd_frequency": 3.0, "btyd_recency": 120.0, "btyd_T": 400.0, "btyd_monetary": 55.2}

    def edit(m: dict) -> None:
        m["examples"][0]["reasons"][0] = {"feature": "purchase_history_rfm", "effect": 0.2, "value": members}
        m["examples"][0]["reasons"][1] = {"feature": "days_since_last_purchase", "effect": 0.1, "value": None}
        m["examples"][1]["reasons"][0] = {"feature": "purchase_history_rfm", "effect": 0.2, "value": None}

    _edit_json(copy_of / "metrics.json", edit)
    shown = reason_values(report.render_report(copy_of))
    assert ("purchase_history_rfm", "frequency 3, recency 120 d, T 400 d, monetary 55.20") in shown
    assert ("days_since_last_purchase", "missing") in shown  # a real feature without a value
    # A run that did not store the members' values names them rather than calling the group missing.
    assert ("purchase_history_rfm", "frequency, recency, T, monetary (values not stored)") in shown
    assert [v for f, v in shown if v == "missing"] == ["missing"]


def test_a_run_without_optional_files_still_renders(copy_of: Path) -> None:
    (copy_of / "values.csv").unlink()
    (copy_of / "test_predictions.csv").unlink()
    reseal(copy_of)  # a run written without them
    _edit_json(copy_of / "metrics.json", lambda m: m.update(backtest=[], examples=[], importance=[]))
    text = text_of(report.render_report(copy_of))
    assert "no test predictions" in text and "no feature importance" in text


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a clvtier run directory"):
        report.write_report(tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        report.write_report(tmp_path / "missing")


def test_cli_report_command(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clvtier.cli import app

    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    (target / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(target)])
    assert result.exit_code == 0, result.output
    assert (target / "report.html").is_file()


# ----------------------------------------------------------------------------- the files of the run


def test_the_run_records_the_sha256_of_every_file_it_wrote(run_dir: Path) -> None:
    import hashlib

    meta = json.loads((run_dir / "metadata.json").read_text())
    assert sorted(meta["files"]) == ["cv.csv", "metrics.json", "test_predictions.csv", "values.csv"]
    for name, digest in meta["files"].items():
        assert hashlib.sha256((run_dir / name).read_bytes()).hexdigest() == digest, name


def test_the_metrics_of_another_run_are_refused(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clvtier.cli import app

    target = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (target / "report.html").unlink(missing_ok=True)
    metrics = json.loads((target / "metrics.json").read_text())
    metrics.update(chosen="random_forest", mode="snapshot", describes_past_only=True)
    (target / "metrics.json").write_text(json.dumps(metrics, indent=2))
    result = CliRunner().invoke(app, ["report", str(target)])
    assert result.exit_code == EXIT_BAD_MODEL, result.output
    text = " ".join(result.output.split())
    assert "metrics.json changed after training (its SHA-256 does not match metadata.json)" in text
    assert "Fix: Use the files of the run directory exactly as 'clvtier train' wrote them" in text
    assert not (target / "report.html").exists()


@pytest.mark.parametrize("name", ["test_predictions.csv", "values.csv"])
def test_a_table_changed_after_training_is_refused(copy_of: Path, name: str) -> None:
    path = copy_of / name
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))  # a row fewer
    with pytest.raises(ModelError, match=rf"{name} changed after training"):
        report.render_report(copy_of)


def test_a_missing_file_of_the_run_is_refused(copy_of: Path) -> None:
    (copy_of / "test_predictions.csv").unlink()
    with pytest.raises(ModelError, match=r"test_predictions\.csv is missing \(metadata\.json lists it as a file "
                                         r"of this run\)"):
        report.render_report(copy_of)


def test_files_written_into_the_run_later_are_not_checked(copy_of: Path) -> None:
    report.write_report(copy_of)
    (copy_of / "scores.csv").write_text("customer_id,tier\n1,High\n")  # e.g. clvtier demo's scores
    assert report.write_report(copy_of).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("metrics.json", b"[]", r"metrics\.json is damaged: it is not a JSON object"),
    ("metrics.json", b'{"chosen": ', r"metrics\.json is not valid JSON"),
    ("metrics.json", b"\xff\xfe{}", r"metrics\.json is not valid JSON"),
    ("test_predictions.csv", b'garbage,"', r"test_predictions\.csv is not a readable CSV file"),
    ("values.csv", b"", r"values\.csv is not a readable CSV file"),
], ids=["json-list", "json-cut", "json-bytes", "csv-quote", "csv-empty"])
def test_a_damaged_file_of_the_run_is_refused_naming_it(copy_of: Path, name: str, content: bytes,
                                                         problem: str) -> None:
    (copy_of / name).write_bytes(content)
    reseal(copy_of)  # as if training had written it so
    with pytest.raises(ModelError, match=problem + r".*Fix: Train the model again"):
        report.render_report(copy_of)


def test_an_unreadable_file_of_the_run_is_refused(copy_of: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "values.csv":  # permission bits do not stop root: fail as for another user
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ModelError, match=r"cannot read .*values\.csv \(permission denied\)\. Fix: Give this user "
                                         "read permission"):
        report.render_report(copy_of)


# ----------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [("revenue_capture_high", 0.6123, "61.2\u00a0%"), ("macro_f1", 0.61234, "0.612"), ("lift_top25", 2.314, "2.31×"),
     ("accuracy", None, "–"), ("spearman", float("nan"), "–")],
    ids=["share", "score", "lift", "none", "nan"],
)
def test_fmt_metric(key: str, value: float | None, shown: str) -> None:
    assert report.fmt_metric(key, value) == shown


# ----------------------------------------------------------------------------- plot functions


def _curve() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return gains_curve(rng.random(50), rng.random(50) * 10)


PLOTS = {
    "value_distribution": lambda ax: plotting.plot_value_distribution(
        np.array([0.0, 0, 3, 40, 500, 6000, -20]), 1.0, 100.0, ax=ax),
    "class_shares": lambda ax: plotting.plot_class_shares(
        {"train": {"Low": 0.25, "Medium": 0.5, "High": 0.25}, "test": {"Low": 0.3, "Medium": 0.4, "High": 0.3}},
        ax=ax),
    "cv_scores": lambda ax: plotting.plot_cv_scores(
        [{"model": "a", "mean": 0.6, "std": 0.02, "folds": [0.58, 0.6, 0.62]},
         {"model": "b", "mean": 0.5, "std": 0.01, "folds": [0.49, 0.5, 0.51]}], chosen="a", ax=ax),
    "confusion": lambda ax: plotting.plot_confusion([[5, 1, 0], [1, 4, 2], [0, 1, 6]], ax=ax),
    "confusion_normalized": lambda ax: plotting.plot_confusion([[5, 1, 0], [0, 0, 0], [0, 1, 6]], normalize=True,
                                                               ax=ax),
    "gains": lambda ax: plotting.plot_gains({"model": _curve()}, ax=ax),
    "reliability": lambda ax: plotting.plot_reliability(
        reliability_curve([0.1, 0.2, 0.7, 0.9], [0, 1, 1, 1], n_bins=5), ax=ax),
    "importance": lambda ax: plotting.plot_importance(
        [{"feature": "f1", "mean": 0.1, "std": 0.01}, {"feature": "f2", "mean": -0.01, "std": 0.02}], ax=ax),
    "backtest": lambda ax: plotting.plot_backtest(["2023-01-01", "2023-04-01"], {"m": [0.6, None], "c": [0.4, 0.5]},
                                                  ylim=(0, 1), ax=ax),
}


@pytest.mark.parametrize("name", list(PLOTS), ids=list(PLOTS))
def test_plot_functions_take_ax_and_return_it(name: str) -> None:
    draw = PLOTS[name]
    own = draw(None)
    assert isinstance(own, Axes) and isinstance(own.get_figure(), Figure)
    ax = Figure().subplots()
    assert draw(ax) is ax
    assert ax.get_xlabel() or ax.get_ylabel() or ax.get_title()


def test_plot_axes_have_units() -> None:
    ax = PLOTS["gains"](None)
    assert "(%)" in ax.get_xlabel() and "(%)" in ax.get_ylabel()
    ax = PLOTS["value_distribution"](None)
    assert "currency units" in ax.get_xlabel() and "count" in ax.get_ylabel()


def test_plotting_does_not_touch_pyplot() -> None:
    import sys

    import matplotlib

    backend = matplotlib.get_backend() if "matplotlib.pyplot" in sys.modules else None
    for draw in PLOTS.values():
        draw(None)
    if backend is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert matplotlib.get_backend() == backend


def test_malicious_label_is_escaped_in_svg() -> None:
    ax = plotting.plot_importance([{"feature": HOSTILE_ID, "mean": 0.1, "std": 0.0},
                                   {"feature": "--><script>alert(3)</script><!--", "mean": 0.05, "std": 0.0}])
    ax.set_title(HOSTILE_TAG)
    svg = str(report._svg(ax, "hostile"))
    assert svg.startswith("<svg ")
    assert "<script" not in svg and "<img" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert all(tag not in ("script", "img") for tag, _ in tags_of(svg))
