"""The project's own exceptions: each carries a one-line message naming the problem and the fix."""


class ColorbenchError(Exception):
    """Base class of every error colorbench reports to the user as one line."""


class ConfigError(ColorbenchError):
    """A grid/search file, an option or a registry name is wrong."""


class DataError(ColorbenchError):
    """Images could not be found or read."""


class DivergedError(ColorbenchError):
    """Training produced a non-finite loss."""


class TrialPruned(ColorbenchError):
    """A search trial was stopped early by the pruner (its runs end KILLED, the Optuna trial PRUNED)."""


class StoreError(ColorbenchError):
    """The tracking store failed in the middle of a grid or search (disk full, server gone, database locked)."""
