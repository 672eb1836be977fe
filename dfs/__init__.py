"""dfs: a compute-storage-separated distributed filesystem."""

__version__ = "0.1.0"
