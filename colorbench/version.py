"""colorbench's version, apart from the package's `__init__` (which imports the verbs lazily), so `tracking` can tag runs with it."""

__version__ = "0.1.0"
