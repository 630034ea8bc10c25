"""The Experiments page in real Chromium (issue 14): a small finished experiment opened by its URL
renders every view (learning curves with bands, final loss against an axis with the reference
levels, the heatmap, the sortable table); exports have the right columns (CSV) and size (PNG
2560 x 1440, SVG 1280 x 720); a table row opens as a normal run; the main dashboard links here.
"""

from __future__ import annotations

import csv
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from test_audience import CHROMIUM, CHROMIUM_ARGS, TOKEN, Lab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GRID = {"name": "browser grid",
        "base": {"task": "add", "task_args": {"t1": 2, "t2": 4}, "rule": "dni-b", "n": 8,
                 "steps": 400, "test_steps": 100, "seeds": "0-2"},
        "axes": {"rule": ["dni", "dni-b"], "lr": [1e-3, 3e-3]}, "record": {"every": 100}}

TYPED = """name = "typed"
[base]
task = "add"
rule = "dni"
n = 8
steps = 3000
test_steps = 100
seeds = "0-3"
[axes]
lr = [1e-3, 3e-3]
[record]
every = 1000
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    server = Lab(tmp_path_factory.mktemp("xp"))
    yield server
    server.stop()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _download(page: Any, selector: str) -> bytes:
    with page.expect_download(timeout=30_000) as info:
        page.click(selector)
    return Path(info.value.path()).read_bytes()


def _button(view: str, kind: str, fmt: str | None = None) -> str:
    """The selector of an export button (Dash writes dict ids as sorted JSON)."""
    if fmt is None:
        return f'[id=\'{{"type":"{kind}","view":"{view}"}}\']'
    return f'[id=\'{{"fmt":"{fmt}","type":"{kind}","view":"{view}"}}\']'


def test_experiments_page_renders_every_view_and_exports(lab: Lab) -> None:
    exp_id = lab.admin("POST", "/api/experiments", GRID)["id"]
    wait_for(lambda: lab.admin("GET", f"/api/experiments/{exp_id}")["status"] == "finished",
             180, "the experiment to finish", every=0.2)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        ctx = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(f"{lab.base}/?token={TOKEN}")  # sign in (cookie)
        page.wait_for_selector("#experiments-link")
        assert page.get_attribute("#experiments-link", "href") == "/experiments/"
        page.goto(f"{lab.base}/experiments/?id={exp_id}")

        # every view: 4 settings x (band + mean) curves; 2 rules x (band + mean) final lines
        page.wait_for_function("() => document.querySelectorAll('#xp-curves .scatterlayer .trace')"
                               ".length === 8", timeout=60_000)
        page.wait_for_function("() => document.querySelectorAll('#xp-final .scatterlayer .trace')"
                               ".length === 4", timeout=30_000)
        page.wait_for_selector("#xp-heat .hm, #xp-heat .heatmaplayer image", state="attached")
        refs = page.locator("#xp-final .annotation-text").all_text_contents()
        assert any("both (optimum) (0.454)" in t for t in refs), refs  # Add's reference levels are drawn
        page.wait_for_function("() => document.querySelectorAll('#xp-table tbody tr').length === 13")
        status = page.inner_text("#xp-status")
        assert "finished, " in status and "4 members x 3 seeds (100%)" in status
        assert page.get_attribute("#xp-bar-fill", "style").replace(" ", "") == "width:100%;"

        # the table sorts by any column: final_test_loss ascending
        page.click("th[data-dash-column='final_test_loss'] .column-header--sort")
        cells = page.locator("td[data-dash-column='final_test_loss']").all_inner_texts()
        values = [float(c) for c in cells]
        assert values == sorted(values) and len(values) == 12

        # CSV of the final-loss view: one row per (rule, lr), the band's columns
        text = _download(page, _button("final", "xp-csv")).decode()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert list(rows[0]) == ["line", "lr", "mean", "lo", "hi", "n", "nonfinite"]
        assert sorted((r["line"], r["lr"]) for r in rows) == [
            ("rule=dni", "0.001"), ("rule=dni", "0.003"), ("rule=dni-b", "0.001"),
            ("rule=dni-b", "0.003")]
        assert all(r["n"] == "3" for r in rows)
        text = _download(page, _button("table", "xp-csv")).decode()
        assert text.splitlines()[0] == ("member,rule,lr,seed,final_test_loss,train_loss_last,"
                                        "status") and len(text.splitlines()) == 13
        # images at slide resolution
        assert _png_size(_download(page, _button("curves", "xp-img", "png"))) == (2560, 1440)
        svg = _download(page, _button("heat", "xp-img", "svg")).decode()
        assert svg.startswith("<svg") and 'width="1280"' in svg and 'height="720"' in svg

        # a member opens as a normal run
        page.click("td[data-dash-column='open'] >> nth=0")
        page.wait_for_selector("#xp-open-link")
        href = page.get_attribute("#xp-open-link", "href")
        run_id = href.removeprefix("/?run=")
        run = lab.admin("GET", f"/api/runs/{run_id}")
        member = int(page.inner_text("td[data-dash-column='member'] >> nth=0"))
        seed = int(page.inner_text("td[data-dash-column='seed'] >> nth=0"))
        assert run["config"]["seeds"] == [seed] and run["status"] == "ready"
        assert run["config"]["rule"] == ("dni", "dni-b")[member // 2]
        page.screenshot(path=str(Path(lab.log).parent / "experiments.png"), full_page=True)

        # the form: a spec typed in, run; the URL takes its id; live progress to the end
        page.fill("#xp-spec", TYPED)
        page.fill("#xp-seeds", "0-1")
        page.click("#xp-submit")
        page.wait_for_url(lambda url: "?id=" in url and exp_id not in url)
        new_id = page.url.split("?id=")[1]
        info = lab.admin("GET", f"/api/experiments/{new_id}")
        assert info["seeds"] == [0, 1] and info["spec"]["axes"] == {"lr": [0.001, 0.003]}
        # the new experiment's own status: until its first refresh the page still shows the
        # previous one's ("...: finished, ..."), with its curves
        page.wait_for_function("() => document.querySelector('#xp-status').textContent"
                               ".startsWith('typed: finished')", timeout=180_000)
        page.wait_for_function("() => document.querySelectorAll('#xp-curves .scatterlayer "
                               ".trace').length === 4")
        assert page.get_attribute("#xp-bar-fill", "style").replace(" ", "") == "width:100%;"
        assert not [m for m in problems if "Content Security Policy" in m], problems
        browser.close()
