"""Retraining as a reaction to publishing: the post-publish callback the pipeline
calls (`publish_hook`), and the watcher for versions whose spec has no
`retrain:` section. Both submit the same Ray job (`jobs/retrain.py`, the same
code as `factory retrain`) through Ray's Job Submission API, once per run id,
with the same settings and defaults (matched step budgets) as the command."""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from typing import TypedDict

from factory.ray_runtime import JobServerError, job_client
from factory.retrain.config import RetrainError, RetrainSettings, read_manifest, retrain_root, run_inputs, run_uri
from factory.retrain.offline import OFFLINE_ENV
from factory.storage.registry import Registry
from factory.storage.uri import exists, join, read_bytes, write_bytes

log = logging.getLogger("factory.retrain")


class WatchEvent(TypedDict):
    """A version the watcher handled: its run id, the Ray job, and whether it was submitted now."""

    version: str
    run_id: str
    job_id: str
    submitted: bool


class RetrainTriggerError(RuntimeError):
    """The retraining job could not be submitted (the version itself is published)."""


def job_entrypoint(version_uri: str, real_train: str, real_eval: str, s: RetrainSettings, run_id: str) -> str:
    """The command the Ray job runs: the same code path as `factory retrain`."""
    args = ["python", "-m", "jobs.retrain", version_uri, "--real-train", real_train, "--real-eval", real_eval,
            "--config", json.dumps(s.model_dump(mode="json"), sort_keys=True), "--run-id", run_id]
    return shlex.join(args)


def _job_client(address: str | None):
    try:
        return job_client(address)
    except JobServerError as e:
        raise RetrainTriggerError(
            f"{e}; start Ray with its dashboard, set RAY_ADDRESS or retrain.address, or run `factory retrain` by hand") from e


def submit_retrain(version_uri: str, real_train: str, real_eval: str, s: RetrainSettings, *, address: str | None = None,
                   client=None, reason: str = "publish") -> tuple[str, str, bool]:
    """Submit the retraining of one version as a Ray job, once. Returns (run id, job
    id, submitted now?). The record `retrain/<run-id>/trigger.json` and the job's
    submission id (derived from the run id; the job server refuses a duplicate)
    both keep a second trigger from training again."""
    version_uri, real_train, real_eval, _, run_id = run_inputs(version_uri, real_train, real_eval, s)
    record = join(run_uri(version_uri, run_id), "trigger.json")
    if exists(record):
        return run_id, json.loads(read_bytes(record))["job_id"], False
    client = client or _job_client(address)
    submission_id = f"retrain-{run_id}"
    entrypoint = job_entrypoint(version_uri, real_train, real_eval, s, run_id)
    env = {**OFFLINE_ENV, **{k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "YOLO_CONFIG_DIR") if k in os.environ}}
    submitted = True
    deadline = time.time() + 60
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env={"env_vars": env},
                                       metadata={"run_id": run_id, "version": version_uri, "reason": reason})
            break
        except RuntimeError as e:
            if "already exists" in str(e):
                job_id, submitted = submission_id, False  # another trigger got there first
                break
            if "No available agent" in str(e) and time.time() < deadline:
                time.sleep(1)  # a cluster that just started: its job agent is not up yet
                continue
            raise RetrainTriggerError(f"{version_uri}: submitting the retrain job failed: {e}") from e
    info = {"run_id": run_id, "job_id": job_id, "reason": reason, "entrypoint": entrypoint,
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_bytes(record, json.dumps(info, indent=2).encode())
    return run_id, job_id, submitted


def on_publish(spec, version_uri: str, *, client=None) -> str | None:
    """A spec with `retrain: {on: publish}` gets one retraining job per published
    version (its section's settings, the command's defaults for the rest).
    Returns the Ray job id (None without such a section)."""
    r = getattr(spec, "retrain", None)
    if r is None or r.on != "publish":
        return None
    _, job_id, _ = submit_retrain(version_uri, r.real_train, r.real_eval, r.settings(), address=r.address, client=client,
                                  reason="publish")
    return job_id


def publish_hook(spec, version_uri: str) -> list[str]:
    """The pipeline's post-publish callback (call it once manifest.json is written):
    submit the retraining job if the spec asks for it, and say what happened.
    Never raises: the version is published either way; a failed submission is a
    note naming the way out (`factory retrain` by hand, or the watcher)."""
    try:
        job_id = on_publish(spec, version_uri)
    except (RetrainTriggerError, RetrainError, ValueError) as e:
        note = f"retrain: job not submitted: {e}"
        log.warning(note)
        return [note]
    if job_id is None:
        return []
    note = f"retrain: submitted Ray job {job_id} (results under {retrain_root(version_uri)}/)"
    log.info(note)
    return [note]


def published_versions(root: str) -> list[str]:
    """Version URIs under a registry root that have a manifest (= published)."""
    reg = Registry(root)
    return [reg.version_uri(n, v) for n in reg.names() for v in reg.versions(n)]


def watch_once(root: str, real_train: str, real_eval: str, s: RetrainSettings, *, address: str | None = None,
               client=None) -> list[WatchEvent]:
    """One pass of the watcher: submit a job for each published version that has
    none for these settings yet. Versions whose spec has its own
    `retrain: {on: publish}` are left to their publish trigger; imported real
    data sets are not synthetic versions and are skipped."""
    events: list[WatchEvent] = []
    for v in published_versions(root):
        manifest = read_manifest(v) or {}
        if manifest.get("kind") == "real":  # an imported real data set, not synthetic data
            continue
        if ((manifest.get("spec") or {}).get("retrain") or {}).get("on") == "publish":
            continue
        run_id, job_id, now = submit_retrain(v, real_train, real_eval, s, address=address, client=client, reason="watch")
        events.append(WatchEvent(version=v, run_id=run_id, job_id=job_id, submitted=now))
    return events
