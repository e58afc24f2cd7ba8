"""Storage: URIs and the stores behind them (file:// and s3://), shard writers
(sinks), the dataset registry, version leases and readers of published versions."""

from factory.storage.dataset import open_dataset, read_pandas, read_table
from factory.storage.manifest import Manifest
from factory.storage.publish import PublishedError
from factory.storage.registry import DEFAULT_ROOT, DatasetRef, Registry, default_root
from factory.storage.uri import StorageError, configure_storage

__all__ = [
    "DEFAULT_ROOT", "DatasetRef", "Manifest", "PublishedError", "Registry", "StorageError", "configure_storage",
    "default_root", "open_dataset", "read_pandas", "read_table",
]
