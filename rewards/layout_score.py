"""A deterministic layout score of a rendered page, in [0, 1]: the aesthetics fallback without a judge.

This is a **proxy**: it measures a few checkable properties of good layout, not beauty. A page can
score well and look dull; the measurements resist the crudest hacks (an empty page scores 0, text
piled on text loses on overlap, a 20-colour rainbow loses on palette). Use a vision judge
(`aesthetics` with `judge`) when one is available. Inputs are the measurements taken in the page by
`rewards.browser` (`RenderResult.layout`): visible elements with box, colours and font size.

Components, each in [0, 1], averaged with `weights` (default equal):

- `contrast`: share of text (by characters) whose colour against its effective background meets
  WCAG 2.x contrast: 4.5:1, or 3:1 for large text (>= 24 px, or >= 18.66 px bold).
- `overflow`: 1.0 without horizontal scrolling; falls linearly to 0 as the page gets twice as
  wide as the viewport.
- `overlap`: 1 - share of leaf elements (text, images, controls) that overlap another leaf by more
  than 10% of the smaller box (one containing the other does not count as overlap).
- `alignment`: share of leaf elements whose left edge, centre or right edge lines up (within 2 px)
  with that of another leaf element.
- `whitespace`: balance of the first screen: ink coverage (share of a 40 x 30 grid covered by
  element boxes) near 15-70% scores 1, with linear fall-off outside; times the horizontal balance
  `1 - 2 * |centre of mass - 0.5|`, averaged as `(coverage + balance) / 2`.
- `palette`: distinct colours (text and backgrounds, quantized to 8 levels per channel): 2-6 score
  1, one colour 0.5, and each colour past 6 costs 0.1.

>>> page = {"viewport": {"w": 100, "h": 100}, "scroll": {"w": 100, "h": 100}, "elements": [
...     {"tag": "h1", "x": 10, "y": 10, "w": 80, "h": 20, "text": 5, "color": [0, 0, 0], "bg": [255, 255, 255],
...      "font": 32, "bold": True, "leaf": True, "boxed": False}]}
>>> layout_components(page)["contrast"]
1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

COMPONENTS = ("contrast", "overflow", "overlap", "alignment", "whitespace", "palette")
_GRID_W, _GRID_H = 40, 30


def relative_luminance(rgb: list[float]) -> float:
    """WCAG 2.x relative luminance of an sRGB colour given as 0-255 channels."""
    def channel(c: float) -> float:
        c = c / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(fg: list[float], bg: list[float]) -> float:
    """WCAG contrast ratio, from 1 (same colour) to 21 (black on white).

    >>> round(contrast_ratio([0, 0, 0], [255, 255, 255]), 1)
    21.0
    """
    a, b = relative_luminance(fg), relative_luminance(bg)
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


_NUMBERS = ("x", "y", "w", "h", "text", "font")
_COLOURS = ("color", "bg")


def validate_layout(layout: Any) -> None:
    """Raise ValueError naming the first malformed field of one page's measurements: every number
    finite (`w`, `h`, `text`, `font` and the viewport >= 0), colours three channels in 0-255, flags
    booleans. Scoring trusts nothing it did not check: one page's bad numbers fail that page only."""
    def number(value: Any, where: str, low: float | None = None) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"layout {where} = {value!r}: not a finite number")
        if low is not None and value < low:
            raise ValueError(f"layout {where} = {value!r}: below {low}")

    if not isinstance(layout, Mapping):
        raise ValueError(f"layout is {type(layout).__name__}, not a mapping")
    for box in ("viewport", "scroll"):
        if not isinstance(layout.get(box), Mapping):
            raise ValueError(f"layout {box} missing or not a mapping")
        for k in ("w", "h"):
            number(layout[box].get(k), f"{box}.{k}", 0.0)
    number(layout["viewport"]["w"], "viewport.w", 1.0)
    number(layout["viewport"]["h"], "viewport.h", 1.0)
    elements = layout.get("elements")
    if not isinstance(elements, list):
        raise ValueError("layout elements missing or not a list")
    for i, e in enumerate(elements):
        if not isinstance(e, Mapping):
            raise ValueError(f"layout elements[{i}] is not a mapping")
        for k in _NUMBERS:
            number(e.get(k), f"elements[{i}].{k}", None if k in ("x", "y") else 0.0)
        for k in _COLOURS:
            c = e.get(k)
            if not isinstance(c, list) or len(c) != 3:
                raise ValueError(f"layout elements[{i}].{k} = {c!r}: not three channels")
            for ch in c:
                number(ch, f"elements[{i}].{k}", 0.0)
                if ch > 255:
                    raise ValueError(f"layout elements[{i}].{k} = {c!r}: channel above 255")
        for k in ("bold", "leaf", "boxed"):
            if not isinstance(e.get(k), bool):
                raise ValueError(f"layout elements[{i}].{k} = {e.get(k)!r}: not a boolean")


def layout_components(layout: Mapping[str, Any]) -> dict[str, float]:
    """The six component scores of one page's measurements (all 0.0 for a page with nothing
    visible); raises ValueError (`validate_layout`) on malformed measurements."""
    validate_layout(layout)
    elements = layout.get("elements") or []
    if not elements:
        return {name: 0.0 for name in COMPONENTS}
    vw, vh = float(layout["viewport"]["w"]), float(layout["viewport"]["h"])
    leaves = [e for e in elements if e["leaf"] or e["text"] > 0]
    return {
        "contrast": _contrast(elements),
        "overflow": max(0.0, 1.0 - max(0.0, float(layout["scroll"]["w"]) - vw) / vw),
        "overlap": _overlap(leaves),
        "alignment": _alignment(leaves),
        "whitespace": _whitespace(elements, vw, vh),
        "palette": _palette(elements),
    }


def check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """The layout weights (default 1 each); raises ValueError naming unknown components."""
    weights = dict(weights or {name: 1.0 for name in COMPONENTS})
    unknown = set(weights) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"layout weights: unknown components {sorted(unknown)}; known: {', '.join(COMPONENTS)}")
    return weights


def layout_score(layout: Mapping[str, Any], weights: Mapping[str, float] | None = None) -> float:
    """Weighted mean of `layout_components`; `weights` maps component names to weights (default 1 each)."""
    weights = check_weights(weights)
    components = layout_components(layout)
    total = sum(weights.values())
    return sum(w * components[name] for name, w in weights.items()) / total if total > 0 else 0.0


def _contrast(elements: list[dict[str, Any]]) -> float:
    chars = passed = 0.0
    for e in elements:
        if e["text"] <= 0:
            continue
        large = e["font"] >= 24 or (e["bold"] and e["font"] >= 18.66)
        chars += e["text"]
        if contrast_ratio(e["color"], e["bg"]) >= (3.0 if large else 4.5):
            passed += e["text"]
    return passed / chars if chars else 0.5  # no text (a canvas page): neither good nor bad


def _overlap(leaves: list[dict[str, Any]]) -> float:
    overlapping: set[int] = set()
    for i, a in enumerate(leaves):
        for j in range(i + 1, len(leaves)):
            b = leaves[j]
            ix = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            iy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if ix <= 0 or iy <= 0:
                continue
            inter, smaller = ix * iy, min(a["w"] * a["h"], b["w"] * b["h"])
            if inter >= smaller - 1:  # one box inside the other: nesting, not a collision
                continue
            if inter > 0.1 * smaller:
                overlapping.update((i, j))
    return 1.0 - len(overlapping) / len(leaves) if leaves else 0.0


def _alignment(leaves: list[dict[str, Any]]) -> float:
    if len(leaves) < 2:
        return 1.0 if leaves else 0.0
    edges = [(e["x"], e["x"] + e["w"] / 2, e["x"] + e["w"]) for e in leaves]
    aligned = 0
    for i, (left, centre, right) in enumerate(edges):
        aligned += any(
            abs(left - o[0]) <= 2 or abs(centre - o[1]) <= 2 or abs(right - o[2]) <= 2
            for j, o in enumerate(edges) if j != i
        )
    return aligned / len(leaves)


def _whitespace(elements: list[dict[str, Any]], vw: float, vh: float) -> float:
    covered = [[False] * _GRID_W for _ in range(_GRID_H)]
    for e in elements:
        if not (e["leaf"] or e["boxed"] or e["text"] > 0):
            continue
        x0, x1 = int(max(0.0, e["x"]) / vw * _GRID_W), int(min(vw, e["x"] + e["w"]) / vw * _GRID_W + 0.999)
        y0, y1 = int(max(0.0, e["y"]) / vh * _GRID_H), int(min(vh, e["y"] + e["h"]) / vh * _GRID_H + 0.999)
        for gy in range(y0, min(y1, _GRID_H)):
            for gx in range(x0, min(x1, _GRID_W)):
                covered[gy][gx] = True
    cells = [(gx, gy) for gy in range(_GRID_H) for gx in range(_GRID_W) if covered[gy][gx]]
    if not cells:
        return 0.0
    coverage = len(cells) / (_GRID_W * _GRID_H)
    if coverage < 0.15:
        coverage_score = coverage / 0.15
    elif coverage > 0.7:
        coverage_score = max(0.0, (1.0 - coverage) / 0.3)
    else:
        coverage_score = 1.0
    centre_x = (sum(gx for gx, _ in cells) / len(cells) + 0.5) / _GRID_W
    balance = max(0.0, 1.0 - 2.0 * abs(centre_x - 0.5))
    return (coverage_score + balance) / 2


def _palette(elements: list[dict[str, Any]]) -> float:
    colours = set()
    for e in elements:
        if e["text"] > 0:
            colours.add(tuple(int(c) // 32 for c in e["color"][:3]))
        colours.add(tuple(int(c) // 32 for c in e["bg"][:3]))
    k = len(colours)
    if k <= 1:
        return 0.5
    return 1.0 if k <= 6 else max(0.0, 1.0 - 0.1 * (k - 6))
