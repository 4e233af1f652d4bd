"""Every built-in registry, populated by importing the modules that define their entries."""

from __future__ import annotations

from colorbench.backbones import BACKBONES
from colorbench.data import SOURCES
from colorbench.losses import LOSSES
from colorbench.masks import MASKS
from colorbench.registry import Registry
from colorbench.search_engines import PRUNERS, SAMPLERS
from colorbench.splitters import SPLITTERS

REGISTRIES: dict[str, Registry] = {
    "backbones": BACKBONES, "losses": LOSSES, "masks": MASKS, "splitters": SPLITTERS, "data sources": SOURCES,
    "samplers (search)": SAMPLERS,
    "pruners (search)": PRUNERS,
}
