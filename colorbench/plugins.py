"""Plugin modules: third-party components register into the registries when their module is imported.

TEMPORARY (branch `schema`): the minimal API the pyfunc model calls; the `lifecycle` branch owns this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points

from colorbench.errors import ConfigError

PLUGIN_GROUP = "colorbench.plugins"
_loaded: list[str] = []


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import the installed `colorbench.plugins` entry points and each named module; return every plugin module loaded so far."""
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"cannot import plugin module {name!r}: {err}; check the name and that it is on PYTHONPATH") from None
        if name not in _loaded:
            _loaded.append(name)
    return loaded_plugins()


def loaded_plugins() -> list[str]:
    """The plugin modules loaded by name in this process, in order (recorded on runs and models so workers load them too)."""
    return list(_loaded)
