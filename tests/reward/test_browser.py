"""Front-end rewards in headless Chromium (Debian chromium + playwright): `function`,
`aesthetics` (layout proxy), `sfa`. A valid page scores on all three; a JS error, a broken tag
or a failed scripted check lowers the expected component; a hung script is cut by the time limit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ling_rl.reward.config import RewardSpec
from ling_rl.reward.pool import RewardPool
from ling_rl.types import Rollout, Sample
from rewards.aesthetics import Aesthetics
from rewards.browser import CHROMIUM, close_browser, get_browser
from rewards.function import Function, render_completion
from rewards.layout_score import layout_components
from rewards.sfa import SyntaxFunctionAesthetics
from rewards.syntax import syntax

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (scripts/setup.sh)")

GOOD = """Here is the page:
```html
<!DOCTYPE html>
<html><head><title>Counter</title>
<style>
body { font-family: sans-serif; margin: 0; padding: 40px; background: #f7f7f7; color: #222; }
main { max-width: 480px; margin: 0 auto; background: #fff; padding: 24px; border: 1px solid #ddd; }
button { padding: 8px 16px; background: #0b5fff; color: #fff; border: 0; }
</style></head>
<body><main><h1>Counter</h1><p id="count">0</p><button id="inc">Increment</button></main>
<script>
let n = 0;
document.getElementById("inc").addEventListener("click", () => { n += 1; document.getElementById("count").textContent = String(n); });
</script></body></html>
```"""
CHECKS = [{"type": "exists", "selector": "#inc"},
          {"type": "click", "selector": "#inc", "target": "#count", "expect": "1"},
          {"type": "click", "selector": "#inc"},
          {"type": "text", "selector": "h1", "expect": "Counter"}]
JS_ERROR = GOOD.replace("n += 1;", "n += 1; missingFunction();")
BROKEN_TAG = GOOD.replace("<h1>Counter</h1>", "<h1>Counter</h1 <p>sub</p>")
FAILED_CHECK = GOOD.replace("<h1>Counter</h1>", "<h1>Clicker</h1>")
UGLY = """```html
<html><body><p style="color:#eee">pale text on white</p><div style="width:2400px;background:#f00;color:#ff0">wide</div>
<p style="position:absolute;top:8px;left:8px;color:#ddd">piled on top</p></body></html>
```"""


@pytest.fixture(autouse=True, scope="module")
def _close_browser_after_module():
    """The in-process Chromium keeps playwright's event loop on the main thread; later tests call
    asyncio.run there."""
    yield
    close_browser()


def test_valid_page_scores_on_all_three() -> None:
    assert syntax([GOOD]).scores == [1.0]
    fn = Function()([GOOD], checks=[CHECKS])
    assert fn.scores == [1.0] and fn.metrics["checks_passed"] == 1.0 and fn.metrics["errors_per_page"] == 0
    assert Aesthetics()([GOOD], checks=[CHECKS]).scores[0] > 0.9
    assert SyntaxFunctionAesthetics()([GOOD], checks=[CHECKS]).scores[0] > 0.95


def test_js_error_lowers_function() -> None:
    result = render_completion(JS_ERROR, CHECKS, 10.0)
    assert result is not None and any("missingFunction" in e for e in result.page_errors)
    assert [c.passed for c in result.checks] == [True, False, False, True]  # the handler throws first
    assert syntax([JS_ERROR]).scores == [1.0]  # it parses: only function sees it
    assert Function()([JS_ERROR], checks=[CHECKS]).scores == [pytest.approx(0.5 * 2 / 5)]


def test_broken_tag_fails_the_syntax_gate() -> None:
    assert syntax([BROKEN_TAG]).scores[0] < 0.5
    out = SyntaxFunctionAesthetics()([BROKEN_TAG, GOOD], checks=[CHECKS, CHECKS])
    assert out.scores[0] == 0.0 and out.scores[1] > 0.95 and out.metrics["syntax_ok"] == 0.5


def test_failed_check_lowers_function_only() -> None:
    fn = Function()([FAILED_CHECK], checks=[CHECKS])
    assert fn.scores == [pytest.approx(0.5 * 4 / 5)]  # the heading text check fails, nothing else
    assert syntax([FAILED_CHECK]).scores == [1.0]
    sfa = SyntaxFunctionAesthetics()([FAILED_CHECK], checks=[CHECKS]).scores[0]
    assert sfa == pytest.approx(0.2 + 0.4 * 0.4 + 0.4 * Aesthetics()([FAILED_CHECK]).scores[0])


def test_layout_proxy_penalizes_bad_layout() -> None:
    good = Aesthetics()([GOOD]).scores[0]
    bad = Aesthetics()([UGLY]).scores[0]
    assert bad < good - 0.3
    components = layout_components(render_completion(UGLY, None, 10.0).layout)
    assert components["contrast"] == 0.0 and components["overflow"] < 0.1 and components["overlap"] < 1.0
    assert Aesthetics()(["no page here"]).scores == [0.0]


def test_hung_script_is_cut_by_the_page_time_limit() -> None:
    start = time.monotonic()
    out = Function(timeout_s=2.0)(["```html\n<html><body><script>while (true) {}</script></body></html>\n```"],
                                  checks=[CHECKS])
    assert out.scores == [0.0] and out.metrics["timeouts"] == 1.0
    assert time.monotonic() - start < 8.0
    assert get_browser().render("<p>still alive</p>", [{"type": "text", "expect": "still alive"}]).checks[0].passed


def test_malformed_checks_are_an_error() -> None:
    with pytest.raises(ValueError, match="needs a selector"):
        Function()([GOOD], checks=[[{"type": "click"}]])


def test_sfa_in_the_reward_pool(ray_session: None) -> None:
    """In a Ray reward worker: Chromium is launched there, once, and reused for the batch."""
    sample = Sample(id="t", prompt="make a counter", prompt_ids=[1], columns={"checks": CHECKS})
    rollouts = [Rollout(sample=sample, group=0, response_ids=[1], response_text=t, inf_logprobs=[0.0],
                        finish_reason="stop", policy_version=0) for t in (GOOD, BROKEN_TAG, JS_ERROR)]
    with RewardPool([RewardSpec(name="sfa", timeout_s=120)], num_workers=1) as pool:
        scored, metrics = pool.score(rollouts)
    flat = metrics.as_dict()
    assert flat["reward/sfa/failures"] == 0
    good, broken, js_error = (s.breakdown["sfa"] for s in scored)
    assert good > js_error > broken == 0.0
