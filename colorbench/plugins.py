"""Plugins: modules that register extra components (losses, backbones, executors, ...) when imported.

Installed packages declare them as entry points of group `colorbench.plugins`; `--plugin MODULE` names others. Every entry
point (the CLI, fold workers, search workers, `colorbench.load`) calls `load_plugins`, and every run records the list
(`tracking.TAG_PLUGINS`), so a worker or a served model imports the same ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points

from colorbench.errors import ConfigError

PLUGIN_GROUP = "colorbench.plugins"
_loaded: set[str] = set()


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import the installed `colorbench.plugins` entry points and each module of `modules`; return every plugin module loaded so far
    in this process, sorted."""
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()
        _loaded.add(ep.module)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"cannot import plugin module {name!r}: {err}; check the name and that it is on PYTHONPATH") from None
        _loaded.add(name)
    return loaded_plugins()


def loaded_plugins() -> list[str]:
    """The plugin modules loaded so far in this process, sorted."""
    return sorted(_loaded)
