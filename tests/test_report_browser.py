"""The report opened in a real browser: headless Debian Chromium driven by Playwright.

Playwright's own browser download is not used: Chromium comes from Debian's
``chromium`` package (``.ci/run`` installs it), started with ``executable_path``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_persist import reseal

from clvtier import report

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDTH = 1280
HOSTILE_ID = "<script>alert(1)</script>"
HOSTILE_ATTR = '"><img src=x onerror="alert(2)">'
LONG = "verylongcustomeridentifier" * 30
NON_ASCII = "Zoë Çelik 顧客 🚀"


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium missing; apt-get install chromium)")


def _make_run(out: Path) -> Path:
    from clvtier.generate import generate
    from clvtier.persist import write_run
    from clvtier.train import TrainConfig, train
    from clvtier.validate import load

    generate(1200, seed=5, out=out / "data")
    cfg = TrainConfig(candidates=("logreg", "naive_bayes"), cv_folds=3, n_boot=50, backtests=1)
    return write_run(train(load(out / "data"), cfg), out / "run", command="clvtier train data --out run")


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _chromium()  # skip before the expensive training when there is no browser
    return _make_run(tmp_path_factory.mktemp("browser"))


def _open(browser, path: Path, screenshot: Path) -> dict:
    """Load a report; return what the page did and measured."""
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    seen: dict = {"console": [], "failed": [], "external": [], "dialogs": [], "page_errors": []}
    page.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
    page.on("requestfailed", lambda r: seen["failed"].append(f"{r.url} {r.failure}"))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else seen["external"].append(r.url))

    def dialog(d) -> None:
        seen["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.goto(path.resolve().as_uri(), wait_until="load")
    seen["scroll_width"] = page.evaluate("document.documentElement.scrollWidth")
    seen["too_wide"] = page.evaluate(f"""() => Array.from(document.querySelectorAll('body *'))
        .filter(e => e.getBoundingClientRect().right > {WIDTH}).slice(0, 5)
        .map(e => `${{e.tagName}}.${{e.className}}: ${{(e.textContent || '').slice(0, 60)}}`)""")
    seen["figures"] = page.evaluate("""() => Array.from(document.querySelectorAll('figure svg, figure img'))
        .map(e => { const r = e.getBoundingClientRect();
                    return {id: e.closest('figure').id, width: r.width, height: r.height}; })""")
    seen["text"] = page.inner_text("body").replace("\u00a0", " ")
    seen["scripts"] = page.evaluate("document.scripts.length")
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    page.close()
    return seen


def _assert_clean(seen: dict) -> None:
    assert seen["console"] == [] and seen["page_errors"] == []
    assert seen["failed"] == [] and seen["external"] == []
    assert seen["dialogs"] == [] and seen["scripts"] == 0
    assert seen["scroll_width"] <= WIDTH, (
        f"horizontal overflow: {seen['scroll_width']} px at {WIDTH} px: {seen['too_wide']}")


def test_report_renders_cleanly_in_chromium(browser, run_dir: Path, tmp_path: Path) -> None:
    path = report.write_report(run_dir)
    seen = _open(browser, path, tmp_path / "report.png")
    _assert_clean(seen)
    assert len(seen["figures"]) == 8
    for fig in seen["figures"]:
        assert fig["width"] > 50 and fig["height"] > 50, fig
        assert fig["width"] <= WIDTH
    metrics = json.loads((run_dir / "metrics.json").read_text())
    head = metrics["headline"]
    for key in ("revenue_capture_high", "high_precision", "high_recall", "accuracy"):
        assert f"{100 * head[key]['value']:.1f} %" in seen["text"], key
    for key in ("macro_f1", "roc_auc_high", "spearman"):
        assert f"{head[key]['value']:.3f}" in seen["text"], key
    assert f"{head['lift_top25']['value']:.2f}×" in seen["text"]
    assert "Customers predicted High hold" in seen["text"]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_hostile_values_stay_text_in_chromium(browser, run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    m = json.loads((target / "metrics.json").read_text())
    m["examples"][0]["customer_id"] = HOSTILE_ID
    m["examples"][1]["customer_id"] = LONG
    m["examples"][2]["customer_id"] = HOSTILE_ATTR
    m["examples"][0]["reasons"][0]["value"] = NON_ASCII
    m["importance"][0]["feature"] = LONG
    m["leakage_audit"]["undated_features"].append(HOSTILE_ATTR)
    m["warnings"].append({"severity": "warning", "table": "customers", "column": HOSTILE_ATTR, "count": 1,
                          "message": f"{HOSTILE_ID} {LONG} {NON_ASCII}", "fix": "It's \"fine\" & done."})
    (target / "metrics.json").write_text(json.dumps(m))
    meta = json.loads((target / "metadata.json").read_text())
    meta["command"] = f"clvtier train {LONG}"
    (target / "metadata.json").write_text(json.dumps(meta))
    reseal(target)  # the edits above as if training had written them

    seen = _open(browser, report.write_report(target), tmp_path / "hostile.png")
    _assert_clean(seen)  # no alert() ran, nothing fetched, long strings wrap instead of widening the page
    assert f"Customer {HOSTILE_ID}" in seen["text"]
    assert HOSTILE_ATTR in seen["text"] and NON_ASCII in seen["text"]
    assert all(f["width"] > 50 and f["height"] > 50 for f in seen["figures"])
