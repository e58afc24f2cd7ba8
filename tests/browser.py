"""Open a page in headless Chromium and report what a person would see go wrong:
console errors, uncaught exceptions, failed loads (Chrome DevTools Protocol over a
local websocket; no browser driver). Used by tests/test_reports.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# every <img>: did it load (complete, with a non-zero natural size)?
_IMAGES_JS = """JSON.stringify({
  title: document.title,
  text: document.body ? document.body.innerText.length : 0,
  images: Array.from(document.images).map(i => ({alt: i.alt, src: i.src.slice(0, 80), complete: i.complete,
                                                 width: i.naturalWidth, height: i.naturalHeight}))
})"""


def chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@dataclass
class PageCheck:
    title: str
    text_chars: int
    images: list[dict]
    errors: list[str] = field(default_factory=list)

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]


class Browser:
    """One headless Chromium process on 127.0.0.1, a fresh profile, closed on exit."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = self._devtools_port()

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + self.timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            if "DevTools listening on ws://" in line:
                return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        self.close()
        raise RuntimeError("chromium did not start its DevTools endpoint:\n" + "".join(seen[-20:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, url: str) -> PageCheck:
        """Load `url` in a new tab; collect errors until its load event; read every image's state."""
        from websockets.sync.client import connect

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            target = json.loads(r.read())
        errors: list[str] = []
        next_id = iter(range(1, 10**6))
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:

            def on_event(m: dict) -> bool:
                method, p = m.get("method"), m.get("params", {})
                if method == "Runtime.exceptionThrown":
                    d = p["exceptionDetails"]
                    errors.append(f"uncaught: {(d.get('exception') or {}).get('description') or d.get('text')}")
                elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                    errors.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
                elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                    errors.append(f"{p['entry']['source']}: {p['entry']['text']} {p['entry'].get('url', '')}".strip())
                return method == "Page.loadEventFired"

            def call(method: str, params: dict | None = None, wait_load: bool = False) -> dict:
                i = next(next_id)
                ws.send(json.dumps({"id": i, "method": method, "params": params or {}}))
                result, loaded = None, not wait_load
                deadline = time.monotonic() + self.timeout
                while result is None or not loaded:
                    m = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                    if m.get("id") == i:
                        if "error" in m:
                            raise RuntimeError(f"{method}: {m['error']}")
                        result = m["result"]
                    elif on_event(m):
                        loaded = True
                return result

            for domain in ("Page", "Runtime", "Log"):
                call(f"{domain}.enable")
            nav = call("Page.navigate", {"url": url}, wait_load=True)
            if nav.get("errorText"):
                errors.append(f"navigation: {nav['errorText']}")
            # late messages (after the load event) still count: drain for a moment
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                try:
                    on_event(json.loads(ws.recv(timeout=max(0.01, end - time.monotonic()))))
                except TimeoutError:
                    break
            res = call("Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True})
            page = json.loads(res["result"]["value"])
        return PageCheck(page["title"], page["text"], page["images"], errors)


def check_page(path: Path | str) -> PageCheck:
    binary = chromium()
    if binary is None:
        raise RuntimeError("no chromium binary")
    with Browser(binary) as b:
        return b.check(Path(path).resolve().as_uri())
