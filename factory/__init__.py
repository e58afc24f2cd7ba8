"""Synthetic defect-image dataset factory on Ray."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy, so `import factory` stays cheap (no pyarrow/ray until a reader is used)
    if name in ("open_dataset", "read_table", "read_pandas"):
        from factory.storage import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'factory' has no attribute {name!r}")
