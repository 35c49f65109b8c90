"""Take a PNG picture of a workflow as ComfyUI's graph editor shows it (developer tool, not run by CI).

    python tools/screenshot_workflow.py --url http://127.0.0.1:8188 --workflow wf.json --out wf.png

Starts a headless Chromium (Debian package `chromium`, or --chromium PATH) and drives it through the Chrome
DevTools Protocol over `--remote-debugging-pipe` (file descriptors 3 and 4, so only the standard library is
needed: no websocket package). It opens the editor, waits for `window.app`, closes first-run dialogs, calls
`app.loadGraphData(workflow)`, fits the view around all nodes and groups, and captures the page.

Chromium gets a throw-away profile, no proxy, and a host resolver that resolves nothing but the server's own
host, so the editor's calls to the internet (release notes, registry, fonts) fail fast instead of leaking out;
`--verbose` lists the requests that were blocked.

The frontend itself stores two settings on the server on a first visit to a fresh user folder
(`Comfy.TutorialCompleted`, `Comfy.InstalledVersion`, in `user/default/comfy.settings.json`); the tool writes nothing
else there. Dialogs that open (template browser on a first visit, missing nodes) are closed; the minimap and the
render statistics are hidden in this browser only.

It knows nothing about this node pack; it needs a running ComfyUI that knows the workflow's node types (else the
editor draws them as missing nodes).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

logger = logging.getLogger("screenshot_workflow")

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CDP_TIMEOUT_S = 60.0
APP_READY_TIMEOUT_S = 90.0
SETTLE_SECONDS = 1.0
FRONTEND_ONLY_TYPES = ("Note", "MarkdownNote")  # drawn by the editor itself, never by a server
FIT_MARGIN_PX = 24  # free border around the fitted graph
ZOOM_TOOLBAR_PX = 64  # strip at the bottom of the canvas where the zoom toolbar floats

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--password-store=basic",
    "--use-mock-keychain",
)

# JavaScript run in the page. Each is an async arrow function called with one JSON argument.
JS_APP_READY = "() => Boolean(window.app && window.app.graph && window.app.canvas && window.app.canvas.ds)"

JS_CLOSE_DIALOGS = """async () => {
  let closed = 0;
  for (let round = 0; round < 5; round++) {
    const buttons = [...document.querySelectorAll('.p-dialog .p-dialog-close-button, .p-dialog-header-close')];
    if (!buttons.length) break;
    for (const button of buttons) { button.click(); closed++; }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  for (const toast of document.querySelectorAll('.p-toast-close-button')) { toast.click(); closed++; }
  return closed;
}"""

# Hides, in this browser only (no setting is saved), what would cover nodes: the minimap and the render statistics.
JS_HIDE_OVERLAYS = """() => {
  const style = document.createElement('style');
  style.textContent = '.minimap-main-container { display: none !important; }';
  document.head.appendChild(style);
  window.app.canvas.show_info = false;
  return true;
}"""

# Loads the workflow, then sets the view (DragAndScale: screen = (graph + offset) * scale) so the bounding box of
# all nodes and groups is centred in the canvas minus a margin and the zoom toolbar strip at the bottom.
JS_LOAD_AND_FIT = """async (args) => {
  const app = window.app;
  await app.loadGraphData(args.workflow, true, false, args.name);
  await new Promise((resolve) => setTimeout(resolve, 200));
  const canvas = app.canvas;
  const nodes = app.graph.nodes || app.graph._nodes || [];
  const items = [...nodes, ...(app.graph.groups || app.graph._groups || [])];
  if (!items.length) return {nodes: 0, missing: []};
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const item of items) {
    const rect = item.boundingRect || [item.pos[0], item.pos[1], item.size[0], item.size[1]];
    x0 = Math.min(x0, rect[0]); y0 = Math.min(y0, rect[1]);
    x1 = Math.max(x1, rect[0] + rect[2]); y1 = Math.max(y1, rect[1] + rect[3]);
  }
  const width = canvas.canvas.width / devicePixelRatio - 2 * args.margin;
  const height = canvas.canvas.height / devicePixelRatio - 2 * args.margin - args.bottomInset;
  const scale = Math.min(width / (x1 - x0), height / (y1 - y0), args.maxScale);
  canvas.ds.scale = scale;
  canvas.ds.offset[0] = (args.margin + width / 2) / scale - (x0 + x1) / 2;
  canvas.ds.offset[1] = (args.margin + height / 2) / scale - (y0 + y1) / 2;
  canvas.setDirty(true, true);
  canvas.draw(true, true);
  const missing = nodes.filter((node) => node.has_errors || !node.constructor?.nodeData).map((node) => node.type);
  return {nodes: nodes.length, groups: items.length - nodes.length, scale, missing};
}"""

JS_NEXT_FRAMES = "() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(() => resolve(1))))"


class CdpError(RuntimeError):
    """Chromium answered a DevTools command with an error, died, or did not answer in time."""


class DevToolsPipe:
    """Chrome DevTools Protocol over --remote-debugging-pipe: NUL-terminated JSON messages on two pipes."""

    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int):
        self.process = process
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.events: list[dict] = []
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, params: dict | None = None, session_id: str | None = None, timeout=CDP_TIMEOUT_S):
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        payload = json.dumps(message).encode("utf-8") + b"\0"
        while payload:
            payload = payload[os.write(self.to_browser, payload) :]
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline, method)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CdpError(f"{method} failed: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def _read_message(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CdpError(f"Chromium did not answer {method} in time")
            ready, _, _ = select.select([self.from_browser], [], [], min(remaining, 1.0))
            if not ready:
                if self.process.poll() is not None:
                    raise CdpError(f"Chromium exited with code {self.process.returncode}")
                continue
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise CdpError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)


class Page:
    """One browser tab attached with a flat session."""

    def __init__(self, pipe: DevToolsPipe, session_id: str):
        self.pipe = pipe
        self.session_id = session_id

    def call(self, method: str, params: dict | None = None, timeout: float = CDP_TIMEOUT_S) -> dict:
        return self.pipe.call(method, params, self.session_id, timeout)

    def run(self, function: str, argument: Any = None, timeout: float = CDP_TIMEOUT_S) -> Any:
        """Call a JavaScript (async) function in the page with one JSON argument; return its JSON result."""
        expression = f"({function})({json.dumps(argument)})"
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "timeout": timeout * 1000},
            timeout=timeout + 5,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"JavaScript failed: {text}")
        return result["result"].get("value")

    def wait_for(self, function: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.run(function, timeout=10):
                    return
            except CdpError as error:  # the page may still be navigating
                logger.debug("waiting: %s", error)
            time.sleep(0.25)
        raise CdpError(f"timed out after {timeout:.0f} s waiting for {function}")


def find_chromium(explicit: str | None) -> str:
    for name in (explicit, *CHROMIUM_NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SystemExit("No Chromium found: install it (`apt-get install -y chromium`) or pass --chromium PATH.")


def launch_chromium(binary: str, host: str, width: int, height: int, profile_dir: str):
    """Start Chromium with the DevTools pipe on its fds 3 (commands in) and 4 (answers out).

    Python opens files non-inheritable, so with close_fds=False only stdio and the two dup2'ed pipe ends reach
    Chromium."""
    commands_read, commands_write = os.pipe()
    answers_read, answers_write = os.pipe()

    def wire_pipes():  # runs in the child between fork and exec; dup first so 3/4 never clobber a source fd
        commands, answers = os.dup(commands_read), os.dup(answers_write)
        os.dup2(commands, 3)
        os.dup2(answers, 4)

    flags = [
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile_dir}",
        f"--window-size={width},{height}",
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
        "about:blank",
    ]
    with open(Path(profile_dir) / "chromium-stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [binary, *flags],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            close_fds=False,
            preexec_fn=wire_pipes,
            start_new_session=True,
        )
    os.close(commands_read)
    os.close(answers_write)
    return process, DevToolsPipe(process, commands_write, answers_read)


def stop_chromium(process: subprocess.Popen) -> None:
    """SIGTERM Chromium's own process group (browser, zygote, renderers), then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def open_page(pipe: DevToolsPipe, width: int, height: int) -> Page:
    target = pipe.call("Target.createTarget", {"url": "about:blank"})
    attached = pipe.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
    page = Page(pipe, attached["sessionId"])
    page.call("Page.enable")
    page.call("Runtime.enable")
    page.call("Network.enable")
    page.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    return page


def external_requests(events: list[dict], server_host: str) -> list[str]:
    """URLs the page tried to fetch from hosts other than the ComfyUI server (blocked by the resolver rule)."""
    urls = []
    for event in events:
        if event.get("method") == "Network.requestWillBeSent":
            url = event["params"]["request"]["url"]
            host = urllib.parse.urlparse(url).hostname
            if host and host != server_host and url not in urls:
                urls.append(url)
    return urls


def screenshot_workflow(
    url: str,
    workflow: dict,
    out: Path,
    *,
    name: str = "workflow",
    width: int = 1600,
    height: int = 900,
    max_scale: float = 1.25,
    chromium: str | None = None,
) -> dict:
    """Render `workflow` (UI format) in the editor at `url` and write a PNG to `out`; returns what the page said."""
    server_host = urllib.parse.urlparse(url).hostname or "127.0.0.1"
    binary = find_chromium(chromium)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drf-chromium-", ignore_cleanup_errors=True) as profile_dir:
        process, pipe = launch_chromium(binary, server_host, width, height, profile_dir)
        try:
            page = open_page(pipe, width, height)
            page.call("Page.navigate", {"url": url})
            page.wait_for(JS_APP_READY, APP_READY_TIMEOUT_S)
            time.sleep(SETTLE_SECONDS)  # first-run dialogs open shortly after the app is ready
            closed = page.run(JS_CLOSE_DIALOGS)
            page.run(JS_HIDE_OVERLAYS)
            fit = {"margin": FIT_MARGIN_PX, "bottomInset": ZOOM_TOOLBAR_PX, "maxScale": max_scale}
            loaded = page.run(JS_LOAD_AND_FIT, {"workflow": workflow, "name": name, **fit})
            closed += page.run(JS_CLOSE_DIALOGS)  # e.g. the missing-nodes dialog
            page.run(JS_NEXT_FRAMES)
            time.sleep(SETTLE_SECONDS)
            shot = page.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
            blocked = external_requests(pipe.events, server_host)
            with contextlib.suppress(CdpError):
                pipe.call("Browser.close", timeout=10)
        except CdpError:
            stderr_log = Path(profile_dir) / "chromium-stderr.log"
            logger.error(
                "Chromium stderr (tail):\n%s", stderr_log.read_text(encoding="utf-8", errors="replace")[-4000:]
            )
            raise
        finally:
            stop_chromium(process)
            os.close(pipe.to_browser)
            os.close(pipe.from_browser)
    return {**loaded, "dialogs_closed": closed, "blocked_requests": blocked, "seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ComfyUI server, e.g. http://127.0.0.1:8188")
    parser.add_argument("--workflow", required=True, type=Path, help="workflow JSON in UI format (as the editor saves)")
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--max-scale", type=float, default=1.25, help="largest zoom used to fit a small workflow")
    parser.add_argument("--chromium", help=f"Chromium binary (default: first of {', '.join(CHROMIUM_NAMES)} on PATH)")
    parser.add_argument("--verbose", action="store_true", help="log blocked requests and Chromium's stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")

    workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
    if "nodes" not in workflow:
        raise SystemExit(f"{args.workflow} is not a UI-format workflow (no 'nodes'): API prompts have no layout.")
    report = screenshot_workflow(
        args.url.rstrip("/"),
        workflow,
        args.out,
        name=args.workflow.stem,
        width=args.width,
        height=args.height,
        max_scale=args.max_scale,
        chromium=args.chromium,
    )
    logger.info(
        "wrote %s: %d nodes, %d groups, scale %.2f, %d dialog(s) closed, %.1f s",
        args.out,
        report["nodes"],
        report.get("groups", 0),
        report.get("scale", 0.0),
        report["dialogs_closed"],
        report["seconds"],
    )
    missing = sorted(set(report.get("missing", [])) - set(FRONTEND_ONLY_TYPES))
    if missing:
        logger.warning("the editor does not know these node types: %s", missing)
    for blocked in report["blocked_requests"]:
        logger.debug("blocked external request: %s", blocked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
