"""MkDocs hook (mkdocs.yml `hooks:`): the generated reference pages and the site's own MathJax.

- `reference/recipe.md` and `reference/cli.md` exist only in the built site: they are written on
  every build from `ling_rl.config.Recipe` (`ling_rl.commands.docs_reference`) and from the typer
  app (`ling_rl.commands.cli_reference`), so they cannot fall behind the code.
- MathJax (typesetting of the `\\( ... \\)` and `\\[ ... \\]` formulas that pymdownx.arithmatex
  leaves in the pages) is served by the site itself, never by a CDN, so the site works on an
  air-gapped cluster: its files come from the pip package `django-static-mathjax` (MathJax 3.2.2,
  Apache-2.0; a plain copy of MathJax's release files, no Django needed), copied under
  `assets/mathjax/` with the same relative layout MathJax expects (its fonts and TeX extensions
  are loaded relative to `tex-chtml.js`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from ling_rl.commands.cli_reference import render as render_cli
from ling_rl.commands.docs_reference import render as render_recipe

RECIPE_REFERENCE = "reference/recipe.md"
CLI_REFERENCE = "reference/cli.md"
MATHJAX_SITE_DIR = "assets/mathjax"
# Relative to MathJax's es5/ folder: the one bundle the pages load, what it loads itself, the licence.
MATHJAX_FILES = ("tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions")


def _mathjax_root() -> Path:
    root = Path(str(resources.files("mathjax"))) / "static" / "mathjax"
    if not (root / "es5" / "tex-chtml.js").is_file():
        raise FileNotFoundError(f"MathJax not found under {root}: install the docs dependencies "
                                "(pip install -e '.[dev]' brings django-static-mathjax)")
    return root


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, RECIPE_REFERENCE, content=render_recipe()))
    files.append(File.generated(config, CLI_REFERENCE, content=render_cli()))
    root = _mathjax_root()
    es5 = root / "es5"
    for entry in MATHJAX_FILES:
        found = es5 / entry
        paths = sorted(p for p in found.rglob("*") if p.is_file()) if found.is_dir() else [found]
        for path in paths:
            rel = path.relative_to(es5).as_posix()
            files.append(File.generated(config, f"{MATHJAX_SITE_DIR}/{rel}", abs_src_path=str(path)))
    files.append(File.generated(config, f"{MATHJAX_SITE_DIR}/LICENSE", abs_src_path=str(root / "LICENSE")))
    return files
