"""`factory serve` (start the online generation API on Ray Serve) and
`factory generate --server URL` (ask it for an image, save PNG + YOLO labels).
Heavy imports (ray, httpx) happen inside the command bodies."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from factory.cli.app import app
from factory.cli.common import EXIT_INVALID, console, fail, plural
from factory.ray_runtime import ensure_ray


@app.command("serve")
def serve_cmd(
    address: str | None = typer.Option(None, help="Ray cluster address (default: start an embedded local Ray)."),
    host: str | None = typer.Option(None, help="HTTP host to bind (default: the config's http_options.host)."),
    port: int | None = typer.Option(None, help="HTTP port (default: the config's http_options.port)."),
    config: Path | None = typer.Option(None, help="Serve config file whose http_options and app args to use (default: serve/config.yaml)."),
    checkpoint_root: list[Path] = typer.Option([], help="Checkpoint root (repeatable); replaces the config's roots."),
    registry_root: list[str] = typer.Option([], help="Dataset registry root, a path or s3:// URI (repeatable), where "
                                            "request NAME@VERSION references resolve; replaces the config's registry_roots."),
    no_batching: bool = typer.Option(False, "--no-batching", help="Turn @serve.batch off (one generate() per request)."),
) -> None:
    """Start the online generation API (docs at /docs). Embedded: runs until Ctrl-C.
    With --address the app is deployed on that cluster and keeps running there.
    The config's http_options (request_timeout_s included) apply as with `serve run`."""
    import logging
    import signal
    import time

    import ray
    from ray import serve as ray_serve

    from serve.app import APP_NAME, build_app, config_args, http_options

    args = config_args(config)
    options = http_options(config, host, port)
    if checkpoint_root:
        args["checkpoint_roots"] = [str(p.resolve()) for p in checkpoint_root]
    if registry_root:
        args["registry_roots"] = [r if "://" in r else str(Path(r).resolve()) for r in registry_root]
    if no_batching:
        args.setdefault("defaults", {})["batching"] = False
    ensure_ray(address)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the lines below say what happened, once

    def _stop(signum, frame):  # SIGTERM (containers, `kill`) stops it like Ctrl-C
        raise KeyboardInterrupt

    if address:  # a cluster: deploy, and leave it running there
        _deploy(ray_serve, build_app(args), options)
        console.print(f"deployed as application {APP_NAME!r} on {address}; stop it with `serve shutdown`")
        return
    signal.signal(signal.SIGTERM, _stop)
    try:
        _deploy(ray_serve, build_app(args), options)
        console.print("Ctrl-C to stop")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        _stop_embedded(ray, ray_serve, APP_NAME)


def _deploy(ray_serve, application, options: dict) -> None:
    from serve.app import APP_NAME

    try:
        ray_serve.start(http_options=options)
        ray_serve.run(application, name=APP_NAME, route_prefix="/")
    except Exception as e:  # noqa: BLE001 - a bad config or a busy port: say it in one line
        fail(f"could not start the serve app: {type(e).__name__}: {e}")
    host, port = options.get("host", "127.0.0.1"), options.get("port", 8000)
    timeout = options.get("request_timeout_s")
    console.print(f"serving on [bold]http://{host}:{port}[/] (docs /docs, health /healthz"
                  + (f"; timeout {timeout:g} s)" if timeout else ")"), soft_wrap=True)


def _stop_embedded(ray, ray_serve, app_name: str) -> None:
    """Drain the app (in-flight requests finish), then end the embedded cluster.
    Not `serve.shutdown()`: it kills the controller while its own graceful_shutdown
    call is in flight, which Ray reports as a failed task on the console."""
    try:
        ray_serve.delete(app_name)
    except Exception as e:  # noqa: BLE001 - stopping anyway
        console.print(f"could not drain the app cleanly ({type(e).__name__}); stopping Ray")
    ray.shutdown()


def _pairs(values: list[str], what: str, parse_json: bool) -> dict:
    out = {}
    for v in values:
        key, sep, raw = v.partition("=")
        if not sep or not key:
            fail(f"--{what} {v!r}: expected key=value", EXIT_INVALID)
        if parse_json:
            try:
                out[key] = json.loads(raw)
            except json.JSONDecodeError:
                out[key] = raw
        else:
            try:
                out[key] = float(raw)
            except ValueError:
                fail(f"--{what} {v!r}: value must be a number", EXIT_INVALID)
    return out


def _box(text: str) -> list[int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4:
        fail(f"--box {text!r}: expected x1,y1,x2,y2 in pixels", EXIT_INVALID)
    return parts


def yolo_lines(boxes: list[dict], width: int, height: int) -> list[str]:
    """YOLO label lines: `class cx cy w h`, normalized to the image size."""
    lines = []
    for b in boxes:
        cx, cy = (b["x1"] + b["x2"]) / 2 / width, (b["y1"] + b["y2"]) / 2 / height
        w, h = (b["x2"] - b["x1"]) / width, (b["y2"] - b["y1"]) / height
        lines.append(f"{b['class_id']} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


@app.command("generate")
def generate_cmd(
    server: str = typer.Option(..., help="Base URL of a running `factory serve`, e.g. http://127.0.0.1:8000."),
    generator: str = typer.Option("procedural", help="Generator kind."),
    class_name: str | None = typer.Option(None, "--class", help="Defect class of the boxes."),
    box: list[str] = typer.Option([], help="A box x1,y1,x2,y2 in pixels (repeatable)."),
    checkpoint: str | None = typer.Option(None, help="Checkpoint name under the server's checkpoint roots."),
    param: list[str] = typer.Option([], help="Generator param key=value (value parsed as JSON; repeatable)."),
    style: list[str] = typer.Option([], help="Style knob key=number: brightness, contrast, grid_pitch, busbars, reference."),
    domain: str = typer.Option("default", help="Domain name."),
    width: int = typer.Option(256),
    height: int = typer.Option(256),
    channels: int = typer.Option(1),
    seed: int = typer.Option(0),
    n: int = typer.Option(1, help="Images (image i uses seed + i)."),
    out: Path = typer.Option(Path("."), help="Folder for <name>.png and <name>.txt (YOLO labels)."),
    name: str | None = typer.Option(None, help="File name stem (default: <generator>-<seed>)."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for the server."),
) -> None:
    """Ask a running server for images; save each PNG and its YOLO label file."""
    import base64

    import httpx

    body = {
        "generator": generator, "checkpoint": checkpoint, "params": _pairs(param, "param", True),
        "boxes": [_box(b) for b in box], "image": {"width": width, "height": height, "channels": channels},
        "domain": domain, "style": _pairs(style, "style", False), "seed": seed, "n": n,
    }
    if class_name is not None:
        body["class"] = class_name
    try:
        r = httpx.post(server.rstrip("/") + "/v1/generate", json=body, timeout=timeout)
    except httpx.HTTPError as e:
        fail(f"cannot reach {server}: {type(e).__name__}: {e}")
    if r.status_code != 200:
        try:
            err = r.json()["error"]
            msg = err["message"] + (f" (error id {err['error_id']})" if err.get("error_id") else "")
        except (ValueError, KeyError, TypeError):
            msg = r.text[:500]
        fail(f"server said {r.status_code}: {msg}", EXIT_INVALID if 400 <= r.status_code < 500 else 1)
    data = r.json()
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(data["images"]):
        stem = f"{name or f'{generator}-{seed}'}" + (f"-{i}" if len(data["images"]) > 1 else "")
        (out / f"{stem}.png").write_bytes(base64.b64decode(im["png_base64"]))
        (out / f"{stem}.txt").write_text("".join(line + "\n" for line in yolo_lines(im["boxes"], im["width"], im["height"])))
        verdict = im.get("verdict")
        gate = "" if verdict is None else (" gate: accepted" if verdict["accepted"] else f" gate: rejected ({'; '.join(verdict['reasons'])})")
        console.print(f"wrote {out / (stem + '.png')} + .txt: seed {im['seed']}, {plural(len(im['boxes']), 'box', 'boxes')}{gate}")
