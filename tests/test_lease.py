"""The version lease (storage/lease.py) on its own, without a pipeline: claim,
resume, restart, give up, and finishing an interrupted publication."""

from __future__ import annotations

import pytest

from factory.storage import PublishedError, Registry
from factory.storage import publish as P
from factory.storage import uri as U
from factory.storage.lease import Finished, LeaseRefused, VersionLease


def _take(reg: Registry, spec_hash: str = "h1", version: int | None = None, **kw) -> VersionLease:
    lease = VersionLease.take(reg, "toy", spec_hash, version, **kw)
    assert isinstance(lease, VersionLease)
    return lease


def test_one_run_holds_a_version_and_resume_takes_it_over(tmp_path):
    reg = Registry(str(tmp_path))
    lease = _take(reg)
    assert (lease.version, lease.fresh, reg.run_state("toy", 1)["spec_hash"]) == (1, True, "h1")
    with pytest.raises(LeaseRefused, match="holds this version .*--resume.*--restart"):
        _take(reg, version=1)
    with pytest.raises(LeaseRefused, match="different spec"):
        _take(reg, "h2", 1, resume=True)
    resumed = _take(reg, resume=True)  # unpinned: the interrupted run of this spec
    assert (resumed.version, resumed.fresh, resumed.state["run_id"]) == (1, False, lease.state["run_id"])


def test_the_plan_is_in_the_lock_before_it_is_used(tmp_path):
    reg = Registry(str(tmp_path))
    lease = _take(reg)
    assert lease.plan(10, 1) == (0, 10) and lease.plan(5, 2) == (10, 15)
    resumed = _take(reg, version=1, resume=True)
    assert (resumed.planned_until, resumed.rounds) == (15, 2)


def test_give_up_keeps_staging_only_when_there_is_something_to_resume(tmp_path):
    reg = Registry(str(tmp_path))
    lease = _take(reg)
    U.write_bytes(U.join(lease.staging, "_shards/s0.json"), b"{}")
    lease.give_up(resumable=True)
    assert reg.staged("toy") == [1]
    lease.give_up(resumable=False)
    assert reg.staged("toy") == [] and not U.list_files(lease.staging)


def test_a_new_lock_clears_what_earlier_holders_left_and_restart_discards(tmp_path):
    reg = Registry(str(tmp_path))
    U.write_bytes(U.join(reg.staging_uri("toy", 1), "_shards/old.json"), b"{}")  # a cleanup cut short: no lock
    U.write_bytes(U.join(reg.version_uri("toy", 1), "parquet/part-00000.parquet"), b"x")  # never committed
    lease = _take(reg, version=1)
    assert U.list_files(lease.staging) == ["_run.json"] and not U.list_files(lease.uri)
    U.write_bytes(U.join(lease.staging, "_shards/s0.json"), b"{}")
    again = _take(reg, "h2", 1, restart=True)
    assert again.fresh and U.list_files(again.staging) == ["_run.json"]


def test_resume_finishes_a_sealed_publication(tmp_path, monkeypatch):
    reg = Registry(str(tmp_path))
    pub = _take(reg, version=1).publication()
    pub.put("a.txt", b"x")
    pub.seal({"count": 0})  # then a crash: nothing moved yet
    done = VersionLease.take(reg, "toy", "h1", 1, resume=True)
    assert isinstance(done, Finished) and not done.committed_before and reg.versions("toy") == [1]
    assert U.read_bytes(U.join(reg.version_uri("toy", 1), "a.txt")) == b"x" and reg.staged("toy", True) == []


@pytest.mark.parametrize("resume", [False, True])
def test_a_crash_between_commit_and_cleanup(tmp_path, monkeypatch, resume):
    """A plain run cleans up, then refuses the published version; `resume` says it is done."""
    reg = Registry(str(tmp_path))
    with monkeypatch.context() as m:
        m.setattr(P, "_clean", lambda slot: None)
        _take(reg, version=1).publication().commit({"count": 0})
    assert reg.staged("toy", published=True) == [1]
    if resume:
        done = VersionLease.take(reg, "toy", "h1", resume=True)
        assert isinstance(done, Finished) and done.committed_before and done.version == 1
    else:
        with pytest.raises(PublishedError, match="already published"):
            _take(reg, version=1)
    assert reg.staged("toy", published=True) == [] and reg.versions("toy") == [1]
