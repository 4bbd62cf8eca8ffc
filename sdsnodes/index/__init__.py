"""Where samples come from: index sources (files, directories, wildcards, lists) → one table."""

from sdsnodes.index.lazy import LazyIndexTable
from sdsnodes.index.sources import MEDIA_EXTENSIONS, read_index
from sdsnodes.index.table import IndexTable

__all__ = ["MEDIA_EXTENSIONS", "IndexTable", "LazyIndexTable", "read_index"]
