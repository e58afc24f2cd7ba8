"""Hostile requests against the serve app (issue 28, items 2 and 3).

The app is benchmarks/serve_probe.py's: procedural and transplant with a checkpoint
root and a registry root holding real data, canaries outside them (the replica works
in a folder whose `./datasets` holds the same dataset names), and an audit hook in
each generator replica that logs every read of a canary. So these tests check what
was read, not only what was answered: registry references resolve in the registry
roots only, client mistakes are 4xx in the JSON error shape, and a seeded sample of
the probe's requests gets no 5xx and reads nothing outside the roots.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]
httpx = pytest.importorskip("httpx")
sys.path.append(str(REPO / "benchmarks"))  # appended: benchmarks/serve.py must not hide the `serve` package
import serve_probe  # noqa: E402

PROBE_REQUESTS = 280  # a seeded sample; `python benchmarks/serve_probe.py` sends 2,000


@pytest.fixture(scope="module")
def probe_server(ray_local, tmp_path_factory):
    from ray import serve

    world = serve_probe.make_world(tmp_path_factory.mktemp("probe"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_probe.start_app(world, port)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        serve_probe.warm_up(client)  # installs the audit hooks
        yield client, world
    serve.shutdown()


def gen(client, generator="procedural", **overrides):
    body = {"generator": generator, "class": "crack", "boxes": [[8, 8, 40, 30]], "image": {"width": 64, "height": 64}}
    return client.post("/v1/generate", json={**body, **overrides})


def refused(r, status: int, field: str | None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["field"] == field and err["message"], err
    return err


def test_registry_refs_resolve_only_in_the_registry_roots(probe_server):
    client, world = probe_server
    r = gen(client, params={"background": "references", "references": ["demo@1"]})
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["meta"]["reference"].startswith("<registry root>/demo/v1/yolo/images/train/")
    assert world["base"] not in r.text  # no server path in the answer
    assert gen(client, "transplant", params={"source": "demo@latest", "references": "demo@1"}).status_code == 200
    # canary@1 exists only in the replica's ./datasets (and demo@1 there too): never read
    err = refused(gen(client, params={"background": "references", "references": ["demo@1", "canary@1"]}),
                  422, "params.references[1]")
    assert "not published under any configured registry root" in err["message"]
    refused(gen(client, "transplant", params={"source": "canary@latest", "references": ["demo@1"]}), 422, "params.source")
    refused(gen(client, params={"background": "references", "references": "demo@7"}), 422, "params.references")
    item = {"item_id": "x", "index": 0, "generator": "procedural", "width": 64, "height": 64, "channels": 1, "seed": 1,
            "params": {"background": "references", "references": ["canary@1"]}}
    refused(client.post("/v1/generate", json={"work_item": item}), 422, "work_item.params.references[0]")
    assert serve_probe.reads(world) == []


@pytest.mark.parametrize("generator, params, field", [
    ("procedural", {"background": "references", "references": "etc"}, "params.references"),  # the 500
    ("procedural", {"background": "references", "references": ["nowhere"]}, "params.references[0]"),
    ("procedural", {"background": "references", "references": "toy/a.json"}, "params.references"),  # not an image
    ("procedural", {"background": "references", "references": ["escape"]}, "params.references[0]"),  # symlink out
    ("procedural", {"background": "references", "references": "secrets"}, "params.references"),  # the replica's cwd
    ("transplant", {"source": "refs", "references": ["demo@1"]}, "params"),  # a folder, but no YOLO tree
    ("transplant", {"source": "demo@1", "references": ["datasets"]}, "params.references[0]"),
])
def test_missing_or_wrong_reference_files_are_a_422(probe_server, generator, params, field):
    client, world = probe_server
    err = refused(gen(client, generator, params=params), 422, field)
    assert world["base"] not in err["message"]
    assert serve_probe.reads(world) == []


def test_a_class_the_source_lacks_is_a_422(probe_server):
    """Transplant draws whatever its source holds (the ingress cannot check the class);
    its generate() refuses the rest with a ValueError: the request's mistake, not a 500."""
    client, _ = probe_server
    err = refused(gen(client, "transplant", params={"source": "demo@1", "references": ["demo@1"]}, **{"class": "rainbow"}),
                  422, "class")
    assert "no 'rainbow' instances" in err["message"] and err["error_id"]
    assert gen(client, "transplant", params={"source": "demo@1", "references": ["demo@1"]}).status_code == 200


def test_deep_nesting_and_unparsable_bodies_are_4xx_in_the_error_shape(probe_server):
    client, _ = probe_server
    deep = "[" * 20_000 + "]" * 20_000
    # the plain-text 500: a 20,000-level work_item, as the Parquet column's text
    err = refused(client.post("/v1/generate", json={"work_item": deep}), 422, "work_item")
    assert "nested deeper than" in err["message"]
    post = lambda text: client.post("/v1/generate", content=text, headers={"content-type": "application/json"})  # noqa: E731
    refused(post('{"work_item": ' + deep + "}"), 400, "body")
    refused(post('{"generator": "procedural", "params": {"a": ' + "[" * 40 + "]" * 40 + "}}"), 400, "body")
    refused(post('{"class": "' + "[" * 100 + '"}'), 422, "class")  # brackets inside a string are no nesting
    refused(post('{"seed": ' + "9" * 5000 + "}"), 400, "body")  # over Python's int-parsing limit
    refused(client.post("/v1/generate", content=b'{"class": "\xc3\x28"}', headers={"content-type": "application/json"}),
            400, "body")
    refused(client.get("/v1/nope"), 404, None)
    r = client.put("/v1/generate", json={})
    refused(r, 405, None)
    assert "POST" in r.headers["allow"]


def test_hostile_probe_sample_gets_no_5xx_and_reads_nothing_outside_the_roots(probe_server):
    client, world = probe_server
    result = serve_probe.probe(client, world, PROBE_REQUESTS, seed=1)
    total = result["total"]
    assert total["requests"] == PROBE_REQUESTS and total["2xx"] > 0 and total["4xx"] > 0.8 * PROBE_REQUESTS
    failed = {k: total[k] for k in ("5xx", "bad shape", "server paths", "reads outside roots")}
    assert failed == dict.fromkeys(failed, 0), "\n".join(result["failures"][:20])


def test_param_checks_with_and_without_registry_roots(tmp_path):
    """Both sides' rules as functions: the ingress qualifies NAME@VERSION into a registry
    root (none configured: refused, naming the setting); the replica refuses any
    registry reference that is not so qualified."""
    from serve.checkpoints import ParamPathRefused, check_param_paths, normalize_registry_roots, resolve_param_paths

    world = serve_probe.make_world(tmp_path)
    roots, registry = [Path(world["ckpts"])], normalize_registry_roots([world["registry"]])
    with pytest.raises(ParamPathRefused) as e:
        resolve_param_paths({"references": ["refs", "demo@1"]}, roots, [])
    assert e.value.loc == "params.references[1]" and "registry_roots" in str(e.value) and "--registry-root" in str(e.value)
    params = resolve_param_paths({"references": ["refs", "demo@latest"], "mode": "bilinear"}, roots, registry)
    assert params == {"references": [str(roots[0] / "refs"), f"{registry[0]}/demo@1"], "mode": "bilinear"}
    check_param_paths(params, roots, registry)
    for bad in ["demo@1", f"file://{world['cwd']}/datasets/demo@1", f"{registry[0]}/../outside/reg/demo@1"]:
        with pytest.raises(ParamPathRefused, match="registry"):
            check_param_paths({"source": bad}, roots, registry)
    check_param_paths({"prompt": "a crack @ 45 degrees"}, roots, registry)  # an '@' alone names nothing


def test_factory_serve_registry_root_option(tmp_path, monkeypatch):
    """`--registry-root` (repeatable) replaces the config's registry_roots, as --checkpoint-root does."""
    from ray import serve as ray_serve
    from typer.testing import CliRunner

    import serve.app
    from factory.cli import app
    from serve.config import AppConfig, config_args

    assert config_args()["registry_roots"] == [] and AppConfig().registry_roots == []  # none by default
    seen = {}
    monkeypatch.setattr("factory.cli.serve_cmds.ensure_ray", lambda address: None)
    monkeypatch.setattr(serve.app, "build_app", lambda args: seen.setdefault("args", args))
    monkeypatch.setattr(ray_serve, "start", lambda http_options: None)
    monkeypatch.setattr(ray_serve, "run", lambda application, name, route_prefix: None)
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["serve", "--address", "auto", "--registry-root", "a", "--registry-root", "s3://b/datasets"])
    assert res.exit_code == 0, res.output
    assert seen["args"]["registry_roots"] == [str(tmp_path / "a"), "s3://b/datasets"]
    assert seen["args"]["checkpoint_roots"] == ["./checkpoints"]  # the config's, untouched
    json.dumps(seen["args"])  # plain data, as `serve run` would pass it
