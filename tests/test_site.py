"""``bench report``: the static HTML site (tables as ``bench table``, run pages, no network), in a real browser."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_report import make_store

from harness.reporting.load import load
from harness.reporting.output import OutputError
from harness.reporting.site import build_site, html_tables, site_size
from harness.reporting.tables import ReportError, build_tables, cell_text, gain_text

# --------------------------------------------------------------------------- the site, without a browser


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("runs"), ("supervised/cmunet", "mgcc+ldm/cmunet"))


def _cells(html: str) -> list[dict[str, str]]:
    """Every body cell of the comparison tables with its data attributes and text."""
    pattern = re.compile(r'<td class="num (\w+)[^"]*" data-kind="\w+" data-metric="(\w*)"\s+data-labeled="([\d.]+)"'
                         r'(?: data-mean="([^"]*)" data-std="([^"]*)")?>([^<]*)</td>')  # fmt: skip
    found = []
    for table in re.findall(r"<table class=\"results\".*?</table>", html, re.S):
        for row in re.findall(r'<tr data-method="([^"]*)">(.*?)</tr>', table, re.S):
            for kind, metric, labeled, mean, std, text in pattern.findall(row[1]):
                found.append({"method": row[0], "kind": kind, "metric": metric, "labeled": labeled, "mean": mean,
                              "std": std, "text": text})  # fmt: skip
    return found


def test_site_tables_are_bench_tables_and_every_run_has_a_page(fake_store: Path, tmp_path: Path) -> None:
    index = build_site(fake_store, tmp_path / "site", figures=False, log=lambda _m: None)
    html = index.read_text()
    frame = load(fake_store)
    tables = build_tables(frame, significance=True)
    expected = [row for table in html_tables(tables) for row in table["rows"]]
    cells = _cells(html)
    assert len(cells) == sum(len(r["cells"]) for r in expected) > 0
    for table in tables:  # every metric cell shows bench table's text and carries its exact mean
        for (row, fraction, metric), cell in table.cells.items():
            (shown,) = [
                c
                for c in cells
                if (c["kind"], c["method"], c["metric"], float(c["labeled"])) == ("metric", row, metric, fraction)
            ]
            assert shown["text"] == cell_text(cell, metric) + cell.mark
            assert float(shown["mean"]) == cell.mean
        for (row, fraction), gain in table.gains.items():
            (shown,) = [
                c for c in cells if c["kind"] == "gain" and (c["method"], float(c["labeled"])) == (row, fraction)
            ]
            assert shown["text"] == gain_text(gain, table.comparisons.get((row, fraction, table.gain_metric or "")))
    runs = sorted({Path(d).name for d in frame["run_dir"]})
    links = re.findall(r'<a class="run-link" href="runs/([^"]+)\.html">', html)
    assert sorted(links) == runs
    for name in runs:
        page = (tmp_path / "site" / "runs" / f"{name}.html").read_text()
        assert "fingerprint fp0" in page and "s0" in page  # provenance from run.json
        assert page.count("<tr><td") == len(
            frame[(frame["run_dir"].str.endswith(name)) & (frame["checkpoint"] == "best")]
        )
    # nothing is fetched from elsewhere: no external script, style sheet or image
    for page in [index, *(tmp_path / "site" / "runs").glob("*.html")]:
        text = page.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), page
        assert "<script src" not in text and 'rel="stylesheet"' not in text
    for src in re.findall(r'<img src="([^"]+)"', html):
        assert (tmp_path / "site" / src).is_file()


def test_site_refuses_a_folder_that_is_not_a_report_and_replaces_an_old_report(fake_store: Path, tmp_path: Path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(OutputError, match="is not a segbench report"):
        build_site(fake_store, other, figures=False, significance=False, log=lambda _m: None)
    assert (other / "thesis.tex").read_text() == "keep me"
    site = tmp_path / "site"
    build_site(fake_store, site, figures=False, significance=False, log=lambda _m: None)
    (site / "stale.txt").write_text("from an older report")
    build_site(fake_store, site, figures=False, significance=False, log=lambda _m: None)
    assert not (site / "stale.txt").exists() and (site / "index.html").exists()
    assert not list(tmp_path.glob(".site.*"))  # no temporary folder left behind


def test_site_without_a_reference_row_has_no_tests_unless_asked(tmp_path: Path) -> None:
    store = make_store(tmp_path / "runs", ("mgcc+ldm/cmunet",))
    index = build_site(store, tmp_path / "site", figures=False, log=lambda _m: None)
    assert "Wilcoxon" not in index.read_text() and "mgcc + ldm / cmunet" in index.read_text()
    with pytest.raises(ReportError, match="--significance needs a reference row"):
        build_site(store, tmp_path / "site", figures=False, significance=True, log=lambda _m: None)


# --------------------------------------------------------------------------- in a real headless browser


def _chromium() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _install_chromium() -> str:
    """Debian's chromium and chromedriver through apt-get (as root); returns what went wrong, or ''."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"]
    for attempt in (install, ["apt-get", "update", "-q"], install):
        result = subprocess.run(attempt, capture_output=True, text=True, timeout=1200, env=env)
        if attempt is install and result.returncode == 0:
            return ""
    return result.stderr[-500:]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by selenium; installed when missing (Debian, root), else the test is skipped."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    found = _chromium()
    if found is None:
        why = _install_chromium()
        found = _chromium()
        if found is None:
            pytest.skip(f"no chromium + chromedriver and they could not be installed ({why}); on Debian run "
                        "`apt-get install chromium chromium-driver` to run the browser test")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def real_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Two tiny real phantom runs (supervised and mgcc, 32 px), their report and `bench table --format csv`."""
    from test_e2e import TINY, _bench

    root = tmp_path_factory.mktemp("site")
    runs = root / "runs"
    _bench(["run", *TINY, "--ssl", "supervised,mgcc", "--iterations", "20", "--out", str(runs)], root)
    _bench(["report", str(runs), "--out", str(root / "site")], root)
    table = _bench(["table", str(runs), "--format", "csv", "--significance"], root).stdout
    return runs, root / "site", table


def _severe(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


@pytest.mark.slow
def test_report_in_headless_chromium(real_site, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    runs, site, table_csv = real_site
    files, size = site_size(site)
    print(f"report of 2 runs: {files} files, {size / 2**20:.2f} MiB")
    browser.get((site / "index.html").resolve().as_uri())
    assert browser.title.startswith("segbench report")
    assert not _severe(browser)

    # the comparison table shows bench table's numbers
    records = list(csv.DictReader(io.StringIO(table_csv)))
    assert records
    for record in records:
        if record["metric"] == "missing":  # a run the table leaves out, named under it
            continue
        labeled = float(record["labeled"])
        cells = [
            c for c in browser.find_elements(By.CSS_SELECTOR, f'table.results tr[data-method="{record["method"]}"] td')
            if float(c.get_attribute("data-labeled")) == labeled
        ]  # fmt: skip
        if record["metric"].startswith("delta_"):
            if record["metric"] != "delta_dice":  # the screen shows the gain of Dice; the CSV has every metric's
                continue
            (cell,) = [c for c in cells if c.get_attribute("data-kind") == "gain"]
            gain = SimpleNamespace(
                mean=float(record["mean"]), low=float(record["ci_low"]), high=float(record["ci_high"]),
                train_sd=float(record["train_sd"] or "nan"),
            )  # fmt: skip
            tests = SimpleNamespace(
                image_p_holm=float(record["p_wilcoxon_cluster_means_holm"] or "nan"),
                run_p_holm=float(record["p_sign_flip_runs_holm"] or "nan"),
            )
            assert cell.text == gain_text(gain, tests)
            continue
        (cell,) = [c for c in cells if c.get_attribute("data-kind") == "metric" and
                   c.get_attribute("data-metric") == record["metric"]]  # fmt: skip
        mean = float(record["mean"])
        std = float(record["std"]) if record["std"] else math.nan
        assert float(cell.get_attribute("data-mean")) == pytest.approx(mean, rel=1e-5, abs=1e-9)
        digits = 1 if record["metric"] in ("hd95", "assd") else 3
        text = f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")
        assert cell.text.rstrip("†") == text
        assert (cell.get_attribute("class").split()[-1] == "best") == (record["best"] == "True")

    # a screenshot that is not blank
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(height + 80, 4000))
    shot = tmp_path / "index.png"
    assert browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.02, "the screenshot is (nearly) blank"
    if os.environ.get("SEGBENCH_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["SEGBENCH_SCREENSHOTS"]) / "report-index.png")

    # every figure loaded, every run link resolves to its page
    images = browser.find_elements(By.CSS_SELECTOR, "img")
    assert images and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.run-link")]
    names = sorted(p.parent.name for p in runs.glob("*/run.json"))
    assert sorted(Path(link).stem for link in links) == names
    for link in links:
        browser.get(link)
        name = Path(link).stem
        assert not _severe(browser), name
        assert browser.find_element(By.CSS_SELECTOR, "p.lede code").text == name
        record = json.loads((runs / name / "run.json").read_text())
        provenance = browser.find_element(By.CSS_SELECTOR, "footer.provenance").text
        assert record["data"]["fingerprint"] in provenance and record["data"]["split_hash"] in provenance
        assert record["versions"]["git"]["commit"] in provenance
        shown = browser.find_elements(By.CSS_SELECTOR, "img")
        assert len(shown) >= 2 and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in shown)
        # the per-image table sorts by Dice when its header is clicked
        heads = browser.find_elements(By.CSS_SELECTOR, "table.per-image thead th")
        dice_head = next(h for h in heads if h.text.split()[0] == "dice")
        column = heads.index(dice_head)
        dice_head.click()
        values = [float(r.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-value"))
                  for r in browser.find_elements(By.CSS_SELECTOR, "table.per-image tbody tr")]  # fmt: skip
        assert values == sorted(values) and len(values) == record["data"]["n_test"]
        dice_head.click()
        values = [float(r.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-value"))
                  for r in browser.find_elements(By.CSS_SELECTOR, "table.per-image tbody tr")]  # fmt: skip
        assert values == sorted(values, reverse=True)
        browser.find_element(By.LINK_TEXT, "← all results").click()
        assert browser.current_url.endswith("/index.html")
