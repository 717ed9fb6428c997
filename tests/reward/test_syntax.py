"""`syntax` and code-block extraction: tree-sitter error nodes in HTML (with embedded JS/CSS), CSS,
JavaScript and Python; fences missing, unclosed or untagged."""

from __future__ import annotations

import pytest

from rewards.codeblocks import extract_blocks, page_html
from rewards.syntax import check_code, syntax

PAGE = "<!DOCTYPE html><html><head><style>h1 { color: #222; }</style></head><body><h1>Hi</h1>" \
       "<script>const x = () => 1;</script></body></html>"


def test_extraction_robust_to_fences() -> None:
    assert [b.language for b in extract_blocks(f"```html\n{PAGE}\n```\n```css\np {{}}\n```")] == ["html", "css"]
    bare = extract_blocks(f"Sure! {PAGE} Hope it helps.")
    assert bare[0].code == PAGE and not bare[0].fenced
    unclosed = extract_blocks("```js\nconst a = 1;\nconsole.log(a)")
    assert unclosed[0].language == "js" and not unclosed[0].closed
    assert extract_blocks("```\ndef f(x):\n    return x\n```")[0].language == "python"  # untagged: guessed
    assert extract_blocks("```bash\nls\n```") == []
    assert extract_blocks("just words, no code") == []
    page = page_html("```html\n<html><head></head><body></body></html>\n```\n```css\nb {}\n```\n```js\nlet y;\n```")
    assert page is not None and "<style>\nb {}" in page and "<script>\nlet y;" in page


@pytest.mark.parametrize(("code", "language"), [
    (PAGE, "html"), ("a:hover { color: red; }", "css"), ("function f(a) { return a + 1; }", "js"),
    ("def f(x):\n    return [i for i in x]\n", "python"),
])
def test_clean_code(code: str, language: str) -> None:
    assert check_code(code, language).clean


@pytest.mark.parametrize(("code", "language"), [
    ("<html><body><h1>T</h1 <p>x</p></body></html>", "html"),          # broken tag
    ("<html><body><div></dv></body></html>", "html"),                    # close tag matching nothing
    ("<html><body><script>function f( { }</script></body></html>", "html"),  # embedded JS error
    ("<html><head><style>h1 { color: red; </style></head></html>", "html"),  # embedded CSS error
    ("a { color: red; ", "css"), ("let = ;", "js"), ("def f(:\n  pass", "python"),
])
def test_errors_found(code: str, language: str) -> None:
    result = check_code(code, language)
    assert result.errors > 0 and result.score < 0.5


def test_plugin_scores_and_metrics() -> None:
    out = syntax([f"```html\n{PAGE}\n```", "```html\n<html><body><h1>T</h1 <p>x</p></body></html>\n```", "no code"])
    assert out.scores[0] == 1.0 and 0.0 < out.scores[1] < 0.5 and out.scores[2] == 0.0
    assert out.metrics["no_code"] == pytest.approx(1 / 3) and out.metrics["clean"] == pytest.approx(1 / 3)
    # Restricting languages ignores the others: the python block alone is scored.
    assert syntax(["```python\nx = 1\n```\n```js\nlet = ;\n```"], languages=["python"]).scores == [1.0]
    with pytest.raises(ValueError, match="unknown languages"):
        syntax(["x"], languages=["rust"])
