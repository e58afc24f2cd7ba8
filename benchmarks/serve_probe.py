"""Hostile-request probe of the online API (issue 28): seeded malformed and malicious
requests against the real app, counting 5xx answers (goal 0), answers not in the
JSON error shape (goal 0), answers that show a server path (goal 0) and reads outside
the configured roots (goal 0).

    python benchmarks/serve_probe.py [--requests 2000] [--seed 0]
    python benchmarks/serve_probe.py --smoke      # 60 requests: checks the script

The app serves procedural and transplant (the families that read references and
sources) with one checkpoint root and one registry root, both holding real data. An
audit hook in each generator replica (installed by its first load, before any
hostile request) records every open/listdir/scandir of the canaries outside the
roots: the replica's working folder's `./datasets` (the registry a bare NAME@VERSION
used to fall back to, with the same dataset names), other folders beside the roots, a
symlink planted under the checkpoint root that leads out, and a few system files.
Requests are sent one at a time, so each read is pinned on the request that made it.
tests/test_serve_hostile.py runs `probe()` on a smaller seeded set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # the repository root first: benchmarks/serve.py is not the `serve` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SMOKE_HELP, machine, table  # noqa: E402

SYSTEM_TARGETS = ("/etc/passwd", "/etc/hostname", "/etc/shadow")
AUDITED = ("open", "os.listdir", "os.scandir")


# --- the world: roots with real data, canaries outside them ----------------------------------


def _png(path: Path, level: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(rng.normal(level, 6, (48, 48)), 0, 255).astype(np.uint8)).save(path)


def _registry(root: Path, name: str) -> None:
    """A published version `name@1`: a YOLO tree with 2 cracked and 2 clean train images."""
    tree = root / name / "v1" / "yolo"
    (tree / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (tree / "data.yaml").write_text("names: [crack]\n")
    for i in range(4):
        _png(tree / "images" / "train" / f"{i}.png", 170, i)
        (tree / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (tree / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.2\n" if i < 2 else "")
    (root / name / "v1" / "manifest.json").write_text("{}")  # published


def make_world(base: Path) -> dict:
    """The roots and the canaries under `base`; returns their paths."""
    base = base.resolve()
    ckpts, registry, cwd, outside = base / "ckpts", base / "registry", base / "cwd", base / "outside"
    for i in range(2):
        _png(ckpts / "refs" / f"r{i}.png", 150, 10 + i)
    (ckpts / "toy").mkdir(parents=True)
    (ckpts / "toy" / "a.json").write_text('{"level": 40}')
    _registry(registry, "demo")
    for name in ("demo", "canary"):  # the working folder's ./datasets: what a bare NAME@VERSION used to read
        _registry(cwd / "datasets", name)
    _png(cwd / "secrets" / "s.png", 90, 20)
    _png(outside / "secret.png", 90, 21)
    _registry(outside / "reg", "demo")
    (ckpts / "escape").symlink_to(outside)
    (base / "audit").mkdir()
    return {"base": str(base), "ckpts": str(ckpts), "registry": str(registry), "cwd": str(cwd),
            "outside": str(outside), "audit": str(base / "audit"),
            "watched": [str(cwd / "datasets"), str(cwd / "secrets"), str(outside), *SYSTEM_TARGETS],
            "allowed": [str(ckpts), str(registry)]}


def _install_audit(world: dict) -> None:
    """In a generator replica, once: work in the canary folder (as a server started there
    would) and log every read of a watched path that is not inside the roots."""
    if getattr(sys, "_serve_probe_audit", False):
        return
    sys._serve_probe_audit = True
    os.chdir(world["cwd"])
    os.environ["FACTORY_ROOT"] = str(Path(world["outside"]) / "reg")
    import threading

    log = os.path.join(world["audit"], f"{os.getpid()}.log")
    watched, allowed, local = world["watched"], world["allowed"], threading.local()

    def under(p: str, dirs: list[str]) -> bool:
        return any(p == d or p.startswith(d.rstrip("/") + "/") for d in dirs)

    def hook(event: str, args: tuple) -> None:
        if event not in AUDITED or getattr(local, "busy", False):
            return
        p = args[0] if args else None
        if p is None:
            p = "."
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        if not isinstance(p, (str, os.PathLike)):
            return
        local.busy = True  # the hook's own open() must not re-enter it
        try:
            p = os.path.realpath(os.fspath(p))
            if under(p, watched) and not under(p, allowed):
                with open(log, "a") as f:
                    f.write(json.dumps({"event": event, "path": p}) + "\n")
        finally:
            local.busy = False

    sys.addaudithook(hook)


def audited(cls: type, world: dict) -> type:
    """`cls` whose load installs the audit hook first (the real generator otherwise)."""

    @classmethod
    def load(c, checkpoint, params, device="cpu"):
        _install_audit(world)
        return cls.load.__func__(c, checkpoint, params, device)

    return type(f"Audited{cls.__name__}", (cls,), {"load": load, "__module__": __name__})


def app_args(world: dict) -> dict:
    from factory.generators.procedural import ProceduralELGenerator
    from factory.generators.transplant import TransplantGenerator

    return {
        "checkpoint_roots": [world["ckpts"]],
        "registry_roots": [world["registry"]],
        "serve_all_kinds": False,
        "defaults": {"num_cpus": 0.25, "autoscaling": None, "batch_wait_timeout_s": 0.005},
        "generators": {"procedural": {"import_path": audited(ProceduralELGenerator, world)},
                       "transplant": {"import_path": audited(TransplantGenerator, world)}},
        "ingress": {"num_cpus": 0.1},
    }


def reads(world: dict) -> list[dict]:
    out = []
    for log in sorted(Path(world["audit"]).glob("*.log")):
        out += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return out


# --- the requests -------------------------------------------------------------------------

RAW = "\x00raw{}\x00"  # a placeholder string replaced by raw JSON text (NaN, huge numbers, deep nesting)


def _base(rng: random.Random) -> dict:
    kind = rng.choice(["procedural", "procedural-refs", "transplant"])
    body = {"generator": kind.split("-")[0], "class": "crack", "boxes": [[8, 8, 40, 30]],
            "image": {"width": 64, "height": 64}, "seed": rng.randrange(1000)}
    if kind == "procedural-refs":
        body["params"] = {"background": "references", "references": ["demo@1"]}
    elif kind == "transplant":
        body["params"] = {"source": "demo@1", "references": ["demo@1"]}
    return body


def _deep(rng: random.Random) -> str:
    depth = rng.choice([40, 70, 200, 1000, 5000, 20000])
    return "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth


def _refs(world: dict) -> list:
    rel = os.path.relpath(world["outside"], world["ckpts"])
    return [
        "../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "~/.ssh/id_rsa", "..", ".", "./refs", "refs/../..",
        "escape/secret.png", "escape", "escape/reg/demo@1", f"{rel}/secret.png", world["outside"],
        f"file://{world['outside']}/secret.png", "secrets", "secrets/s.png", "datasets", "etc", "nowhere", "refs",
        "refs/r0.png", "toy/a.json", "toy", "%2e%2e/%2e%2e/etc/passwd", "C:\\Windows\\win.ini", "\\\\host\\share",
        "refs\x00/../..", "s3://bucket/secret", "http://127.0.0.1:1/x", "demo@1", "demo@latest", "demo@v1", "canary@1",
        "canary@latest", "demo@99", "nope@1", "DEMO@1", "demo@", "@1", "a@b@c", "datasets/demo@1", "./datasets/demo@1",
        f"file://{world['cwd']}/datasets/demo@1", f"file://{world['registry']}/demo@1", f"{world['cwd']}/datasets/canary@1",
        "reg/demo@1", "", " ", "x" * 300, 7, None, [], {}, ["demo@1", "canary@1"], ["refs", "etc"], {"a": "canary@1"},
    ]


def _mutations(world: dict):
    refs = _refs(world)
    values = [None, True, -1, 0, 1.5, "x", "", [], {}, [1], {"a": 1}, 10**30, -10**30, 2**63, 2**64, "1e9", "🙂" * 50,
              RAW.format("NaN"), RAW.format("Infinity"), RAW.format("-Infinity"), RAW.format("1e400"),
              RAW.format("9" * 5000), RAW.format("-0.0"), RAW.format('"\\ud800"'), "\x00", "a\nb", "x" * 5000]
    boxes = [[-1, 0, 10, 10], [10, 10, 5, 5], [0, 0, 2000, 10], [0, 0, 64, 64], [0, 0, 1, 1], [0.5, 1, 10, 10],
             ["a", 1, 2, 3], [1, 2, 3], [1, 2, 3, 4, 5], [[1, 2], [3, 4]], None, {}, [10**30, 0, 1, 1],
             [RAW.format("NaN"), 0, 10, 10], [0, 0, 1024, 1024]]

    def bad_boxes(rng, b):
        b["boxes"] = rng.choice([[rng.choice(boxes)], [rng.choice(boxes)] * rng.choice([2, 64, 65, 300]),
                                 rng.choice(boxes), "0,0,10,10", None, 5])

    def wrong_type(rng, b):
        field = rng.choice(["generator", "class", "image", "n", "seed", "style", "params", "domain", "checkpoint",
                            "boxes", "class_id", "work_item"])
        b[field] = rng.choice(values)

    def nested_wrong_type(rng, b):
        where, key = rng.choice([("image", "width"), ("image", "height"), ("image", "channels"),
                                 ("style", "brightness"), ("style", "contrast"), ("style", "grid_pitch"),
                                 ("style", "busbars"), ("style", "reference"), ("params", "background"),
                                 ("params", "blend"), ("params", "top_k"), ("params", "feather"), ("params", "scale"),
                                 ("params", "max_per_class"), ("params", "candidates"), ("params", "classes"),
                                 ("params", "backgrounds"), ("params", "elastic"), ("params", "merge")])
        if not isinstance(b.get(where), dict):
            b[where] = {}
        b[where][key] = rng.choice(values + [[RAW.format("NaN"), 1], [0.5, 0.1], [0, 16], [1, 2, 3], "labelled"])

    def huge(rng, b):
        b[rng.choice(["seed", "n", "class_id"])] = rng.choice([10**30, -10**30, 2**63, 2**64, RAW.format("1e400"),
                                                              RAW.format("9" * 5000), RAW.format("1e308")])
        if rng.random() < 0.5:
            b["image"] = {"width": rng.choice([1024, 10**9, 2**63]), "height": rng.choice([1024, 33, -5])}

    def nan(rng, b):
        token = RAW.format(rng.choice(["NaN", "Infinity", "-Infinity"]))
        rng.choice([lambda: b.__setitem__("seed", token), lambda: b.__setitem__("style", {"brightness": token}),
                    lambda: b.__setitem__("image", {"width": token, "height": 64}),
                    lambda: b.setdefault("params", {}).__setitem__("feather", token),
                    lambda: b.setdefault("params", {}).__setitem__("scale", [token, 1.0]),
                    lambda: b.__setitem__("boxes", [[token, 0, 10, 10]])])()

    def deep(rng, b):
        where = rng.choice(["work_item", "work_item_text", "params", "boxes", "style", "body"])
        text = _deep(rng)
        if where == "body":
            b.clear()
            b["__body__"] = text
        elif where == "work_item_text":
            b.clear()
            b["work_item"] = text
        elif where == "params":
            b["params"] = {"references": RAW.format(text)}
        else:
            b[where] = RAW.format(text)

    def path_ref(rng, b):
        ref = rng.choice(refs)
        key = rng.choice(["references", "references", "source", "source", "level_file", "base", "checkpoints"])
        params = b["params"] if isinstance(b.get("params"), dict) else {}
        if key == "checkpoints":
            ref = {"crack": ref}
        elif key == "references" and rng.random() < 0.5:
            ref = [ref]
        params[key] = ref
        if b.get("generator") == "procedural" and rng.random() < 0.7:
            params["background"] = "references"
        b["params"] = params
        if rng.random() < 0.2:
            b["checkpoint"] = rng.choice([r for r in refs if isinstance(r, str)])

    def version_ref(rng, b):
        ref = rng.choice(["demo@1", "demo@latest", "canary@1", "canary@latest", "demo@2", "nope@1", "demo@v1",
                          "x" * 70 + "@1", "demo@-1", "demo@1@2", "DeMo@1", "demo@01", "demo@99999999999999999999"])
        b["generator"] = rng.choice(["procedural", "transplant"])
        if b["generator"] == "procedural":
            b["params"] = {"background": "references", "references": rng.choice([ref, [ref], ["demo@1", ref]])}
        else:
            b["params"] = rng.choice([{"source": ref, "references": ["demo@1"]}, {"source": "demo@1", "references": ref},
                                      {"source": ref, "references": [ref], "backgrounds": "labelled", "classes": ["crack"]}])

    def unknown_generator(rng, b):
        b["generator"] = rng.choice(["nope", "PROCEDURAL", "../procedural", "dg2gan", "pdig", "", "x" * 65, "toy",
                                     "procedural\x00", "transplant ", "procédural"])

    def oversized(rng, b):
        rng.choice([lambda: b.__setitem__("domain", "x" * rng.choice([100, 5000, 70000])),
                    lambda: b.__setitem__("class", "c" * 300),
                    lambda: b.__setitem__("params", {"k": "v" * 5000}),
                    lambda: b.__setitem__("params", {f"k{i}": i for i in range(600)}),
                    lambda: b.__setitem__("n", rng.choice([16, 17, 1000])),
                    lambda: b.__setitem__("image", {"width": 1024, "height": 1024}),
                    lambda: b.__setitem__("boxes", [[0, 0, 64, 64]] * 64),
                    lambda: b.__setitem__("checkpoint", "a/" * 200)])()

    def work_item(rng, b):
        item = {"item_id": "x", "index": 0, "generator": b.get("generator", "procedural"), "checkpoint": None,
                "width": 64, "height": 64, "channels": 1, "seed": 1,
                "boxes": [{"class_id": 0, "class_name": "crack", "x1": 8, "y1": 8, "x2": 40, "y2": 30}],
                "style": {}, "params": b.get("params") if isinstance(b.get("params"), dict) else {}, "domain": "default"}
        key = rng.choice(list(item))
        if rng.random() < 0.8:
            item[key] = rng.choice(values + [rng.choice(refs), {"references": rng.choice(refs), "source": "canary@1"}])
        b.clear()
        b["work_item"] = json.dumps(item, default=str) if rng.random() < 0.3 else item
        if rng.random() < 0.1:
            b["seed"] = 1

    def malformed(rng, b):
        b.clear()
        b["__body__"] = rng.choice(['{"generator": "procedural",', "", "null", "[]", '"x"', "1", "{}", "\ufeff{}",
                                    '{"generator": "procedural", "generator": "transplant"}', "{'a': 1}",
                                    '{"seed": 01}', '{"n": 1,}', "\x00", '{"a": "\\ud800"}', "nan"])
        if rng.random() < 0.3:
            b["__bytes__"] = rng.choice([b"\xff\xfe{}", b'{"class": "\xc3\x28"}', b"\x80" * 10])

    def method_or_path(rng, b):
        b["__method__"] = rng.choice(["GET", "PUT", "DELETE", "PATCH", "POST"])
        b["__path__"] = rng.choice(["/v1/generate", "/v1/generate/", "/v1/../healthz", "/v1/nope", "/" + "a" * 3000,
                                    "/v1/generators", "/docs", "/v1/generate?x=1", "/%00"])
        if rng.random() < 0.3:
            b["__content_type__"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"])

    def unknown_key(rng, b):
        b[rng.choice(["colour", "__proto__", "constructor", "Generator", "", "a" * 100])] = 1

    return {"bad boxes": bad_boxes, "wrong types": wrong_type, "wrong nested types": nested_wrong_type,
            "huge numbers": huge, "NaN / Infinity": nan, "deep nesting": deep, "path refs": path_ref,
            "NAME@VERSION refs": version_ref, "unknown generators": unknown_generator, "oversized values": oversized,
            "work items": work_item, "malformed bodies": malformed, "methods and paths": method_or_path,
            "unknown keys": unknown_key}


def requests(world: dict, n: int, seed: int) -> list[tuple[str, dict]]:
    """`n` seeded hostile requests: (category, {method, path, content, headers})."""
    rng = random.Random(seed)
    muts = _mutations(world)
    names = sorted(muts)
    out = []
    for i in range(n):
        b = _base(rng)
        cat = names[i % len(names)]  # every category equally often
        muts[cat](rng, b)
        if rng.random() < 0.3:  # and sometimes a second mistake of another kind
            muts[rng.choice(names)](rng, b)
        method, path = b.pop("__method__", "POST"), b.pop("__path__", "/v1/generate")
        ctype = b.pop("__content_type__", "application/json")
        if "__bytes__" in b:
            content = b["__bytes__"]
        elif "__body__" in b:
            content = b["__body__"].encode("utf-8", "surrogatepass")
        else:
            text = json.dumps(b)
            for raw in set(_raws(b)):
                text = text.replace(json.dumps(RAW.format(raw)), raw)
            content = text.encode("utf-8", "surrogatepass")
        out.append((cat, {"method": method, "path": path, "content": content, "headers": {"content-type": ctype}}))
    return out


def _raws(v) -> list[str]:
    if isinstance(v, str):
        return [v[4:-1]] if v.startswith("\x00raw") and v.endswith("\x00") else []
    if isinstance(v, dict):
        return [r for x in v.values() for r in _raws(x)]
    if isinstance(v, list):
        return [r for x in v for r in _raws(x)]
    return []


# --- sending them ---------------------------------------------------------------------------


def _shape_ok(r) -> bool:
    """An error (4xx/5xx) is in the app's JSON error shape, its status the HTTP status."""
    if r.status_code < 400:
        return True
    try:
        data = r.json()
    except ValueError:
        return False
    err = data.get("error") if isinstance(data, dict) else None
    return isinstance(err, dict) and err.get("status") == r.status_code and isinstance(err.get("message"), str)


def probe(client, world: dict, n: int, seed: int = 0, log=None) -> dict:
    """Send the requests one at a time; per category: answers by class, wrong shapes,
    server paths shown, reads outside the roots (with examples of each failure)."""
    rows: dict[str, dict] = {}
    failures: list[str] = []
    seen = len(reads(world))
    t0 = time.perf_counter()
    for i, (cat, req) in enumerate(requests(world, n, seed)):
        r = client.request(req["method"], req["path"], content=req["content"], headers=req["headers"])
        row = rows.setdefault(cat, {"requests": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "bad shape": 0, "server paths": 0,
                                    "reads outside roots": 0})
        row["requests"] += 1
        row[f"{r.status_code // 100}xx"] = row.get(f"{r.status_code // 100}xx", 0) + 1
        now = reads(world)
        problems = []
        if r.status_code >= 500:
            problems.append(f"{r.status_code}")
        if not _shape_ok(r):
            row["bad shape"] += 1
            problems.append("bad shape")
        if world["base"] in r.text and world["base"].encode() not in req["content"]:  # not an echo of the request
            row["server paths"] += 1
            problems.append("server path")
        if len(now) > seen:
            row["reads outside roots"] += len(now) - seen
            problems.append(f"reads {[x['path'] for x in now[seen:]][:3]}")
            seen = len(now)
        if problems:
            failures.append(f"#{i} {cat}: {', '.join(problems)}: {req['method']} {req['path'][:80]} "
                            f"{req['content'][:200]!r} -> {r.status_code} {r.text[:200]}")
        if log and (i + 1) % 250 == 0:
            log(f"{i + 1}/{n} requests, {time.perf_counter() - t0:.0f} s")
    total = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    return {"rows": rows, "total": total, "failures": failures, "seconds": time.perf_counter() - t0}


def report(result: dict, where: str, n: int, seed: int) -> str:
    keys = ["requests", "2xx", "3xx", "4xx", "5xx", "bad shape", "server paths", "reads outside roots"]
    rows = [[cat, *(r[k] for k in keys)] for cat, r in sorted(result["rows"].items())]
    rows.append(["**all**", *(result["total"][k] for k in keys)])
    return "\n".join([f"Machine: {where}", f"{n} hostile requests, seed {seed}, one at a time, "
                      f"{result['seconds']:.0f} s", "", table(["probe", *keys], rows)])


def start_app(world: dict, port: int):
    """Serve (on this process's Ray) the probe's app on 127.0.0.1:port."""
    from ray import cloudpickle, serve

    from serve.app import build_app

    if __name__ != "__main__":  # replicas cannot import this module: its classes travel by value
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    serve.run(build_app(app_args(world)), name="factory", route_prefix="/")


def warm_up(client) -> None:
    """One good request per family: loads them, which installs the audit hooks."""
    for body in [{"generator": "procedural", "class": "crack", "boxes": [[8, 8, 40, 30]], "image": {"width": 64, "height": 64}},
                 {"generator": "transplant", "class": "crack", "boxes": [[8, 8, 40, 30]], "image": {"width": 64, "height": 64},
                  "params": {"source": "demo@1", "references": ["demo@1"]}}]:
        r = client.post("/v1/generate", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"warm-up failed: {r.status_code} {r.text[:500]}")


def main() -> None:
    import socket
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=20, help="failing requests to print")
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; 60 requests")
    args = p.parse_args()
    if args.smoke:
        args.requests = 60
    if not 1 <= args.requests <= 100_000:
        p.error("--requests must be in 1..100000")
    import httpx
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    where = machine()
    with tempfile.TemporaryDirectory(prefix="serve-probe-") as tmp:
        world = make_world(Path(tmp))
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            start_app(world, port)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                warm_up(client)
                result = probe(client, world, args.requests, args.seed, log=lambda m: print(m, flush=True))
        finally:
            serve.shutdown()
            ray.shutdown()
    print()
    print(report(result, where, args.requests, args.seed))
    for line in result["failures"][:args.show]:
        print(line)
    bad = result["total"]
    if bad["5xx"] or bad["bad shape"] or bad["server paths"] or bad["reads outside roots"]:
        sys.exit(f"{len(result['failures'])} failing requests")


if __name__ == "__main__":
    main()
