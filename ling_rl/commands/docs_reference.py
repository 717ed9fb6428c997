"""The recipe reference (docs/reference/recipe.md of the site), generated from the pydantic schema.

Every key of `ling_rl.config.Recipe` with its type, default, constraints and attribute docstring,
one block per key under a heading per section, nested sections and list items (`rewards[].name`)
included. A default is the value a recipe that leaves the key out gets: read from the section's
default instance as its parent builds it (a parent's `default_factory` may differ from the nested
class's own defaults, e.g. `cluster.reward.num_cpus`). The MkDocs hook
`scripts/mkdocs_hooks.py` renders it at build time, so the reference cannot drift from the code:

    python -m ling_rl.commands.docs_reference > recipe.md
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ling_rl.schema import Section


@dataclass(frozen=True)
class SchemaField:
    """One recipe key: its dotted path (`[]` marks a list item), its pydantic field, and its default
    as a recipe that leaves it out gets it (`REQUIRED` when it has none)."""

    path: str
    field: FieldInfo
    default: Any


REQUIRED = object()
"""The default of a key a recipe must set."""


@dataclass(frozen=True)
class SchemaSection:
    """A block of keys: the path that reaches it (empty for the recipe root) and its class."""

    path: str
    model: type[Section]
    fields: list[SchemaField]


def sections(model: type[Section], path: str = "", instance: Section | None = None) -> Iterator[SchemaSection]:
    """The sections of `model`, depth first, each with its own keys (sub-sections come after).

    `instance` is the section's default as its parent builds it; None where there is none (the
    recipe root, a required section, a list item, a section whose default is null): each key then
    shows its own field default.
    """
    defaults = {name: _field_default(name, info, instance) for name, info in model.model_fields.items()}
    own = [SchemaField(_join(path, name), info, defaults[name]) for name, info in model.model_fields.items()]
    yield SchemaSection(path, model, own)
    for name, info in model.model_fields.items():
        for sub, suffix in _sub_sections(info.annotation):
            value = defaults[name]
            inner = value if not suffix and isinstance(value, sub) else None
            yield from sections(sub, _join(path, name) + suffix, inner)


def all_fields(model: type[Section]) -> list[str]:
    """Every key path of `model`, e.g. `run.steps`, `rewards[].name`, `learner.fp8.scaling`."""
    return [f.path for s in sections(model) for f in s.fields]


def render(model: type[Section] | None = None) -> str:
    """The markdown page: an introduction, then one table per section."""
    if model is None:
        from ling_rl.config import Recipe

        model = Recipe
    lines = [
        "# Recipe reference",
        "",
        "Every key a recipe accepts, generated from the pydantic schema (`ling_rl/config.py` and the",
        "`config.py` of each component) when the site is built, so it always matches the code.",
        "Unknown keys are errors. `[]` marks an item of a list: `rewards[].weight` is the `weight`",
        "of each entry under `rewards:`. *required* keys have no default. Override any key on the",
        "command line with its dotted path (list items by index): `ling-rl check RECIPE rewards.0.weight=2`.",
        "",
    ]
    for section in sections(model):
        if not section.path:
            lines += ["## Sections", "", "| section | holds |", "|---|---|"]
            for f in section.fields:
                found = _sub_sections(f.field.annotation)
                doc = _cell(_doc(found[0][0]) if found else f.field.description or "")
                if found and found[0][1].startswith("[]"):
                    doc = f"A list; each entry: {doc}"
                lines.append(f"| [`{f.path}`](#{_anchor(f.path)}) | {doc} |")
            lines.append("")
            continue
        level = "##" if "." not in section.path else "###"
        lines += [f"{level} `{section.path}` {{#{_anchor(section.path)}}}", "", _doc(section.model), ""]
        for f in section.fields:
            # A definition list: the full key on its own line (never broken mid-word, see
            # docs/stylesheets/extra.css), then type and default, then the description.
            description = " ".join((f.field.description or "").split())
            facts = f"{_type(f)} · default: {_default(f.default)}"
            lines += [f"`{f.path}`", f":   {facts}" + (f"<br>{description}" if description else ""), ""]
    return "\n".join(lines)


# --- helpers -------------------------------------------------------------------------------------


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _anchor(path: str) -> str:
    return path.replace("[]", "").replace(".", "-").replace("_", "-")


def _doc(model: type[Section]) -> str:
    return " ".join((model.__doc__ or "").split())


def _cell(text: str) -> str:
    """One table cell: newlines folded, pipes outside `code` escaped (inside, the table keeps them)."""
    parts = " ".join(text.split()).split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _sub_sections(annotation: Any) -> list[tuple[type[Section], str]]:
    """Sections reachable from a field's type, with the path suffix: `` direct, `[]` list item."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return [(annotation, "")]
    origin = typing.get_origin(annotation)
    out: list[tuple[type[Section], str]] = []
    for arg in typing.get_args(annotation):
        for sub, suffix in _sub_sections(arg):
            out.append((sub, "[]" + suffix if origin in (list, tuple) else suffix))
    return out


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _type(f: SchemaField) -> str:
    found = _sub_sections(f.field.annotation)
    if found:
        suffix = found[0][1]
        kind = "list of sections" if suffix.startswith("[]") else "section"
        return f"[{kind}](#{_anchor(f.path + suffix)})"
    info = f.field
    bounds = []
    for item in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(f"{sign} {value}")
    return f"`{_type_name(info.annotation)}`" + (f" ({', '.join(bounds)})" if bounds else "")


def _field_default(name: str, info: FieldInfo, instance: Section | None) -> Any:
    if instance is not None:
        return getattr(instance, name)
    if info.is_required():
        return REQUIRED
    return info.get_default(call_default_factory=True)


def _default(value: Any) -> str:
    if value is REQUIRED:
        return "*required*"
    if isinstance(value, Section):
        return "(section, below)"
    if isinstance(value, list) and value and all(isinstance(v, Section) for v in value):
        return f"(a list of {len(value)} sections)"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except TypeError:
        text = repr(value)
    return f"`{text}`"


if __name__ == "__main__":
    print(render())
