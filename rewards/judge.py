"""A small async client for LLM judges over any OpenAI-compatible endpoint, and verdict parsing.

Used by `gar`, `rubric` and the vision judge of `aesthetics`. One `JudgeClient` per plugin
instance (so per reward worker) holds:

- a concurrency limit (`max_concurrency` requests in flight, over all concurrent plugin calls);
- a timeout per attempt (`timeout_s`) and retries with exponential backoff
  (`backoff_s * 2**attempt`, up to `max_retries` retries) on timeouts, connection errors, 429 and
  5xx; other 4xx answers (a malformed or rejected request) fail at once;
- an LRU cache of answers by request key (`cache_size` entries), so a pair judged once is not
  judged again (a group re-scored, the same responses in two steps);
- counters (`JudgeStats`) a plugin reports as metrics: requests, attempts, retries, timeouts,
  failed requests, cache hits, parse failures.

Judge settings come from a recipe's `args.judge` mapping:

    judge:
      base_url: http://127.0.0.1:8000/v1   # the OpenAI-compatible root (ends before /chat/...)
      model: my-judge                      # optional: default the first of GET /models
      api_key_env: OPENAI_API_KEY          # optional: the variable holding the key
      timeout_s: 30                        # per attempt
      max_retries: 2
      backoff_s: 0.5
      max_concurrency: 8
      max_tokens: 256
      temperature: 0.0

Requests go to `POST {base_url}/chat/completions` (the judge's chat template formats them).

When the reward workers start, the judge plugins call `JudgeClient.check_endpoint()` (their
`startup_check`): `GET {base_url}/models` must answer within `CHECK_TIMEOUT_S` (and list `model`
when one is set), else the run stops at once with one line naming the endpoint and how to start a
judge, instead of training on error values.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Any

import httpx


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 30.0
    max_retries: int = 2
    backoff_s: float = 0.5
    max_concurrency: int = 8
    max_tokens: int = 256
    temperature: float = 0.0
    cache_size: int = 10_000

    @classmethod
    def from_args(cls, args: JudgeConfig | dict[str, Any]) -> JudgeConfig:
        """Build from a recipe mapping; an unknown key is an error naming the known ones."""
        if isinstance(args, JudgeConfig):
            return args
        known = {f.name for f in fields(cls)}
        unknown = set(args) - known
        if unknown:
            raise ValueError(f"judge: unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}")
        if "base_url" not in args:
            raise ValueError("judge: base_url is required (e.g. http://127.0.0.1:8000/v1)")
        return cls(**args)


class JudgeUnavailable(RuntimeError):
    """Every judge request of a plugin call failed (the pool skips the responses unless `error_value` is set), or the endpoint
    did not answer the start-up check."""


CHECK_TIMEOUT_S = 10.0
"""Time limit of the start-up `GET {base_url}/models` (a local server answers in milliseconds)."""

START_A_JUDGE = "python -m vllm.entrypoints.openai.api_server --model DIR --trust-remote-code --host 127.0.0.1 --port N"
"""How to start a judge (an OpenAI-compatible server on http://127.0.0.1:N/v1), for error messages."""


@dataclass
class JudgeStats:
    """Counters of one plugin call (or of a client's lifetime)."""

    requests: int = 0
    """Judge answers asked for (cache hits included)."""
    attempts: int = 0
    """HTTP requests sent (retries included, cache hits excluded)."""
    retries: int = 0
    timeouts: int = 0
    """Attempts that hit `timeout_s`."""
    failed: int = 0
    """Requests with no answer after all retries (or a non-retryable error)."""
    cache_hits: int = 0
    parse_failures: int = 0
    """Answers from which no verdict or score could be parsed (counted by the plugin)."""
    last_error: str = ""

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if k != "last_error"}


class JudgeClient:
    """Async chat-completions client with a concurrency limit, retries, timeouts and a cache."""

    def __init__(self, config: JudgeConfig | dict[str, Any]) -> None:
        self.config = JudgeConfig.from_args(config)
        self.total = JudgeStats()
        self._cache: OrderedDict[str, str] = OrderedDict()
        # httpx clients and semaphores belong to one event loop; a worker keeps one loop, but a
        # caller running `asyncio.run` per call gets a new loop each time.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._model: str | None = self.config.model

    def _state(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._http is None or self._semaphore is None:
            self._loop = loop
            self._http = httpx.AsyncClient(base_url=self.config.base_url.rstrip("/") + "/", headers=self._headers(),
                                           timeout=self.config.timeout_s)
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        return self._http, self._semaphore

    def check_endpoint(self) -> None:
        """Raise `JudgeUnavailable` (one line) unless `GET {base_url}/models` answers, listing `model` if set."""
        url = self.config.base_url.rstrip("/") + "/models"
        try:
            response = httpx.get(url, headers=self._headers(), timeout=CHECK_TIMEOUT_S)
            response.raise_for_status()
            served = [m["id"] for m in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise JudgeUnavailable(f"no judge answers GET {url} ({reason}); start one with `{START_A_JUDGE}` "
                                   "and point args.judge.base_url at http://127.0.0.1:N/v1") from None
        if self.config.model is not None and self.config.model not in served:
            raise JudgeUnavailable(f"the judge at {url} serves {served}, not args.judge.model={self.config.model!r} "
                                   "(vLLM: --served-model-name sets the name)")

    def _headers(self) -> dict[str, str]:
        if not self.config.api_key_env:
            return {}
        return {"Authorization": f"Bearer {os.environ.get(self.config.api_key_env, '')}"}

    async def model(self) -> str:
        """The configured model, else the first one the server lists (looked up once)."""
        if self._model is None:
            http, _ = self._state()
            response = await http.get("models")
            response.raise_for_status()
            self._model = response.json()["data"][0]["id"]
        return self._model

    async def score(self, messages: list[dict[str, Any]], stats: JudgeStats, cache_key: str, max_score: float) -> float | None:
        """`chat`, then the answer's score in [0, 1] (`parse_score`); an unparseable answer is
        counted as a parse failure and gives None."""
        answer = await self.chat(messages, stats, cache_key=cache_key)
        if answer is None:
            return None
        score = parse_score(answer, max_score)
        if score is None:
            stats.parse_failures += 1
            self.total.parse_failures += 1
        return score

    async def chat(self, messages: list[dict[str, Any]], stats: JudgeStats, cache_key: str | None = None) -> str | None:
        """The judge's answer to `messages`, or None when the request failed (counted in `stats`).

        `cache_key`: identifies the request for the cache (default: a hash of the messages)."""
        key = cache_key or hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        for s in (stats, self.total):
            s.requests += 1
        if key in self._cache:
            self._cache.move_to_end(key)
            for s in (stats, self.total):
                s.cache_hits += 1
            return self._cache[key]
        answer = await self._post_with_retries(messages, stats)
        if answer is not None:
            self._cache[key] = answer
            if len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return answer

    async def _post_with_retries(self, messages: list[dict[str, Any]], stats: JudgeStats) -> str | None:
        http, semaphore = self._state()
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                for s in (stats, self.total):
                    s.retries += 1
                await asyncio.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            retryable = True
            async with semaphore:
                for s in (stats, self.total):
                    s.attempts += 1
                try:
                    body = {"model": await self.model(), "messages": messages,
                            "max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
                    response = await http.post("chat/completions", json=body, timeout=cfg.timeout_s)
                    if response.status_code == 200:
                        return response.json()["choices"][0]["message"]["content"] or ""
                    error = f"HTTP {response.status_code}: {response.text[:300]}"
                    retryable = response.status_code == 429 or response.status_code >= 500
                except httpx.TimeoutException as e:
                    for s in (stats, self.total):
                        s.timeouts += 1
                    error = f"timeout after {cfg.timeout_s} s ({type(e).__name__})"
                except (httpx.TransportError, httpx.HTTPStatusError, ValueError, KeyError, IndexError, TypeError) as e:
                    error = f"{type(e).__name__}: {e}"
                    retryable = isinstance(e, httpx.TransportError)
            stats.last_error = self.total.last_error = error
            if not retryable:
                break
        for s in (stats, self.total):
            s.failed += 1
        return None


# Arena-Hard style verdict labels, from A's side: A much better, better, tie, worse, much worse.
_VERDICT = re.compile(r"\[\[\s*(A\s*>>\s*B|A\s*>\s*B|A\s*=\s*B|B\s*>\s*A|B\s*>>\s*A|B\s*<\s*A|B\s*<<\s*A)\s*\]\]")
_VERDICT_WORDS = re.compile(r"verdict\s*[:=]?\s*\**\s*(A\s*>>\s*B|A\s*>\s*B|A\s*=\s*B|tie|B\s*>\s*A|B\s*>>\s*A)", re.I)


def parse_verdict(text: str, much_better: float = 2.0, better: float = 1.0) -> float | None:
    """A's score from a pairwise verdict: `[[A>>B]]` = +much_better, `[[A>B]]` = +better,
    `[[A=B]]` = 0, `[[B>A]]` = -better, `[[B>>A]]` = -much_better; the last verdict wins; also
    `Verdict: A>B`. None when the text holds no verdict.

    >>> parse_verdict("B is clearer. [[B>A]]")
    -1.0
    >>> parse_verdict("no idea") is None
    True
    """
    found = _VERDICT.findall(text) or _VERDICT_WORDS.findall(text)
    if not found:
        return None
    v = re.sub(r"\s+", "", found[-1]).upper()
    table = {"A>>B": much_better, "B<<A": much_better, "A>B": better, "B<A": better, "A=B": 0.0, "TIE": 0.0,
             "B>A": -better, "B>>A": -much_better}
    return table[v]


_SCORE_PATTERNS = (
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"(?:score|rating)\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", re.I),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(\d+)"),
)


def parse_score(text: str, max_score: float = 10.0) -> float | None:
    """A score in [0, 1] from a judge's answer: `[[7]]`, `Score: 7`, `Rating: 7/10` or `7/10`
    (last match of the first pattern that matches), divided by `max_score` (or the `/N` given).
    None when no score is found or it is out of range.

    >>> parse_score("Good layout. Score: 8/10")
    0.8
    >>> parse_score("[[11]]") is None
    True
    """
    for pattern in _SCORE_PATTERNS:
        found = pattern.findall(text)
        if not found:
            continue
        last = found[-1]
        value, scale = (last, "") if isinstance(last, str) else (last[0], last[1] if len(last) > 1 else "")
        top = float(scale) if scale else max_score
        score = float(value)
        if top <= 0 or not 0.0 <= score <= top:
            return None
        return score / top
    return None


def truncate(text: str, max_chars: int) -> str:
    """Keep a judge prompt bounded: the head of a long response, marked as cut."""
    return text if len(text) <= max_chars else text[:max_chars] + "\n[... truncated]"
