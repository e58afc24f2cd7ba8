"""A real 2-node Ray cluster on this machine (`ray start --head` and a second
`ray start --address`, each with its own ports, in a temp dir of their own, so
the session's embedded Ray is never touched): `factory run` drives actors on both
nodes, the worker node's raylet is SIGKILLed mid-run, and the job still publishes
exactly `count` samples, each plan item once; the manifest says which node made
each shard. Everything the test started is stopped by PID (never `ray stop`:
that would stop every Ray on the machine)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from factory.storage import read_table
from factory.storage import uri as U

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")

pytestmark = pytest.mark.cluster

# a test-only generator family: the procedural renderer, `seconds` slower per item,
# so the job is still running when the worker node dies (added through the
# `factory.generators` entry point, as a third-party package would)
SLOW_FAMILY = """
import time
from factory.generators.base import GeneratorParams
from factory.generators.procedural import ProceduralELGenerator


class SlowParams(GeneratorParams):
    seconds: float = 0.2


class SlowProcedural(ProceduralELGenerator):
    kind = "slow_procedural"
    Params = SlowParams

    @classmethod
    def load(cls, checkpoint, params, device="cpu"):
        g = cls()
        g.seconds = cls.Params.parse(cls.kind, params).seconds
        return g

    def generate(self, items):
        time.sleep(self.seconds * len(items))
        return super().generate(items)
"""


def _plugin(where: Path) -> Path:
    where.mkdir()
    (where / "slowfam.py").write_text(SLOW_FAMILY)
    dist = where / "slowfam-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: slowfam\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[factory.generators]\nslow_procedural = slowfam:SlowProcedural\n")
    return where


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_range(n: int) -> tuple[int, int]:
    """`n` consecutive free ports below the ephemeral range (for a node's workers)."""
    for _ in range(50):
        base = random.randrange(15000, 30000 - n)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("", p))
            return base, base + n - 1
        except OSError:
            continue
    raise RuntimeError("no free port range")


def _ray_start(env: dict, cwd: Path, *args: str) -> None:
    """`ray start ARGS`; a node that did not come up within Ray's own 30 s means a
    machine too loaded for this test: it skips, saying so (the caller stops what started)."""
    r = subprocess.run([str(RAY), "start", *args], env=env, capture_output=True, text=True, timeout=180, cwd=cwd)
    if r.returncode != 0 and "timed out during startup" in r.stderr + r.stdout:
        pytest.skip(f"`ray start {' '.join(args[:2])}`: the node did not start within Ray's 30 s "
                    "(this machine is too loaded for a 2-node cluster now)")
    assert r.returncode == 0, f"`ray start {' '.join(args[:2])}` failed:\n{(r.stderr or r.stdout)[-2000:]}"


def _node_args(ports: list[int], workers: tuple[int, int]) -> list[str]:
    nm, om, agent, agent_grpc, env_agent, metrics = ports
    return ["--node-manager-port", str(nm), "--object-manager-port", str(om),
            "--min-worker-port", str(workers[0]), "--max-worker-port", str(workers[1]),
            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics)]


def _ours(temp_dir: str) -> list[psutil.Process]:
    """Every process of the cluster in `temp_dir`: its daemons (their command lines name
    the temp dir) and their children (workers, actors, agents)."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(p.info["cmdline"] or []):
            found[p.pid] = p
            try:
                found.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop(temp_dir: str) -> None:
    procs = _ours(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        _, procs = psutil.wait_procs(procs, timeout=5)
        if not procs:
            return


def _raylet(temp_dir: str, node_manager_port: int) -> tuple[psutil.Process, str]:
    """The raylet of the node listening on `node_manager_port`, and its node id."""
    for p in _ours(temp_dir):
        args = p.cmdline()
        if args and args[0].endswith("/raylet") and f"--node_manager_port={node_manager_port}" in args:
            return p, next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))
    raise AssertionError(f"no raylet on node manager port {node_manager_port}")


def _records(shards: Path) -> list[dict]:
    out = []
    for f in shards.glob("*.json"):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):  # being written
            pass
    return out


def test_worker_node_lost_mid_run_publishes_exactly(tmp_path):
    if not RAY.exists() or shutil.which(str(RAY)) is None:
        pytest.skip(f"the `ray` CLI is not available next to {sys.executable}")
    count, name = 40, "nodes"
    spec = {
        "name": name, "seed": 5, "count": count, "image": {"width": 64, "height": 48, "channels": 1},
        "generators": [{"kind": "slow_procedural", "params": {"seconds": 0.25}}],
        "defects": [{"class": "crack", "weight": 1, "boxes": {"count": [1, 1], "size": {"min": 0.2, "max": 0.3}}}],
        "negatives": 0.2, "output": {"shard_size": 2, "formats": ["parquet"]},
    }
    spec_path = tmp_path / "nodes.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "reg"
    shards = out / name / "_staging" / "v1" / "_shards"
    plugin = _plugin(tmp_path / "plugin")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(plugin), str(REPO), env.get("PYTHONPATH")])))
    # short: Unix socket paths under the session dir must stay under 108 bytes
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    gcs, dash, client, *ports = _free_ports(15)
    head_ports, worker_ports = ports[:6], ports[6:]
    low, _ = _free_range(40)  # the nodes' worker processes: 20 ports each
    address = f"127.0.0.1:{gcs}"
    quick = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 4}
    common = ["--temp-dir", temp_dir, "--disable-usage-stats", "--include-log-monitor=false"]
    log = tmp_path / "run.log"
    job = None
    t0 = time.time()
    try:
        # the head has room for a second actor: the one lost with the worker node restarts there
        _ray_start(env, tmp_path, "--head", "--port", str(gcs), "--num-cpus", "2", "--no-monitor",
                   "--include-dashboard=false", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
                   f"--system-config={json.dumps(quick)}", *common, *_node_args(head_ports, (low, low + 19)))
        _ray_start(env, tmp_path, "--address", address, "--num-cpus", "1", *common,
                   *_node_args(worker_ports, (low + 20, low + 39)))
        head_raylet, head_id = _raylet(temp_dir, head_ports[0])
        worker_raylet, worker_id = _raylet(temp_dir, worker_ports[0])
        started = time.time() - t0

        with open(log, "w") as f:
            job = subprocess.Popen(
                [sys.executable, "-m", "factory.cli", "run", str(spec_path), "--out", str(out), "--address", address,
                 "--actors", "2", "--verbose"], cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + 150  # generous: a loaded 2-core machine starts the driver and actors slowly
        # two shards from the worker node: the first one's result has surely reached the driver
        # (a range whose result had not would be redone on the head, under the same key)
        while sum(r.get("node") == worker_id for r in _records(shards)) < 2:
            assert job.poll() is None, f"the job ended before the worker node made a shard:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"not two shards from the worker node in 150 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        before = _records(shards)
        t_kill = time.time()
        worker_raylet.kill()  # SIGKILL: the node is gone, with the actor it held
        worker_raylet.wait(10)
        assert job.poll() is None, "the job was done before the worker node died"
        try:
            job.wait(180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job hung after the worker node died:\n{log.read_text()[-3000:]}")
        assert job.returncode == 0, log.read_text()[-3000:]
        t_end = time.time()
        assert "published nodes@1" in log.read_text()
        assert head_raylet.is_running()
    finally:
        if job is not None and job.poll() is None:
            job.kill()
            job.wait(10)
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(f"cluster up in {started:.1f}s; job {t_end - t0 - started:.1f}s; {len(before)} shards at the kill "
          f"{t_kill - t0 - started:.1f}s in; the job went on {t_end - t_kill:.1f}s")
    planned = count + count // 10  # overprovision 1.1
    assert len(before) < planned // 2, "the worker node died after the work was done"

    uri = U.to_uri(out / name / "v1")
    m = json.loads(U.read_bytes(U.join(uri, "manifest.json")))
    t = read_table(f"{out}/{name}@1", columns=["sample_id", "item_index"])
    ids, idx = t["sample_id"].to_pylist(), t["item_index"].to_pylist()
    assert len(ids) == count == m["counts"]["accepted"]
    assert len(set(ids)) == count and len(set(idx)) == count, "duplicate samples"
    assert m["duplicate_shards_skipped"] == 0
    # the manifest: every published shard in plan order, with the node that made it
    made = m["shards"]
    assert [s["key"] for s in made] == sorted(s["key"] for s in made)
    assert sum(s["samples"] for s in made) == count
    nodes = [s["node"] for s in made]
    print("shards by node:", {n[:8]: nodes.count(n) for n in set(nodes)}, "worker", worker_id[:8])
    assert set(nodes) == {head_id, worker_id} and head_id != worker_id, nodes
