"""Architecture rules as tests: the layout shows the architecture, and roles meet in the driver.

Cheap AST scans of the package's own imports (no module is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ling_rl"


def _imports(path: Path) -> set[str]:
    """Every `ling_rl...` module a file imports, at any depth (deferred imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ling_rl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ling_rl"):
            found.add(node.module)
    return found


def _package_imports(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(PKG.parent)): _imports(p) for p in (PKG / package).rglob("*.py")}


def test_top_level_holds_at_most_a_dozen_modules() -> None:
    modules = sorted(p.name for p in PKG.glob("*.py"))
    assert len(modules) <= 12, modules


def test_roles_do_not_import_each_other_or_the_driver() -> None:
    """The learner, the engines and the reward workers meet in the driver: none imports another
    role's package, the driver, the commands or the recipe's root schema (`ling_rl.config.Recipe`
    is the driver's)."""
    roles = {"learner": "ling_rl.learner", "rollout": "ling_rl.rollout", "reward": "ling_rl.reward"}
    forbidden_everywhere = ("ling_rl.driver", "ling_rl.commands")
    bad = []
    for role, own in roles.items():
        others = tuple(v for k, v in roles.items() if k != role)
        for path, imports in _package_imports(role).items():
            for mod in imports:
                if mod.startswith(others + forbidden_everywhere):
                    bad.append(f"{path} imports {mod}")
    assert not bad, "\n".join(bad)


def test_weight_sync_protocol_is_its_own_package() -> None:
    """Both sides use `ling_rl.weightsync`; it imports neither the learner nor the driver."""
    bad = [f"{path} imports {mod}" for path, imports in _package_imports("weightsync").items()
           for mod in imports if mod.startswith(("ling_rl.learner", "ling_rl.driver", "ling_rl.commands"))]
    assert not bad, "\n".join(bad)
