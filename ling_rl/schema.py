"""Base class for recipe sections.

Every component owns its config next to its code as a subclass of `Section`; `ling_rl.config`
assembles them into the recipe tree. Sections are strict: an unknown key is an error.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A strict, documented block of a recipe (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
