"""Every built-in registry, populated by importing the modules that define their entries."""

from __future__ import annotations

from colorbench.backbones import BACKBONES
from colorbench.data import SOURCES
from colorbench.losses import LOSSES
from colorbench.registry import Registry
from colorbench.splitters import SPLITTERS

REGISTRIES: dict[str, Registry] = {"backbones": BACKBONES, "losses": LOSSES, "splitters": SPLITTERS, "data sources": SOURCES}
