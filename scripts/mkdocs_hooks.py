"""MkDocs hook (mkdocs.yml `hooks:`): adds the recipe reference, generated from the schema.

The page `reference/recipe.md` exists only in the built site: `ling_rl.commands.docs_reference.render()`
writes it from `ling_rl.config.Recipe` on every build, so it cannot fall behind the code.
"""

from __future__ import annotations

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from ling_rl.commands.docs_reference import render

RECIPE_REFERENCE = "reference/recipe.md"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, RECIPE_REFERENCE, content=render()))
    return files
