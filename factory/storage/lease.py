"""`VersionLease`: a run's hold on one version of a dataset, from its claim to
its publication.

A run first claims its version: it creates the run lock `_run.json` in the
staging prefix conditionally, so of two runs of one version exactly one goes on;
the other stops there, having written nothing. The lock holds how far the plan
went (`plan`). Taking a lease with `resume` continues an interrupted run of the
same spec, or finishes its publication when that was sealed already (`Finished`);
`restart` discards the version's staging first. A run that fails keeps its
staging for `--resume` only when it has something worth resuming (`give_up`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from factory.storage import uri as U
from factory.storage.publish import Publication, finish, is_sealed
from factory.storage.registry import RUN_LOCK, Registry, RunState
from factory.storage.store import StorageError


class LeaseRefused(StorageError):
    """Another run holds the version (running now, or interrupted), or `--resume`
    was asked with a spec other than the interrupted run's."""


@dataclass
class Finished:
    """An interrupted run's sealed publication, finished when its version was taken
    again with `resume`: nothing is left to generate."""

    version: int
    manifest: dict[str, Any]
    committed_before: bool  # the crash came after the commit: only the cleanup was left


class VersionLease:
    """The run lock of `name@version`, held: where the run stages its files, how far
    its plan went, and its publication."""

    def __init__(self, reg: Registry, name: str, version: int, state: RunState, fresh: bool):
        self.reg, self.name, self.version, self.state = reg, name, version, state
        self.fresh = fresh  # this run made the lock (False: it resumes an interrupted run)
        self.uri, self.staging = reg.version_uri(name, version), reg.staging_uri(name, version)

    @classmethod
    def take(cls, reg: Registry, name: str, spec_hash: str, version: int | None = None,
             resume: bool = False, restart: bool = False) -> "VersionLease | Finished":
        """Claim `version` (else, with `resume`, the newest one an interrupted run of
        this spec left, else the next free one) for a run of the spec `spec_hash`."""
        version = version or (resume and interrupted(reg, name, spec_hash)) or reg.next_version(name)
        slot = reg.slot(name, version)
        if reg.is_published(name, version) and is_sealed(slot):
            manifest = finish(slot)  # a crash hit the cleanup after the commit: clean up
            if resume:
                return Finished(version, manifest, committed_before=True)
        reg.refuse_published(name, version)
        if restart:
            reg.discard_staging(name, version)
        lease = cls._claim(reg, name, version, spec_hash, resume)
        if is_sealed(slot):  # a crash hit publish after its plan was sealed: finish it
            return Finished(version, finish(slot), committed_before=False)
        return lease

    @classmethod
    def _claim(cls, reg: Registry, name: str, version: int, spec_hash: str, resume: bool) -> "VersionLease":
        """Creating the lock is atomic, so a second run of the same version stops here
        without writing anything."""
        state: RunState = {"spec_hash": spec_hash, "name": name, "version": version, "planned_until": 0,
                           "rounds": 0, "started_at": time.time(), "run_id": uuid.uuid4().hex}
        if reg.claim(name, version, state):
            lease = cls(reg, name, version, state, fresh=True)
            lease._clear_leftovers()
            return lease
        held = reg.run_state(name, version)
        if held is None:  # the holder finished between our two calls
            reg.refuse_published(name, version)
            return cls._claim(reg, name, version, spec_hash, resume)
        staging = reg.staging_uri(name, version)
        if not resume:
            raise LeaseRefused(
                f"{staging}: another run of {name}@{version} holds this version (running now, or interrupted); "
                "pass --resume to continue an interrupted one, or --restart to discard its staging and start over"
            )
        if held.get("spec_hash") != spec_hash:
            raise LeaseRefused(
                f"{staging}: --resume with a different spec (staged hash {str(held.get('spec_hash'))[:12]}, "
                f"this spec {spec_hash[:12]}); use a new --version, --restart, or the original spec"
            )
        return cls(reg, name, version, held, fresh=False)

    def _clear_leftovers(self) -> None:
        """A new lock's first duty: what an earlier holder left is not this run's."""
        if self.reg.is_published(self.name, self.version):  # a run that published just before us held the lock
            self.reg.discard_staging(self.name, self.version)
            self.reg.refuse_published(self.name, self.version)
        for name in U.list_files(self.staging):  # leftovers without a lock (a cleanup cut short)
            if name != RUN_LOCK:
                U.delete(U.join(self.staging, name))
        # files of an unpublished version (a publish crashed, then --restart): we hold the lock, so no one
        # else can be publishing it, and it has no manifest (checked after taking the lock)
        U.delete_prefix(self.uri)

    @property
    def spec_hash(self) -> str:
        return self.state["spec_hash"]

    @property
    def planned_until(self) -> int:
        return self.state.get("planned_until", 0)

    @property
    def rounds(self) -> int:
        return self.state.get("rounds", 0)

    def plan(self, n: int, rounds: int) -> tuple[int, int]:
        """Extend the plan by `n` indices in round `rounds`, recorded in the lock
        before any is made; returns the new range."""
        start = self.planned_until
        self.state["planned_until"], self.state["rounds"] = start + n, rounds
        self.reg.save_run_state(self.name, self.version, self.state)
        return start, start + n

    def give_up(self, resumable: bool) -> None:
        """A failed run: its staging (lock included) stays for `--resume` when it is
        `resumable`, else it goes, so a run that failed early leaves nothing behind."""
        if not resumable:
            self.reg.discard_staging(self.name, self.version)

    def publication(self) -> Publication:
        """Publish the version from its staging: plan, then `commit` seals and finishes it."""
        return self.reg.begin(self.name, self.version)


def interrupted(reg: Registry, name: str, spec_hash: str) -> int | None:
    """The newest version an interrupted run of this same spec left staging for
    (published already, or not), else None."""
    for version in reversed(reg.staged(name, published=True)):
        state = reg.run_state(name, version)
        if state and state.get("spec_hash") == spec_hash:
            return version
    return None
