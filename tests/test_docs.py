"""The documentation: the MkDocs site builds in strict mode, and its recipe reference is complete.

The reference (docs/reference/recipe.md in the site) is generated from the pydantic schema at build
time; the walk of the schema here is written independently of `ling_rl.commands.docs_reference`, so a key
the generator missed (a new nesting, a list of sections) fails this test.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from ling_rl.config import Recipe
from ling_rl.schema import Section

ROOT = Path(__file__).resolve().parents[1]


def _schema_keys(model: type[Section], prefix: str = "") -> list[tuple[str, str | None, bool]]:
    """(path, docstring, is_root_field) of every key; list items as `name[]`."""
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        out.append((path, info.description, not prefix))
        stack = [(info.annotation, "")]
        while stack:
            tp, suffix = stack.pop()
            if isinstance(tp, type) and issubclass(tp, Section):
                out += _schema_keys(tp, path + suffix)
                continue
            origin = typing.get_origin(tp)
            item = "[]" if origin in (list, tuple) else ""
            stack += [(arg, suffix + item) for arg in typing.get_args(tp)]
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_site_builds_strict_with_every_page(site: Path) -> None:
    # Strict mode turns broken links, missing nav pages and pages left out of the nav into errors.
    pages = sorted(p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").rglob("*.md"))
    assert pages, "docs/ has no pages"
    for page in pages:
        built = site / ("index.html" if page.name == "index" else page / "index.html")
        assert built.is_file(), f"docs/{page}.md was not built into {built}"


def test_recipe_reference_lists_every_key(site: Path) -> None:
    text = html.unescape((site / "reference" / "recipe" / "index.html").read_text())
    listed = set(re.findall(r"<code>([^<]+)</code>", text))
    keys = _schema_keys(Recipe)
    assert len(keys) > 100
    missing = [path for path, _, _ in keys if path not in listed]
    assert not missing, f"recipe keys missing from the generated reference: {missing}"


def test_every_recipe_key_has_a_docstring() -> None:
    # Top-level sections are documented by their class docstring; every other key by its own.
    undocumented = [path for path, doc, root in _schema_keys(Recipe) if not root and not (doc or "").strip()]
    assert not undocumented, f"recipe keys without an attribute docstring: {undocumented}"



def test_readme_is_short_and_links_existing_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README links no docs/ page"
    for link in links:
        assert (ROOT / link).is_file(), f"README links {link}, which does not exist"
