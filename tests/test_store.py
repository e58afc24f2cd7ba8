"""The store interface (storage/store.py): one contract kept by the local store and
the S3 one (moto's server over real HTTP), and `store_for` as the only place that
tells schemes apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from s3_server import s3_bucket, s3_server  # noqa: F401

from factory.storage import uri as U
from factory.storage.s3_store import S3Store
from factory.storage.store import StorageError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["file", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "file":
        return U.to_uri(tmp_path / "root")
    return f"s3://{request.getfixturevalue('s3_bucket')}/root"


def test_every_store_keeps_the_contract(root):
    store = U.store_for(root)
    a, b = U.join(root, "d/a.txt"), U.join(root, "d/e/b.txt")
    assert not store.exists(a) and not store.is_folder(U.join(root, "d")) and store.list_files(root) == []
    store.write_bytes(a, b"one")
    store.write_bytes(b, b"two\nlines\n")
    assert store.read_bytes(a) == b"one"
    assert [x.rstrip(b"\n") for x in store.iter_lines(b)] == [b"two", b"lines"]
    assert store.list_files(root) == ["d/a.txt", "d/e/b.txt"] and store.list_dirs(U.join(root, "d")) == ["e"]
    assert store.is_folder(U.join(root, "d")) and not store.is_folder(U.join(root, "nothing"))
    # the same create again is the same claim (its answer lost in an outage); other bytes lose
    lock = U.join(root, "lock.json")
    assert store.create_exclusive(lock, b"mine") and store.create_exclusive(lock, b"mine")
    assert not store.create_exclusive(lock, b"theirs") and store.read_bytes(lock) == b"mine"
    store.move(a, U.join(root, "moved/a.txt"))
    assert not store.exists(a) and store.read_bytes(U.join(root, "moved/a.txt")) == b"one"
    with store.local_dir(U.join(root, "d")) as folder:
        assert (folder / "e" / "b.txt").read_bytes() == b"two\nlines\n"
    store.delete(lock)
    store.delete(lock)  # already gone: no error
    store.delete_prefix(U.join(root, "d"))
    store.prune(U.join(root, "d"))
    assert store.list_files(root) == ["moved/a.txt"] and store.list_dirs(root) == ["moved"]
    with pytest.raises(StorageError, match="not found"):
        store.read_bytes(U.join(root, "missing"))


def test_store_for_tells_schemes_apart(tmp_path):
    local = U.store_for(str(tmp_path))
    assert U.store_for(f"file://{tmp_path}") is local and not local.remote
    assert isinstance(U.store_for("s3://bkt/x"), S3Store) and U.store_for("s3://bkt/x").remote
    assert U.on_disk(f"file://{tmp_path}/a") == tmp_path / "a" and U.on_disk("s3://bkt/a") is None
    assert U.absolute("s3://bkt/a") == "s3://bkt/a" and U.absolute("rel/x") == str(Path("rel/x").resolve())
    assert (U.workers("s3://bkt/a", 16), U.workers(str(tmp_path), 16)) == (16, 1)
    with pytest.raises(StorageError, match="not a local path"):
        U.local_path("s3://bkt/a")


def test_only_the_store_module_branches_on_the_scheme():
    """`s3://` is tested for only where a store is picked (and where a name is checked
    for being well-formed, core.uri_problem); nothing asks `is_s3` any more."""
    allowed = {"factory/storage/uri.py", "factory/core.py"}
    found = []
    for path in sorted((REPO / "factory").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "startswith" and any(
                    isinstance(a, ast.Constant) and a.value == "s3://" for a in node.args):
                found.append(str(path.relative_to(REPO)))
            if isinstance(node, (ast.Name, ast.Attribute, ast.alias)) and "is_s3" in (
                    getattr(node, "id", None), getattr(node, "attr", None), getattr(node, "name", None)):
                found.append(f"{path.relative_to(REPO)}: is_s3")
    assert set(found) <= allowed, found


def test_storage_publish_does_not_import_the_registry():
    """The state machine knows a version's place (`Slot`), not the registry that names it."""
    tree = ast.parse((REPO / "factory/storage/publish.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "factory.storage.registry" not in imported and "factory.storage.lease" not in imported
