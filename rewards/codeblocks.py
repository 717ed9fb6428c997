"""Code-block extraction from model responses, robust to missing or unclosed fences.

Front-end answers come as fenced blocks (```html ... ```), as an HTML document with no fence at
all, or cut off by the token budget before the closing fence. `extract_blocks` returns every code
block with a language (html, css, js, python), and `page_html` assembles one renderable page.
(`rewards/answers.py` extracts final answers, not code, so nothing there applies.)

>>> [(b.language, b.code) for b in extract_blocks("Here:\\n```css\\nh1 {color: red}\\n```")]
[('css', 'h1 {color: red}')]
>>> extract_blocks("<!DOCTYPE html><html><body>hi</body></html> done")[0].code
'<!DOCTYPE html><html><body>hi</body></html>'
>>> extract_blocks("```python\\ndef f():\\n    return 1")[0].language   # unclosed fence
'python'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LANGUAGES = ("html", "css", "js", "python")

# Fence info strings seen in the wild, mapped to our four languages.
_ALIASES = {
    "html": "html", "htm": "html", "xhtml": "html", "vue": "html", "svelte": "html",
    "css": "css", "scss": "css",
    "js": "js", "javascript": "js", "jsx": "js", "mjs": "js", "node": "js",
    "python": "python", "py": "python", "python3": "python",
}

# An opening fence at line start: ``` or ~~~ (3+), optional info string. The closing fence is a
# line holding the same fence characters only, or the end of the text (an unclosed block).
_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n", re.MULTILINE)
_HTML_START = re.compile(r"<!doctype\s+html|<html[\s>]", re.IGNORECASE)
_HTML_END = re.compile(r"</html\s*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<(?:div|body|head|button|main|section|p|h[1-6]|ul|table|form|canvas|svg|span|a)[\s>]", re.I)
_PY_HINT = re.compile(r"^\s*(?:def |class |import |from \S+ import |if __name__)", re.MULTILINE)
_JS_HINT = re.compile(r"\b(?:function\s*\w*\s*\(|const |let |=>|document\.|console\.)")
_CSS_HINT = re.compile(r"^\s*[@.#:\w\[\]*>, -]+\{[^{}]*:[^{}]*\}", re.MULTILINE)


@dataclass(frozen=True)
class CodeBlock:
    language: str
    """One of `LANGUAGES`."""
    code: str
    fenced: bool
    """False when found without a fence (a bare HTML document or the whole response)."""
    closed: bool = True
    """False for a fenced block that ran to the end of the text (no closing fence)."""


def extract_blocks(text: str) -> list[CodeBlock]:
    """All code blocks of `text`, in order. Fenced blocks first; without any fence, a bare HTML
    document, else the whole text when it looks like code. Blocks in other languages are dropped."""
    blocks = _fenced_blocks(text)
    if blocks is not None:
        return [b for b in blocks if b.language in LANGUAGES]
    start = _HTML_START.search(text)
    if start:
        end = _HTML_END.search(text, start.end())
        code = text[start.start() : end.end() if end else len(text)]
        return [CodeBlock("html", code.strip(), fenced=False, closed=end is not None)]
    language = guess_language(text)
    return [CodeBlock(language, text.strip(), fenced=False)] if language else []


def guess_language(code: str) -> str | None:
    """The language of an untagged snippet by cheap textual hints, or None for prose."""
    if _HTML_START.search(code) or _HTML_TAG.search(code):
        return "html"
    if _PY_HINT.search(code):
        return "python"
    if _CSS_HINT.search(code) and not _JS_HINT.search(code):
        return "css"
    if _JS_HINT.search(code):
        return "js"
    return None


def page_html(text: str) -> str | None:
    """One HTML page from a response: its (largest) HTML block, with separate CSS and JS blocks
    inlined (answers often give index.html, style.css and script.js); None without HTML."""
    blocks = extract_blocks(text)
    html_blocks = [b for b in blocks if b.language == "html"]
    if not html_blocks:
        return None
    page = max(html_blocks, key=lambda b: len(b.code)).code
    css = "\n".join(b.code for b in blocks if b.language == "css")
    js = "\n".join(b.code for b in blocks if b.language == "js")
    if css:
        page = _insert_before(page, "</head>", f"<style>\n{css}\n</style>\n")
    if js:
        page = _insert_before(page, "</body>", f"<script>\n{js}\n</script>\n")
    return page


def _insert_before(page: str, closing_tag: str, snippet: str) -> str:
    i = page.lower().rfind(closing_tag)
    return page[:i] + snippet + page[i:] if i >= 0 else page + "\n" + snippet


def _fenced_blocks(text: str) -> list[CodeBlock] | None:
    """Fenced blocks, or None when the text has no opening fence at all."""
    blocks: list[CodeBlock] = []
    pos = 0
    found = False
    while True:
        m = _FENCE.search(text, pos)
        if m is None:
            break
        found = True
        fence = m.group("fence")
        close = re.compile(rf"^{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE).search(text, m.end())
        body_end = close.start() if close else len(text)
        code = text[m.end() : body_end].rstrip("\n")
        info = m.group("info").strip().split()
        language = _ALIASES.get(info[0].lower()) if info else guess_language(code)
        if language is not None and code.strip():
            blocks.append(CodeBlock(language, code, fenced=True, closed=close is not None))
        if close is None:
            break
        pos = close.end()
    return blocks if found else None
