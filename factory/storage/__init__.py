"""Storage: URIs (file:// and s3://), shard writers and the dataset registry."""

from factory.storage.uri import StorageError, configure_storage

__all__ = ["StorageError", "configure_storage"]
