"""Exports in a real headless Chromium against ``python -m app serve`` (issue 12 item 8):
titled PNG / SVG of a panel at 2x or 3x, the slide, the CSV / JSON downloads of ticked runs.

Reuses the server/browser/page fixtures of tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from test_dashboard_browser import _api, _wait_until, browser, page, server

pytestmark = pytest.mark.browser
__all__ = ["browser", "page", "server"]  # fixtures

SIZE_JS = """(gid) => { const gd = document.querySelector('#' + gid + ' .js-plotly-plot');
  return [gd._fullLayout.width, gd._fullLayout.height, (gd.layout.title || {}).text || '',
          gd._context.showSendToCloud, gd._context.showEditInChartStudio,
          gd._context.toImageButtonOptions]; }"""


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (after checking the signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    return struct.unpack(">II", head[16:24])


def _open(page: Any, base: str, query: str) -> None:
    """Load the dashboard at ``query`` and wait until its first callbacks are done (a loaded
    2-core machine can take a while for the first page of a fresh server)."""
    page.goto(f"{base}/{query}")
    page.wait_for_selector("#loss-graph .js-plotly-plot", timeout=120_000)
    page.wait_for_function("() => !!(window.dash_clientside && window.dash_clientside.plab_export)"
                           " && !document.querySelector('[data-dash-is-loading=\"true\"]')",
                           timeout=60_000)


def _finished_run(page: Any, server: str, query: str, count: int = 1) -> list[str]:
    before = {r["id"] for r in _api(server, "/api/runs")["runs"]}
    _open(page, server, query)
    page.click("#btn-play")

    def ours() -> list[dict[str, Any]]:
        return [r for r in _api(server, "/api/runs")["runs"] if r["id"] not in before]

    _wait_until(lambda: sum(r["status"] == "finished" for r in ours()) >= count, 60,
                "finished runs", page=page)
    return sorted(r["id"] for r in ours())


def _download(page: Any, selector: str, tmp_path: Path) -> tuple[str, Path]:
    with page.expect_download(timeout=30_000) as dl:
        page.click(selector)
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(path)
    return dl.value.suggested_filename, path


def test_panel_images_are_titled_named_and_sized_and_the_slide_is_one_png(
        page: Any, server: str, tmp_path: Path) -> None:
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    (rid,) = _finished_run(page, server, "?rule=dni-b&steps=400&n=8&speed=max")
    _wait_until(lambda: page.evaluate(SIZE_JS, "loss-graph")[5]["filename"].endswith(rid), 20,
                "the toolbar named by run", page=page)
    width, height, title, cloud, studio, options = page.evaluate(SIZE_JS, "loss-graph")
    assert cloud is False and options["scale"] == 2 and studio in (False, None)
    name, path = _download(page, "#btn-image", tmp_path)
    assert name == f"plasticity-loss-dni-b-{rid}.png"
    got_w, got_h = png_size(path)
    # at 2x, with room for the one title line (at most 60 px more at 1x)
    assert got_w == 2 * width and 2 * height < got_h <= 2 * (height + 60), (got_w, got_h)
    # the title went on the file only
    assert page.evaluate(SIZE_JS, "loss-graph")[2] == title

    page.click("#export-panel")
    page.locator("#export-bar").get_by_role("option", name="voltage", exact=True).click()
    page.click("#export-format label:has-text('SVG')")
    page.click("#export-scale label:has-text('3x')")
    _wait_until(lambda: page.evaluate(SIZE_JS, "voltage-graph")[5]["scale"] == 3, 10,
                "the toolbar at 3x", page=page)
    width, height = page.evaluate(SIZE_JS, "voltage-graph")[:2]
    name, path = _download(page, "#btn-image", tmp_path)
    assert name == f"plasticity-voltage-dni-b-{rid}.svg"
    root = ElementTree.parse(path).getroot()  # valid XML
    assert root.tag.endswith("svg")
    assert float(root.get("width")) == 3 * width and float(root.get("height")) > 3 * height
    text = " ".join("".join(t.itertext()) for t in root.iter() if t.tag.endswith("text"))
    # the legend (HTML on screen) is Plotly's in the image: its entries name the units
    assert all(f"unit {u}" in text for u in (0, 1, 2)), text[:300]
    setup = _api(server, f"/api/runs/{rid}/export/run.json")["run"]["setup"]
    assert setup.startswith("dni-b · add · n 8 · lr "), setup
    # the setup, wrapped at " · " to the image's width: every part, in order
    parts = setup.split(" · ")
    where = [text.find(part) for part in parts]
    assert -1 not in where and where == sorted(where), (parts, text[-300:])

    # the circuit's colour bars (HTML on screen) are Plotly's in the image, and its drawing
    # (traces) names the synapses
    page.click("#export-panel")
    page.locator("#export-bar").get_by_role("option", name="circuit", exact=True).click()
    name, path = _download(page, "#btn-image", tmp_path)
    assert name == f"plasticity-circuit-dni-b-{rid}.svg"
    root = ElementTree.parse(path).getroot()
    bars = [g for g in root.iter() if "colorbar" in (g.get("class") or "").split()]
    assert len(bars) == 2, [g.get("class") for g in root.iter() if g.get("class")][:40]
    text = " ".join("".join(t.itertext()) for t in root.iter() if t.tag.endswith("text"))
    assert "basal V" in text and "apical U" in text and "apical A" in text, text[:400]

    name, path = _download(page, "#btn-slide", tmp_path)
    assert name == f"plasticity-slide-dni-b-{rid}.png"
    assert png_size(path) == (3840, 2160)
    from app.dashboard.panels import PANELS  # every panel is visible here

    assert page.evaluate("() => window.plab.lastExport.panels") == len(PANELS)
    assert not page.errors, page.errors
    assert not console, console


def test_csv_and_json_of_ticked_runs_download_with_every_scalar(page: Any, server: str,
                                                                tmp_path: Path) -> None:
    ids = _finished_run(page, server, "?rules=dni,dni-b&steps=300&n=8&speed=max&align=1", 2)
    _wait_until(lambda: all(page.query_selector(f"#run-table td:has-text('{rid}')")
                            for rid in ids), 20, "the table rows", page=page)

    def tick(rid: str) -> None:
        for row in page.query_selector_all("#run-table tr"):
            if rid in row.inner_text():
                row.query_selector("input[type=checkbox]").check()

    tick(ids[0])
    name, path = _download(page, "#tbl-csv", tmp_path)
    assert name.endswith(f"-{ids[0]}.csv") and name.startswith("plasticity-dni")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == 300
    for column in ("step", "seed", "phase", "train_loss", "test_loss", "weight_norm_basal",
                   "alignment"):
        assert column in rows[0], list(rows[0])
    name, path = _download(page, "#tbl-json", tmp_path)
    assert name.endswith(f"-{ids[0]}.json")
    doc = json.loads(path.read_text())
    assert set(doc) == {"run", "config", "columns", "rows", "series", "events"}
    assert doc["columns"] == list(rows[0]) and len(doc["rows"]) == 300

    tick(ids[1])  # two ticked: one zip, one file per run
    name, path = _download(page, "#tbl-json", tmp_path)
    assert name == "runs-json.zip"
    with zipfile.ZipFile(path) as zf:
        names = sorted(zf.namelist())
        assert len(names) == 2 and all(n.endswith(".json") for n in names)
        assert sorted(json.loads(zf.read(n))["run"]["id"] for n in names) == ids
    assert "in a zip" in page.inner_text("#table-msg")
    assert not page.errors, page.errors
