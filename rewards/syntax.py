"""`syntax`: the extracted code parses (tree-sitter grammars for HTML, CSS, JavaScript, Python).

tree-sitter always returns a tree; a syntax error shows up as ERROR nodes (unexpected text) and
MISSING nodes (a token it had to invent, e.g. a `)`). HTML's grammar is lenient like browsers are
(an unclosed `<p>` is valid), but it marks a closing tag that matches no open element as
`erroneous_end_tag` (`<div></dv>`): counted as an error too. A block is clean without any. Inside HTML,
the contents of `<script>` and `<style>` elements are parsed with the JS and CSS grammars too
(HTML's own grammar treats them as raw text).

Score per response: the mean over its code blocks of 1.0 for a clean block, else
`0.5 * (1 - error_bytes / block_bytes)` (so any error stays below every clean block, and a mostly
broken block scores near 0); 0.0 without code. `syntax_ok` (all blocks clean, at least one) is the
gate used by `sfa`.

>>> check_code("h1 { color: red; }", "css").clean
True
>>> check_code("def f(:\\n  pass", "python").clean
False
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.codeblocks import LANGUAGES, CodeBlock, extract_blocks

# `<script type=...>` values that are not JavaScript (JSON data, templates): not parsed as JS.
_NON_JS_SCRIPT_TYPES = ("application/json", "application/ld+json", "text/template", "text/x-template", "importmap")


@dataclass(frozen=True)
class SyntaxResult:
    language: str
    errors: int
    """ERROR plus MISSING nodes, embedded script/style included."""
    error_bytes: int
    total_bytes: int

    @property
    def clean(self) -> bool:
        return self.errors == 0

    @property
    def score(self) -> float:
        if self.clean:
            return 1.0
        return 0.5 * max(0.0, 1.0 - self.error_bytes / max(1, self.total_bytes))


@cache
def _parser(language: str):  # noqa: ANN202 - tree_sitter.Parser; the import is deferred
    import tree_sitter

    if language == "html":
        import tree_sitter_html as grammar
    elif language == "css":
        import tree_sitter_css as grammar
    elif language == "js":
        import tree_sitter_javascript as grammar
    elif language == "python":
        import tree_sitter_python as grammar
    else:
        raise ValueError(f"no grammar for {language!r}; known: {', '.join(LANGUAGES)}")
    return tree_sitter.Parser(tree_sitter.Language(grammar.language()))


def check_code(code: str, language: str) -> SyntaxResult:
    """Parse `code` and count its error nodes (and those of embedded `<script>`/`<style>`)."""
    source = code.encode("utf-8")
    tree = _parser(language).parse(source)
    errors, error_bytes = _count_errors(tree.root_node)
    if language == "html":
        bad_end_tags = _find(tree.root_node, "erroneous_end_tag")
        errors += len(bad_end_tags)
        error_bytes += sum(n.end_byte - n.start_byte for n in bad_end_tags)
    if language == "html":
        for embedded, embedded_language in _embedded(tree.root_node, source):
            sub = check_code(embedded, embedded_language)
            errors += sub.errors
            error_bytes += sub.error_bytes
    return SyntaxResult(language, errors, min(error_bytes, len(source)), len(source))


def _count_errors(root) -> tuple[int, int]:  # noqa: ANN001 - tree_sitter.Node
    """ERROR/MISSING nodes below `root`; an ERROR's subtree counts once (its bytes, not its nodes)."""
    if not root.has_error:
        return 0, 0
    errors = error_bytes = 0
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_missing:
            errors += 1
            error_bytes += 1  # zero-width in the source: count it as one byte of damage
        elif node.type == "ERROR":
            errors += 1
            error_bytes += max(1, node.end_byte - node.start_byte)
        elif node.has_error:
            stack.extend(node.children)
    return errors, error_bytes


def _find(root, node_type: str) -> list:  # noqa: ANN001 - tree_sitter.Node
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.type == node_type:
            found.append(node)
        else:
            stack.extend(node.children)
    return found


def _embedded(root, source: bytes) -> list[tuple[str, str]]:  # noqa: ANN001 - tree_sitter.Node
    """(code, language) of every inline `<script>` (JavaScript) and `<style>` element."""
    found = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type in ("script_element", "style_element"):
            start_tag = node.children[0] if node.children else None
            tag_text = source[start_tag.start_byte : start_tag.end_byte].decode("utf-8", "replace").lower() if start_tag else ""
            if node.type == "script_element" and any(t in tag_text for t in _NON_JS_SCRIPT_TYPES):
                continue
            for child in node.children:
                if child.type == "raw_text":
                    text = source[child.start_byte : child.end_byte].decode("utf-8", "replace")
                    found.append((text, "js" if node.type == "script_element" else "css"))
        else:
            stack.extend(node.children)
    return found


def check_blocks(blocks: list[CodeBlock]) -> list[SyntaxResult]:
    return [check_code(b.code, b.language) for b in blocks]


def syntax_score(results: list[SyntaxResult]) -> float:
    """Mean block score; 0.0 without blocks."""
    return sum(r.score for r in results) / len(results) if results else 0.0


def syntax_ok(results: list[SyntaxResult]) -> bool:
    """At least one block and every block clean: the gate of `sfa`."""
    return bool(results) and all(r.clean for r in results)


@reward("syntax")
def syntax(completions: list[str], languages: list[str] | None = None, **columns: object) -> RewardOutput:
    """Parse the code blocks of each completion with tree-sitter.

    Args (recipe `args`):
        languages: only score blocks in these languages (subset of html, css, js, python);
            default all four. A response with no block in them scores 0.0.

    Metrics: `no_code` (share of responses without a code block), `clean` (share whose blocks
    all parse), `errors_per_response` (mean ERROR + MISSING nodes).
    """
    wanted = set(languages or LANGUAGES)
    unknown = wanted - set(LANGUAGES)
    if unknown:
        raise ValueError(f"syntax: unknown languages {sorted(unknown)}; known: {', '.join(LANGUAGES)}")
    scores: list[float | None] = []
    no_code = clean = errors = 0
    for completion in completions:
        results = check_blocks([b for b in extract_blocks(completion) if b.language in wanted])
        scores.append(syntax_score(results))
        no_code += not results
        clean += syntax_ok(results)
        errors += sum(r.errors for r in results)
    n = max(1, len(completions))
    return RewardOutput(scores, {"no_code": no_code / n, "clean": clean / n, "errors_per_response": errors / n})
