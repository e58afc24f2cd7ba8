"""The Ray Serve app on the session's embedded Ray, over real HTTP on 127.0.0.1.

Besides the procedural generator the app serves a test-only kind `toy` (defined
below): it reads a real checkpoint file under the configured root (so
multiplexing and the roots are exercised) and raises on the class "boom" (so
failure isolation is). A test-only scorer makes every response carry a gate
verdict computed from the sample's mask. Both reach the replicas pickled by
value, since the replicas cannot import this module.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from factory.core import Sample
from factory.quality.base import Verdict

pytestmark = pytest.mark.ray
httpx = pytest.importorskip("httpx")


class ToyGenerator:
    """Flat image at the checkpoint's grey level, a filled square per box; raises on class "boom"."""

    kind = "toy"
    wants_gpu = False

    def __init__(self, level: int):
        self.level = level

    @classmethod
    def load(cls, checkpoint, params, device="cpu"):
        from factory.generators.base import CheckpointError

        if checkpoint is None:
            raise CheckpointError("the toy generator needs a checkpoint (a JSON file with a grey level)")
        # params.level_file (a path-valued param) overrides the checkpoint's level
        return cls(int(json.loads(open(params.get("level_file", checkpoint)).read())["level"]))

    def generate(self, items):
        out = []
        for item in items:
            if any(b.class_name == "boom" for b in item.boxes):
                raise RuntimeError("toy generator exploded")
            img = np.full((item.height, item.width, item.channels), self.level, np.uint8)
            mask = np.zeros((item.height, item.width), np.uint8)
            for k, b in enumerate(item.boxes, 1):
                img[b.y1:b.y2, b.x1:b.x2] = 255 - self.level
                mask[b.y1:b.y2, b.x1:b.x2] = k
            out.append(Sample(item=item, image=img, boxes=list(item.boxes), mask=mask, meta={"level": self.level}))
        return out


class MaskScorer:
    """Rejects samples whose mask is empty; scores the defect pixel fraction."""

    name = "mask"

    def score(self, samples):
        out = []
        for s in samples:
            frac = float((s.mask > 0).mean()) if s.mask is not None else 0.0
            out.append(Verdict({"defect_fraction": frac}, [] if frac > 0 else ["no defect pixels"]))
        return out


class GpuToy(ToyGenerator):
    wants_gpu = True


def test_app_serves_every_kind_with_a_gpu_per_replica_when_there_is_one():
    from factory.generators.base import registered_kinds

    KINDS = registered_kinds()
    from serve.app import AppConfig, GeneratorConfig, deployment_options

    cfg = AppConfig.model_validate({"generators": {"procedural": {"max_models_per_replica": 5}}})
    kinds = cfg.kinds()
    assert sorted(kinds) == sorted(KINDS) and kinds["procedural"].max_models_per_replica == 5
    assert all(k.import_path == KINDS[name] for name, k in kinds.items())
    with pytest.raises(ValueError, match="not a registered kind"):
        AppConfig.model_validate({"generators": {"nope": {}}}).kinds()

    gpu = GeneratorConfig(import_path=GpuToy)
    assert deployment_options("toy", gpu, has_gpu=True)["ray_actor_options"]["num_gpus"] == 1
    assert deployment_options("toy", gpu, has_gpu=False)["ray_actor_options"]["num_gpus"] == 0
    assert deployment_options("toy", GeneratorConfig(import_path=ToyGenerator), has_gpu=True)["ray_actor_options"]["num_gpus"] == 0
    opts = deployment_options("toy", GeneratorConfig(import_path=GpuToy, num_gpus=0.5), has_gpu=True)
    assert opts["ray_actor_options"]["num_gpus"] == 0.5 and opts["autoscaling_config"]["max_replicas"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    from ray import cloudpickle, serve

    from serve.app import build_app

    # the replicas cannot import this test module: ship its classes by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    root = tmp_path_factory.mktemp("ckpts")
    for name, level in [("a", 40), ("b", 80), ("c", 120)]:
        (root / "toy").mkdir(exist_ok=True)
        (root / "toy" / f"{name}.json").write_text(json.dumps({"level": level}))
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.json").write_text(json.dumps({"level": 7}))
    (root / "escape").symlink_to(outside)  # a link planted under the root that leads out of it

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "checkpoint_roots": [str(root)],
        "serve_all_kinds": False,  # the torch families' replicas would only slow this down; see test_app_serves_every_kind_*

        "defaults": {"num_cpus": 0.25, "autoscaling": None, "batch_wait_timeout_s": 0.005},
        "generators": {"procedural": {}, "toy": {"import_path": ToyGenerator, "max_models_per_replica": 2}},
        "scorers": [{"import_path": MaskScorer}],
        "max_request_bytes": 8192,
        "ingress": {"num_cpus": 0.1},
    }
    serve.run(build_app(args), name="factory", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    serve.shutdown()


def gen(client, **overrides):
    body = {"generator": "procedural", "class": "crack", "boxes": [[20, 30, 70, 60]], "image": {"width": 96, "height": 96}, "seed": 3}
    body.update(overrides)
    return client.post("/v1/generate", json=body)


def decode(image: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image["png_base64"]))))


def test_generate_procedural(server):
    r = gen(server, boxes=[[20, 30, 70, 60], [5, 5, 25, 15]], image={"width": 96, "height": 80, "channels": 3})
    assert r.status_code == 200, r.text
    (im,) = r.json()["images"]
    a = decode(im)
    assert a.shape == (80, 96, 3) and a.std() > 1  # a real picture, not a blank
    assert (im["width"], im["height"], im["channels"]) == (96, 80, 3)
    assert len(im["boxes"]) == 2
    for got, asked in zip(im["boxes"], [[20, 30, 70, 60], [5, 5, 25, 15]]):
        assert got["class"] == "crack"
        # the procedural renderer reports the tight box of what it drew, inside the asked box
        assert asked[0] <= got["x1"] < got["x2"] <= asked[2] and asked[1] <= got["y1"] < got["y2"] <= asked[3]
    assert im["verdict"]["accepted"] is True and im["scores"]["defect_fraction"] > 0
    # a negative (no boxes) is rejected by the configured scorer, with its reason
    r = gen(server, boxes=[])
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["verdict"] == {"accepted": False, "reasons": ["no defect pixels"], "scores": {"defect_fraction": 0.0}}


def test_same_seed_same_image(server):
    first, again, other = gen(server, seed=11), gen(server, seed=11), gen(server, seed=12)
    assert first.json()["images"][0]["png_base64"] == again.json()["images"][0]["png_base64"]
    assert first.json()["images"][0]["png_base64"] != other.json()["images"][0]["png_base64"]
    # image i of n uses seed + i
    two = gen(server, seed=11, n=2).json()["images"]
    assert [i["seed"] for i in two] == [11, 12]
    assert two[1]["png_base64"] == other.json()["images"][0]["png_base64"]
    # an explicit style knob changes the image; the same knob gives the same image again
    dim = gen(server, seed=11, style={"brightness": 0.2})
    assert decode(dim.json()["images"][0]).mean() < decode(first.json()["images"][0]).mean()
    assert dim.json()["images"][0]["png_base64"] == gen(server, seed=11, style={"brightness": 0.2}).json()["images"][0]["png_base64"]


@pytest.mark.parametrize(
    "overrides, status, field",
    [
        ({"boxes": [[20, 30, 120, 60]]}, 422, "boxes"),  # outside the 96x96 image
        ({"boxes": [[1, 1, 4, 4]] * 65}, 422, "boxes"),  # too many boxes
        ({"boxes": [[1, 1, 4]]}, 422, "boxes[0]"),  # not 4 numbers
        ({"generator": "nope"}, 422, "generator"),
        ({"checkpoint": "../../etc/passwd"}, 422, "checkpoint"),  # path traversal
        ({"checkpoint": "/etc/passwd"}, 422, "checkpoint"),
        ({"checkpoint": "file:///etc/passwd"}, 422, "checkpoint"),
        ({"checkpoint": "toy/../../etc/passwd"}, 422, "checkpoint"),
        ({"generator": "toy", "checkpoint": "escape/secret.json"}, 422, "checkpoint"),  # symlink out of the root
        ({"generator": "toy", "checkpoint": "toy/missing.json"}, 422, "checkpoint"),
        ({"generator": "toy"}, 422, "checkpoint"),  # the family needs one: CheckpointError -> 422
        ({"checkpoint": "toy/a.json"}, 422, "checkpoint"),  # procedural refuses checkpoints at load
        ({"generator": "toy", "checkpoint": "toy/a.json", "params": {"level_file": "/etc/passwd"}}, 422, "params.level_file"),
        ({"generator": "toy", "checkpoint": "toy/a.json", "params": {"x": ["ok", "../../x"]}}, 422, "params.x[1]"),
        ({"generator": "toy", "checkpoint": "toy/a.json", "params": {"level_file": "escape/secret.json"}}, 422, "params.level_file"),
        ({"class": "rainbow"}, 422, "class"),  # procedural cannot draw it
        ({"class": None}, 422, "boxes"),
        ({"n": 17}, 422, "n"),
        ({"image": {"width": 4096, "height": 96}}, 422, "image.width"),
        ({"n": 16, "image": {"width": 1024, "height": 1024}}, 422, "n"),  # too many pixels in one response
        ({"style": {"brightness": 2}}, 422, "style.brightness"),
        ({"colour": "red"}, 422, "colour"),  # unknown keys are errors, not ignored
    ],
)
def test_bad_requests_get_4xx_naming_the_field(server, overrides, status, field):
    r = gen(server, **overrides)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"]


def test_bad_json_and_oversized_body(server):
    r = server.post("/v1/generate", content=b'{"generator": "procedural",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    big = json.dumps({"generator": "procedural", "domain": "x" * 9000})
    r = server.post("/v1/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text


def test_generator_failure_is_a_5xx_with_an_id_and_the_replica_keeps_serving(server):
    r = gen(server, generator="toy", checkpoint="toy/a.json", **{"class": "boom"})
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert len(err["error_id"]) == 12 and err["error_id"] in err["message"]
    ok = gen(server, generator="toy", checkpoint="toy/a.json")
    assert ok.status_code == 200 and decode(ok.json()["images"][0])[0, 0] == 40  # the checkpoint's level
    assert gen(server).status_code == 200
    assert server.get("/healthz").json()["status"] == "ok"

    # concurrent good and failing requests (possibly in one batch): only the failing ones fail
    def one(i):
        return gen(server, generator="toy", checkpoint="toy/a.json", seed=i, **{"class": "boom" if i % 3 == 0 else "dent"}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(12)))
    assert codes == [500 if i % 3 == 0 else 200 for i in range(12)]


def test_multiplexed_checkpoints_with_lru_unloading(server):
    levels = {}
    for name in ["a", "b", "c", "a"]:
        r = gen(server, generator="toy", checkpoint=f"toy/{name}.json")
        assert r.status_code == 200, r.text
        levels[name] = int(decode(r.json()["images"][0])[0, 0])
    assert levels == {"a": 40, "b": 80, "c": 120}
    # a path-valued param names a file under the root: resolved there, and a distinct model
    r = gen(server, generator="toy", checkpoint="toy/a.json", params={"level_file": "toy/b.json"})
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0])[0, 0] == 80
    levels["a+b"] = 80
    toy = next(g for g in server.get("/v1/generators").json()["generators"] if g["kind"] == "toy")
    # max 2 models per replica, LRU: the last two loaded remain, listed by request names (no server paths)
    assert sorted((m["checkpoint"], json.dumps(m["params"])) for m in toy["loaded"]) == sorted([
        ("toy/a.json", "{}"), ("toy/a.json", '{"level_file": "toy/b.json"}')])


def test_replica_refuses_params_naming_paths_outside_the_roots(tmp_path, monkeypatch):
    """The replica-side rule catches bare names relative to its working folder."""
    from serve.checkpoints import ParamPathRefused, check_param_paths, resolve_param_paths

    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    (tmp_path / "secrets").mkdir()
    monkeypatch.chdir(tmp_path)
    check_param_paths({"mode": "bilinear", "n": 3, "f": str(root / "m")}, [root])
    with pytest.raises(ParamPathRefused) as e:
        check_param_paths({"refs": ["secrets"]}, [root])
    assert e.value.loc == "params.refs[0]"
    (root / "m" / "w.pt").write_bytes(b"w")
    assert resolve_param_paths({"a": "m", "b": {"c": "m/w.pt"}}, [root]) == {"a": "m", "b": {"c": str(root / "m" / "w.pt")}}
    for bad in ["./m", "~/x", "s3://bucket/w.pt", "m/missing.pt"]:
        with pytest.raises(ParamPathRefused):
            resolve_param_paths({"a": bad}, [root])


def test_listing_health_and_docs(server):
    listing = server.get("/v1/generators").json()
    proc = next(g for g in listing["generators"] if g["kind"] == "procedural")
    assert "crack" in proc["classes"] and proc["device"] == "cpu" and proc["batching"] is True
    assert server.get("/healthz").status_code == 200
    assert server.get("/docs").status_code == 200
    assert "/v1/generate" in server.get("/openapi.json").json()["paths"]


def test_cli_generate_saves_png_and_yolo_labels(server, tmp_path):
    from typer.testing import CliRunner

    from factory.cli import app

    url = str(server.base_url)
    res = CliRunner().invoke(app, ["generate", "--server", url, "--class", "black_spot", "--box", "10,20,50,40",
                                   "--width", "64", "--height", "64", "--seed", "5", "--out", str(tmp_path), "--name", "x"])
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "x.png")).shape == (64, 64)
    cls, cx, cy, w, h = (tmp_path / "x.txt").read_text().split()
    assert cls == "1"  # black_spot's index among the procedural classes
    assert 10 / 64 <= float(cx) - float(w) / 2 and float(cx) + float(w) / 2 <= 50 / 64 + 1e-6
    assert 20 / 64 <= float(cy) - float(h) / 2 and float(cy) + float(h) / 2 <= 40 / 64 + 1e-6
    bad = CliRunner().invoke(app, ["generate", "--server", url, "--class", "crack", "--box", "10,20,500,40"])
    assert bad.exit_code == 2 and "outside" in bad.output
