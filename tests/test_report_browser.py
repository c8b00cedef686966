"""A real browser opens an atlas report: headless Chromium (Debian's package, installed by `make test`)
driven by Playwright. The head card at `#L<l>H<h>` shows exactly the values of atlas.json, a click
on a heatmap cell opens that cell's card, the page logs no console error and requests nothing but
the file itself."""
import json
import shutil

import pytest

from interp.atlas import AtlasConfig, run_atlas

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make test installs Debian's package)")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def small_atlas(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas")
    config = AtlasConfig(n_texts=3, max_tokens=32, example_tokens=16, sections=("head_types", "sinks"), progress=False)
    body = run_atlas(smollm2, out, config)
    assert json.loads((out / "atlas.json").read_text())["head_atlas"]["profiles"] == body["head_atlas"]["profiles"]
    return out, body


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _open(browser, url):
    page = browser.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_selector("#head-card.open", timeout=20_000) if "#" in url else page.wait_for_load_state("load")
    return page, errors, requests


def _card(page):
    """What the open card shows: its head, {table.metric: (value, rank)} and its label names."""
    rows = page.eval_on_selector_all(
        "#head-card table.scores tr[data-key]",
        "trs => trs.map(tr => [tr.dataset.key, tr.children[2].dataset.value, tr.children[3].dataset.rank])")
    labels = page.eval_on_selector_all("#head-card ul.labels li[data-label]", "lis => lis.map(li => li.dataset.label)")
    head = page.get_attribute("#head-card", "data-head")
    return head, {k: (float(v) if v else None, int(r) if r else None) for k, v, r in rows}, labels


def test_head_card_shows_the_values_of_atlas_json(small_atlas, browser):
    out, _ = small_atlas
    body = json.loads((out / "atlas.json").read_text())
    induction = body["sections"]["head_types"]["heads"]["rows"]
    best = max(induction, key=lambda r: r["induction"])  # the strongest induction head: it has a label
    label = best["label"]
    page, errors, requests = _open(browser, (out / "report.html").as_uri() + f"#{label}")
    head, shown, labels = _card(page)
    profile = body["head_atlas"]["profiles"][label]
    assert head == label
    assert shown == {f"{t}.{m}": (v, r) for t, m, v, r, _ in profile["scores"]}
    assert shown["head_types.heads.induction"][0] == best["induction"], "the card's number is the section's number"
    assert shown["head_types.heads.induction"][1] == 1
    assert labels == [x[0] for x in profile["labels"]] and "induction" in labels
    assert page.locator("#head-card .pattern").count() == len(body["head_atlas"]["examples"]["texts"]) == 3
    assert errors == []
    assert requests == [(out / "report.html").as_uri()], "the report must work offline: no request but the file"
    page.close()


def test_clicking_a_heatmap_cell_opens_that_heads_card(small_atlas, browser):
    out, body = small_atlas
    page, errors, requests = _open(browser, (out / "report.html").as_uri())
    assert not page.locator("#head-card.open").count()
    heatmap = page.locator("#per-head-output-norms .js-plotly-plot").first
    heatmap.scroll_into_view_if_needed()
    drag = heatmap.locator(".nsewdrag").first
    box = drag.bounding_box()
    n_layers, n_heads = body["card"]["n_layers"], body["card"]["n_heads"]
    layer, head = 2, n_heads - 1  # the centre of the cell: y rows top to bottom, x columns left to right
    x, y = box["x"] + (head + 0.5) * box["width"] / n_heads, box["y"] + (layer + 0.5) * box["height"] / n_layers
    page.mouse.move(x, y)  # plotly picks the clicked point from its hover state
    page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
    page.mouse.click(x, y)
    page.wait_for_selector("#head-card.open", timeout=10_000)
    assert page.evaluate("location.hash") == f"#L{layer}H{head}"
    assert _card(page)[0] == f"L{layer}H{head}"
    assert errors == [] and requests == [(out / "report.html").as_uri()]
    page.close()


def test_report_stays_small(small_atlas):
    out, _ = small_atlas
    assert (out / "report.html").stat().st_size < 10e6
