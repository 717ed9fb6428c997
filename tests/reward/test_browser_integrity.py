"""Front-end rewards against a page that games them (issue 23, items 3 and 4).

The page's JavaScript runs before the reward measures it. A page that replaces the built-ins our
measurement calls (`getComputedStyle`, the `outerHTML` getter, `Math.max`) must score what the
same page scores without the replacement: the reads run in an isolated world. Malformed numbers
fail only their own page. And a vision judge still answers after the browser has rendered (the
judge's requests run on their own loop, not on the thread where playwright's loop runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewards.aesthetics import Aesthetics, AestheticsScorer
from rewards.browser import CHROMIUM, RenderResult, close_browser, get_browser
from rewards.function import Function, render_completion
from rewards.layout_score import layout_components, layout_score
from rewards.sfa import SyntaxFunctionAesthetics
from tests.reward.test_judges import LoopbackServer

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (scripts/setup.sh)")

UNREADABLE = """```html
<!DOCTYPE html>
<html><head><title>Notes</title></head>
<body style="background:#fff;margin:40px">
<h1 style="color:#fafafa">My notes</h1><p style="color:#f4f4f4">white text on a white page</p>
<button id="b" style="color:#fafafa;background:#fff;border:1px solid #eee">Do nothing</button>
%s
</body></html>
```"""
FAKE_STYLE = """<script>
// Report dark backgrounds and white text to whoever measures, whatever the page shows.
const real = window.getComputedStyle;
window.getComputedStyle = (el, p) => new Proxy(real(el, p), {get: (s, k) =>
  k === 'backgroundColor' ? 'rgb(0, 0, 0)' : k === 'color' ? 'rgb(255, 255, 255)' : s[k]});
</script>"""
FAKE_OUTER_HTML = """<script>
// A different answer on every read: "the click changed the DOM".
let reads = 0;
Object.defineProperty(Element.prototype, 'outerHTML', {get() { reads += 1; return '<i>' + reads + '</i>'; }});
</script>"""
BROKEN_MATH = "<script>Math.max = () => 'x'; Math.min = () => 'x';</script>"
CHECKS = [{"type": "exists", "selector": "#b"}, {"type": "click", "selector": "#b"}]


@pytest.fixture(autouse=True, scope="module")
def _close_browser_after_module():
    """Playwright's loop stays on this thread until the browser closes; later tests use asyncio.run."""
    yield
    close_browser()


def _page(script: str) -> str:
    return UNREADABLE % script


def test_patched_get_computed_style_does_not_fake_contrast() -> None:
    honest = render_completion(_page(""), None, 10.0)
    hostile = render_completion(_page(FAKE_STYLE), None, 10.0)
    assert honest is not None and hostile is not None and hostile.layout is not None
    assert layout_components(honest.layout)["contrast"] == 0.0
    assert layout_components(hostile.layout)["contrast"] == 0.0  # was 1.0 measured in the page's world
    assert layout_score(hostile.layout) == pytest.approx(layout_score(honest.layout))


def test_patched_outer_html_does_not_fake_a_click() -> None:
    out = Function()([_page(FAKE_OUTER_HTML)], checks=[CHECKS])
    # exists passes, the click changes nothing, no error: 2 of 3 items at partial credit 0.5.
    assert out.scores == [pytest.approx(0.5 * 2 / 3)]  # was 1.0
    result = render_completion(_page(FAKE_OUTER_HTML), CHECKS, 10.0)
    assert result is not None and result.checks[1].detail == "no DOM change"


def test_broken_math_fails_no_page_and_no_call() -> None:
    honest, hostile = _page(""), _page(BROKEN_MATH)
    looks = Aesthetics()([hostile, honest]).scores
    assert looks[0] == pytest.approx(looks[1]) and looks[0] > 0.0  # the call no longer raises
    sfa = SyntaxFunctionAesthetics()([hostile, honest], checks=[CHECKS, CHECKS]).scores
    assert sfa[0] == pytest.approx(sfa[1])


def test_malformed_numbers_zero_only_their_page() -> None:
    from rewards.layout_score import validate_layout

    good = render_completion(_page(""), None, 10.0)
    assert good is not None and good.layout is not None
    validate_layout(good.layout)
    bad_layouts = [
        {**good.layout, "scroll": {"w": "x", "h": 600}},
        {**good.layout, "elements": [{**good.layout["elements"][0], "font": float("nan")}]},
        {**good.layout, "elements": [{**good.layout["elements"][0], "color": [0, 0, 999]}]},
        {**good.layout, "elements": "everything"},
    ]
    for bad in bad_layouts:
        with pytest.raises(ValueError, match="layout"):
            validate_layout(bad)
    pages = [RenderResult(loaded=True, layout=bad) for bad in bad_layouts] + [good]
    pages.append(RenderResult(loaded=True, layout=None, layout_error="measurement threw: boom"))
    scores, metrics = AestheticsScorer().score(pages)
    assert scores[:4] == [0.0] * 4 and scores[5] == 0.0
    assert scores[4] == pytest.approx(layout_score(good.layout)) and scores[4] > 0.0
    assert metrics["layout_failed"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="unknown components"):
        AestheticsScorer(layout_weights={"beauty": 1.0})


def test_vision_judge_after_a_render() -> None:
    """A judge configured and the browser already running on this thread: every call reaches the
    judge (was: "Cannot run the event loop while another loop is running" from the second call on,
    as from any call after the first render)."""
    server = LoopbackServer("flaky", failures=0, content="Nice and tidy. [[7]]")
    try:
        assert get_browser().render("<p>warm</p>").loaded  # playwright's loop now runs on this thread
        plugin = Aesthetics(judge={"base_url": server.base_url, "model": "m", "timeout_s": 10})
        first = plugin([_page(""), "no page here"])
        assert first.scores == [pytest.approx(0.7), 0.0] and first.metrics["failed"] == 0
        second = plugin([_page("<p style=\"color:#222\">a second, different page</p>")])
        assert second.scores == [pytest.approx(0.7)] and server.requests == 2
    finally:
        server.close()
