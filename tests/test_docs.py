"""The documentation: the MkDocs site builds in strict mode, and its recipe reference is complete.

The reference (docs/reference/recipe.md in the site) is generated from the pydantic schema at build
time; the walk of the schema here is written independently of `ling_rl.commands.docs_reference`, so a key
the generator missed (a new nesting, a list of sections) fails this test.
"""

from __future__ import annotations

import html
import json
import re
import typing
from pathlib import Path

import pytest

from ling_rl.config import Recipe
from ling_rl.schema import Section
from tests.docs_site import built_site

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
def site() -> Path:
    return built_site()


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


# The smallest valid recipe: every key it does not set shows the default the reference must print.
MINIMAL_RECIPE = {"model": {"tiny": "tiny"}, "data": {"train": "data/arith/train.jsonl"},
                  "rewards": [{"name": "exact_answer"}]}
SET_BY_MINIMAL = {"model.tiny", "data.train", "rewards[].name"}


def _value_at(tree: object, path: str) -> tuple[bool, object]:
    """The value at a key path (`[]`: the first list item) of a dumped recipe; (False, None) if none."""
    node = tree
    for part in path.split("."):
        name, is_item = part.removesuffix("[]"), part.endswith("[]")
        if not isinstance(node, dict) or name not in node:
            return False, None
        node = node[name]
        if is_item:
            if not node:
                return False, None
            node = node[0]
    return True, node


def test_every_default_shown_is_the_recipes_default(site: Path) -> None:
    text = html.unescape((site / "reference" / "recipe" / "index.html").read_text())
    shown = {path: re.sub(r"^<code>(.*)</code>$", r"\1", default, flags=re.S) for path, default in re.findall(
        r"<dt><code>([^<]+)</code></dt>\s*<dd>.*? · default: (.*?)(?:<br>|</dd>)", text, flags=re.S)}
    assert len(shown) > 100, f"only {len(shown)} defaults found in the reference"
    recipe = Recipe.model_validate(MINIMAL_RECIPE).model_dump(mode="json")
    compared, wrong = 0, []
    for path, default in shown.items():
        if path in SET_BY_MINIMAL or default.startswith("(section") or default.startswith("(a list of"):
            continue
        found, value = _value_at(recipe, path)
        if not found:
            continue  # an item of a list that is empty by default, or under a null section
        compared += 1
        if default == "<em>required</em>" or json.loads(default) != value:
            wrong.append(f"{path}: shown {default}, Recipe has {json.dumps(value)}")
    assert not wrong, "defaults in the reference differ from the recipe's:\n" + "\n".join(wrong)
    assert compared > 100, compared


# What a user of the site cannot follow: the project's internal tracker, a design note that is not
# part of the project, the tooling of the machines the project was developed on.
INTERNAL = re.compile(r"\bissue \d+|ALGORITHMS\.md|device tool|\$OUT\b|\blent (H100|H200)", re.I)


def test_built_site_cites_nothing_a_user_cannot_see(site: Path) -> None:
    found = {}
    for page in sorted(site.rglob("*.html")):
        text = re.sub(r"<[^>]+>", " ", html.unescape(page.read_text()))
        hits = sorted({m.group(0) for m in INTERNAL.finditer(text)})
        if hits:
            found[page.relative_to(site).as_posix()] = hits
    assert not found, f"internal references in the built site: {found}"


def test_cli_reference_lists_every_command_and_parameter(site: Path) -> None:
    # Read from the typer app's registrations and the callbacks' signatures, not from the click
    # command the generator walks, so a command or option the generator dropped fails here.
    import inspect

    from ling_rl.commands.cli import app

    text = html.unescape((site / "reference" / "cli" / "index.html").read_text())
    missing = []
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        if f"ling-rl {name}" not in text:
            missing.append(f"command {name}")
        for param in inspect.signature(command.callback).parameters:
            if param not in text and f"--{param.replace('_', '-')}" not in text:
                missing.append(f"{name}: {param}")
    assert len(app.registered_commands) >= 9
    assert not missing, f"missing from the command-line reference: {missing}"


def test_api_reference_documents_the_extension_points(site: Path) -> None:
    text = html.unescape((site / "reference" / "api" / "index.html").read_text())
    for name in ("ADVANTAGE_ESTIMATORS", "POLICY_LOSSES", "MISMATCH_CORRECTIONS", "KL_ESTIMATORS",
                 "AdvantageEstimator", "UnitPolicyLoss", "MismatchCorrection", "RewardOutput", "Registry",
                 "EnvironmentConfig", "ParsedTurn", "TOOL_PARSERS", "ToolResult", "EnvironmentView"):
        assert re.search(rf'id="ling_rl\.[a-z_.]+\.{name}"', text), f"{name} has no entry in the API reference"
    # mkdocstrings rendered the docstrings (not just the directive's text).
    assert ":::" not in text
    assert "Environments (agentic RL)" in text
