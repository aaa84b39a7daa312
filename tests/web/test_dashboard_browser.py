"""The journey dashboard in headless Chromium (Debian's, driven by Playwright) against the demo world (SQLite):
a marketer opens the dashboard, the Plotly charts render under the console's strict CSP, a filter change
re-renders them with the filtered numbers and lands in the URL, the funnel form and the lake refresh work.
Screenshots go to test-artifacts/console/."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.web.conftest import Demo, log_in, shot

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]


def ready(page: Any, after: int) -> int:
    """Wait until every chart of a refresh newer than `after` is drawn; its generation. Ten analyses run at
    once on the server (the gap report is several funnels): allow a loaded machine a minute."""
    page.wait_for_function(
        "n => (document.body.dataset.dashboard || '').startsWith('ready-') "
        "&& Number(document.body.dataset.dashboard.slice(6)) > n",
        arg=after,
        timeout=90_000,  # fourteen analyses on a shared, busy machine
    )
    return int(page.evaluate("document.body.dataset.dashboard.slice(6)"))


def stage_counts(page: Any) -> list[int]:
    return page.evaluate("Array.from(document.getElementById('chart-stages').data[0].x)")


def test_a_marketer_sees_the_funnel_and_a_filter_change_redraws_it(page: Any, demo: Demo) -> None:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.text} @ {m.location}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    log_in(page, demo, "marketer")
    page.get_by_role("link", name="Dashboard").click()
    gen = ready(page, 0)
    page.locator("#chart-stages svg.main-svg").first.wait_for()  # Plotly drew the stage funnel
    assert page.locator("#chart-cross svg.main-svg").count() >= 1  # and the cross-channel heatmap
    assert page.locator("#chart-funnel svg.main-svg").count() >= 1
    before = stage_counts(page)
    api = page.request.get("/console/dashboard/data/stages").json()
    assert before == [s["count"] for s in api["steps"]] and before[0] > 0
    assert page.locator("[data-kpi=entered]").inner_text() == f"{before[0]:,}"
    assert page.locator("#table-service tbody tr").count() >= 1
    # the gap report lists findings, attribution draws the models side by side
    assert page.locator("#list-gaps li:not(.empty)").count() >= 1
    assert page.locator("#chart-attribution svg.main-svg").count() >= 1
    models = page.evaluate("document.getElementById('chart-attribution').data.map(t => t.name)")
    assert "Markov" in models and "Shapley" in models and "last touch" in models
    # the journey panels: Sankey of channel paths, retention heatmap, golden-path conformance
    for chart in ("#chart-paths", "#chart-retention", "#chart-lifecycle", "#chart-golden"):
        assert page.locator(f"{chart} svg.main-svg").count() >= 1, chart
    assert page.locator("#chart-paths g.sankey").count() == 1
    assert page.locator("#table-golden tbody tr").count() >= 2
    shot(page, "07-dashboard")

    # a filter change re-renders every chart with the filtered numbers, and the URL keeps the filter
    page.locator("#f-channel").select_option(["store"])
    gen = ready(page, gen)
    after = stage_counts(page)
    filtered = page.request.get("/console/dashboard/data/stages?channel=store").json()
    assert after == [s["count"] for s in filtered["steps"]]
    assert after != before
    assert parse_qs(urlsplit(page.url).query)["channel"] == ["store"]
    csv_link = page.locator("a[data-csv=revenue]").get_attribute("href")
    assert "channel=store" in csv_link and "format=csv" in csv_link
    shot(page, "08-dashboard-store-channel")

    # a segment narrows every chart too, and lands in the URL
    segment = page.locator("#f-segment option:not([value=''])").first.get_attribute("value")
    page.locator("#f-segment").select_option(segment)
    gen = ready(page, gen)
    in_segment = page.request.get(f"/console/dashboard/data/stages?channel=store&segment={segment}").json()
    assert stage_counts(page) == [s["count"] for s in in_segment["steps"]]
    assert parse_qs(urlsplit(page.url).query)["segment"] == [segment]
    page.locator("#f-segment").select_option("")
    gen = ready(page, gen)

    # the shared URL opens the same view
    page.goto(page.url)
    gen = ready(page, 0)
    assert stage_counts(page) == after
    assert page.locator("#f-channel option[value=store]").evaluate("o => o.selected") is True

    # a general funnel with a breakdown: one funnel trace per value
    page.get_by_label("Steps (one event per line)").fill("Store Visited\nOrder Completed")
    page.get_by_label("Breakdown", exact=True).select_option("device_type")
    page.get_by_role("button", name="Run funnel").click()
    gen = ready(page, gen)
    traces = page.evaluate("document.getElementById('chart-funnel').data.map(t => t.name)")
    assert len(traces) >= 1 and "all" not in traces

    # refresh the lake: the button posts with the CSRF token and the charts reload
    page.get_by_role("button", name="Refresh the lake").click()
    page.locator("#dash-message", has_text="exported to the lake").wait_for(timeout=60_000)  # after every chart reloads
    ready(page, gen)
    # plotly.js also writes a few `style` attributes, which the console's CSP (style-src 'self') blocks, harmlessly:
    # the charts above are drawn; anything else (a script error, a refused script, a failed request) fails the test
    real = [
        p
        for p in problems
        if not ("Applying inline style violates" in p and "plotly.min.js" in p) and "favicon.ico" not in p
    ]
    assert real == [], "\n".join(real)
