"""Storage: URIs (file:// and s3://), shard writers (sinks), the dataset registry
and readers of published versions."""

from factory.storage.dataset import open_dataset, read_pandas, read_table
from factory.storage.publish import PublishedError
from factory.storage.registry import DatasetRef, Registry
from factory.storage.uri import StorageError, configure_storage

__all__ = [
    "DatasetRef", "PublishedError", "Registry", "StorageError", "configure_storage",
    "open_dataset", "read_pandas", "read_table",
]
