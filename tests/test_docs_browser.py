"""The built documentation site in a real browser: headless Chromium (Debian's, driven by playwright).

The site (one strict build shared with tests/test_docs.py) is served by `http.server` on 127.0.0.1
and every page is opened: no console error, no page error, no request that leaves the site (the
host-resolver rule makes any other host fail, as on an air-gapped cluster); formulas typeset by the
site's own MathJax; no code block, table or formula wider than its column at 1280 px on the pages
users read most; the search finds a recipe key.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docs_site import built_site

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/lib/chromium/chromium")
# Launch flags that work on this box (see the front-end rewards' rewards/browser.py); the resolver
# rule makes every host but the loopback unreachable, so a CDN asset would fail loudly.
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1"]
PAGE_TIMEOUT_MS = 15_000
WIDTH, HEIGHT = 1280, 900
MATH_PAGES = ("algorithms/", "evo-cot/", "async/")
NO_OVERFLOW_PAGES = ("reference/recipe/", "algorithms/", "getting-started/")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(built_site()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True,
                                      timeout=PAGE_TIMEOUT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _pages() -> list[str]:
    site = built_site()
    return sorted(p.parent.relative_to(site).as_posix() + "/" if p.parent != site else ""
                  for p in site.rglob("index.html") if "assets" not in p.parts)


def _open(page: Any, url: str) -> list[str]:
    """Open `url` and wait for MathJax (where the page has formulas); the problems seen on the way."""
    problems: list[str] = []
    origin = url.split("/", 3)[:3]
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("request", lambda r: problems.append(f"request off the site: {r.url}")
            if r.url.split("/", 3)[:3] != origin and not r.url.startswith(("data:", "blob:")) else None)
    page.goto(url, wait_until="load")
    page.wait_for_function("() => !window.MathJax || (window.MathJax.startup && window.MathJax.startup.promise)")
    page.evaluate("() => window.MathJax && window.MathJax.startup.promise")
    return problems


def test_every_page_loads_without_errors_or_outside_requests(page: Any, base_url: str) -> None:
    pages = _pages()
    assert len(pages) > 25, pages
    problems = {}
    for path in pages:
        tab = page.context.new_page()  # a fresh tab per page: its listeners see that page only
        found = _open(tab, base_url + path)
        tab.close()
        if found:
            problems[path] = found
    assert not problems, problems


@pytest.mark.parametrize("path", MATH_PAGES)
def test_formulas_are_typeset_by_the_sites_mathjax(page: Any, base_url: str, path: str) -> None:
    problems = _open(page, base_url + path)
    assert not problems, problems
    counts = page.evaluate("""() => ({
        formulas: document.querySelectorAll('.arithmatex').length,
        typeset: document.querySelectorAll('.arithmatex mjx-container').length,
        errors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
        raw: Array.from(document.querySelectorAll('.arithmatex')).filter(
            e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
    })""")
    assert counts["formulas"] >= 3, f"{path}: only {counts['formulas']} formulas"
    assert counts["typeset"] == counts["formulas"], f"{path}: not typeset: {counts['raw']}"
    assert counts["errors"] == 0, f"{path}: {counts['errors']} TeX errors"
    # Formulas are math, not code: no code block on the page spells one out in ASCII.
    ascii_math = page.evaluate("""() => Array.from(document.querySelectorAll('pre code')).map(
        e => e.textContent).filter(t => /pi_theta|sum_\\{|mean_\\{/.test(t)).length""")
    assert ascii_math == 0, f"{path}: {ascii_math} code blocks hold ASCII formulas"


@pytest.mark.parametrize("path", NO_OVERFLOW_PAGES)
def test_nothing_overflows_its_column_at_1280px(page: Any, base_url: str, path: str) -> None:
    problems = _open(page, base_url + path)
    assert not problems, problems
    wide = page.evaluate("""() => Array.from(document.querySelectorAll(
            '.md-content pre > code, .md-content .md-typeset__scrollwrap, .md-content div.arithmatex, .md-content dt'))
        .filter(e => e.scrollWidth > e.clientWidth + 1)
        .map(e => `${e.tagName.toLowerCase()} ${e.scrollWidth}>${e.clientWidth}: ${e.textContent.slice(0, 60)}`)""")
    assert not wide, f"{path}: wider than the column at {WIDTH}px: {wide}"
    page_wide = page.evaluate("() => document.documentElement.scrollWidth")
    assert page_wide <= WIDTH, f"{path}: the page scrolls sideways ({page_wide}px)"


def test_search_finds_a_recipe_key(page: Any, base_url: str) -> None:
    problems = _open(page, base_url)
    page.fill("input.md-search__input", "max_staleness")  # at 1280 px the header shows the search box
    result = page.wait_for_selector("li.md-search-result__item a[href*='reference/recipe']")
    assert result is not None
    assert not problems, problems


def test_a_page_links_the_previous_and_next_pages(page: Any, base_url: str) -> None:
    problems = _open(page, base_url + "getting-started/")
    assert not problems, problems
    footer = page.evaluate("""() => ({
        prev: document.querySelector('a.md-footer__link--prev')?.getAttribute('href'),
        next: document.querySelector('a.md-footer__link--next')?.getAttribute('href'),
    })""")
    assert footer == {"prev": "../installation/", "next": "../concepts/"}, footer
