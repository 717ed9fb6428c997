"""Finding a user's object by the name a recipe gives it: `path/to/file.py:name` (relative to the
working directory) or a dotted path `pkg.module:name` / `pkg.module.name`. Reward plugins, tools
and environment factories are named this way."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


class PluginLoadError(ValueError):
    """A name that does not lead to an object; the message names what was asked for (`what`)."""


class NoSuchModule(PluginLoadError):
    """The dotted path's module does not exist (as opposed to existing and failing to import):
    the asker may add what else the name could have been."""


def is_path_name(name: str) -> bool:
    """Whether `name` has the form of a file or dotted path (not a registered short name)."""
    path, sep, _ = name.rpartition(":")
    return bool(sep and path) or "." in name


def load_object(name: str, what: str) -> tuple[Any, str]:
    """The object `name` refers to and how it was found (`file` or `dotted path`); `what` names the
    asker in errors, e.g. "reward plugin 'x'" or "environment.tools[0] 'x'"."""
    path, sep, attr = name.rpartition(":")
    if sep and path.endswith(".py"):
        return getattr_path(load_file(Path(path), what), attr, what), "file"
    if sep or "." in name:
        module_name, attr = (path, attr) if sep else name.rsplit(".", 1)
        return getattr_path(import_module(module_name, what), attr, what), "dotted path"
    raise PluginLoadError(f"{what}: not a file path `path/to/file.py:name` or a dotted path `pkg.module:name`")


def import_module(module_name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise NoSuchModule(f"{what}: no module {module_name!r}") from None
        raise PluginLoadError(f"{what}: importing {module_name} failed: {e}") from e
    except Exception as e:
        raise PluginLoadError(f"{what}: importing {module_name} failed: {e!r}") from e


def load_file(path: Path, what: str) -> ModuleType:
    """The module of a `.py` file, executed once per process (a stable module name per file)."""
    path = path.resolve()
    if not path.is_file():
        raise PluginLoadError(f"{what}: file {str(path)!r} not found")
    module_name = f"_ling_rl_file_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None  # always set for a .py file
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise PluginLoadError(f"{what}: executing {path} failed: {e!r}") from e
    return module


def getattr_path(module: ModuleType, attr: str, what: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise PluginLoadError(f"{what}: {module.__name__} has no attribute {attr!r}; callables there: "
                                  f"{', '.join(public) or '(none)'}")
        obj = getattr(obj, part)
    return obj
