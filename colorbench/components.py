"""The component registries, populated by importing the modules that define their entries (`colorbench list` adds the search's
samplers and pruners and the executors)."""

from __future__ import annotations

from colorbench.backbones import BACKBONES
from colorbench.data import SOURCES
from colorbench.losses import LOSSES
from colorbench.masks import MASKS
from colorbench.registry import Registry
from colorbench.splitters import SPLITTERS

REGISTRIES: dict[str, Registry] = {
    "backbones": BACKBONES, "losses": LOSSES, "masks": MASKS, "splitters": SPLITTERS, "data sources": SOURCES,
}
