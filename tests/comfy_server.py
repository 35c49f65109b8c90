"""Run a real ComfyUI headless in a subprocess, for integration tests of this node pack.

`ComfyServer` starts ComfyUI's `main.py` from a checkout with every folder ComfyUI writes to (models, custom_nodes,
input, output, temp, user, its sqlite database) moved under one work directory, so the checkout itself is never
modified. The work directory's `custom_nodes/` holds a single symlink to the pack under test. The server listens on
a free loopback port; `--cpu`, no browser, no API nodes, no bytecode written into the checkout, Hugging Face offline.

It talks to the server over plain HTTP with the standard library only (no `requests`), so it runs in any test venv.

It knows nothing about this pack's nodes, about workflow formats (UI -> API conversion lives elsewhere), or about
pytest (fixtures are written by the test files that use it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_TAIL_CHARS = 6000
POLL_INTERVAL_S = 0.2
HTTP_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0

# Model sub-folders created up front so tests can drop files in without thinking about ComfyUI's layout.
MODEL_SUBFOLDERS = ("diffusers", "loras", "diffusion_models", "text_encoders", "vae", "checkpoints", "vlm", "LLM")

# Environment for the ComfyUI process: offline, unbuffered, and no __pycache__ written into the checkout.
OFFLINE_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}

# A loopback-only opener: ignore any http_proxy/https_proxy in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ComfyServerError(RuntimeError):
    """The ComfyUI process failed to start, died, or did not answer in time. The message ends with the log tail."""


class ComfyPromptError(ComfyServerError):
    """`POST /prompt` was rejected (HTTP 400). `.body` is the parsed response: `{"error": ..., "node_errors": ...}`."""

    def __init__(self, message: str, body: Any):
        super().__init__(message)
        self.body = body


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_open(port: int) -> bool:
    """True if something already accepts connections on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the test process dies, so no ComfyUI is left behind."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def default_python(comfy_dir: Path) -> str:
    """`$COMFYUI_PYTHON`, else `<comfy_dir>/../venv/bin/python` if it exists, else this interpreter."""
    from_env = os.environ.get("COMFYUI_PYTHON")
    if from_env:
        return from_env
    sibling_venv = comfy_dir.parent / "venv" / "bin" / "python"
    if sibling_venv.exists():
        return str(sibling_venv)
    return sys.executable


def history_error(entry: dict) -> str | None:
    """The execution error recorded in a `/history` entry as one line, or None if the prompt succeeded."""
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return None
    for name, data in status.get("messages", []):
        if name == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message', '').strip()}"
        if name == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "status 'error' without an execution_error message"


class ComfyServer:
    """One ComfyUI subprocess serving `pack_dir` as its only custom node pack, with all state under `work_dir`."""

    def __init__(
        self,
        comfy_dir: Path,
        pack_dir: Path,
        work_dir: Path,
        python: str | None = None,
        port: int | None = None,
        *,
        pack_name: str | None = None,
        api_nodes: bool = False,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ):
        self.comfy_dir = Path(comfy_dir).resolve()
        self.pack_dir = Path(pack_dir).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.python = python or default_python(self.comfy_dir)
        self.port = port or free_loopback_port()
        self.pack_name = pack_name or self.pack_dir.name
        self.api_nodes = api_nodes
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(extra_env or {})
        self.log_path = self.work_dir / "comfyui.log"
        self.start_seconds: float | None = None
        self._process: subprocess.Popen | None = None
        self._log_file = None
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyServerError(f"{self.comfy_dir} has no main.py: point comfy_dir at a ComfyUI checkout.")

    # ----- layout -----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        """`folder_paths.models_dir` of the server: put test models in e.g. `models_dir / "diffusers" / name`."""
        return self.work_dir / "models"

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.work_dir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.work_dir / "temp"

    @property
    def user_dir(self) -> Path:
        return self.work_dir / "user"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.work_dir / "custom_nodes"

    def command(self) -> list[str]:
        """The exact command line `start()` runs (cwd = comfy_dir)."""
        database = self.user_dir / "comfyui.db"
        cmd = [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--base-directory",
            str(self.work_dir),
            "--user-directory",
            str(self.user_dir),
            "--database-url",
            f"sqlite:///{database}",
            "--log-stdout",
        ]
        if not self.api_nodes:
            cmd.append("--disable-api-nodes")
        return [*cmd, *self.extra_args]

    def _prepare_work_dir(self) -> None:
        for folder in (self.output_dir, self.input_dir, self.user_dir, self.custom_nodes_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for sub in MODEL_SUBFOLDERS:
            (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / self.pack_name
        if link.is_symlink() and link.resolve() != self.pack_dir:
            link.unlink()
        if not link.exists():
            link.symlink_to(self.pack_dir, target_is_directory=True)
        others = sorted(p.name for p in self.custom_nodes_dir.iterdir() if p.name != self.pack_name)
        if others:
            logger.warning("custom_nodes in %s also holds %s; ComfyUI will load them too", self.work_dir, others)
        if (self.comfy_dir / "extra_model_paths.yaml").exists():
            logger.warning("%s/extra_model_paths.yaml exists and is always loaded by ComfyUI", self.comfy_dir)

    # ----- process ----------------------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> ComfyServer:
        """Launch ComfyUI and wait until `/system_stats` answers. Raises ComfyServerError with the log tail."""
        if self.is_alive():
            return self
        if port_is_open(self.port):
            raise ComfyServerError(f"port {self.port} is already in use: pass another port, or None for a free one")
        self._prepare_work_dir()
        env = {**os.environ, **OFFLINE_ENV, **self.extra_env}
        cmd = self.command()
        logger.info("starting ComfyUI: %s (cwd %s)", " ".join(cmd), self.comfy_dir)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the life of the process
        started = time.monotonic()
        self._process = subprocess.Popen(
            cmd,
            cwd=self.comfy_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self.is_alive():
                code = self._process.returncode
                self._close_log()
                raise ComfyServerError(f"ComfyUI exited with code {code} while starting.\n{self.log_tail()}")
            try:
                stats = self.get("/system_stats", timeout=2.0)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(POLL_INTERVAL_S)
                continue
            if str(self.work_dir) not in stats.get("system", {}).get("argv", []):
                self.stop()
                raise ComfyServerError(f"another server answered on port {self.port}: {stats}\n{self.log_tail()}")
            self.start_seconds = time.monotonic() - started
            logger.info("ComfyUI answered at %s after %.1f s", self.url, self.start_seconds)
            return self
        self.stop()
        raise ComfyServerError(f"ComfyUI did not answer at {self.url} within {timeout:.0f} s.\n{self.log_tail()}")

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the server's process group, then SIGKILL it after `grace` seconds."""
        process = self._process
        if process is not None and process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait(timeout=grace)
        self._close_log()

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, sig)  # its own session, started by start()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def log_text(self) -> str:
        """Everything ComfyUI printed so far (stdout and stderr)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        text = self.log_text()
        return f"--- ComfyUI log tail ({self.log_path}) ---\n{text[-chars:]}"

    # ----- HTTP -------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT_S) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw.decode("utf-8", errors="replace")

    def get(self, path: str, timeout: float = HTTP_TIMEOUT_S) -> Any:
        """GET `path` (e.g. "/system_stats") and return the decoded JSON."""
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT_S) -> Any:
        """POST `body` as JSON to `path`; returns the decoded JSON answer (None if empty)."""
        return self._request("POST", path, body if body is not None else {}, timeout=timeout)

    def object_info(self, node_id: str | None = None) -> dict:
        """`/object_info` (all nodes) or the schema of one node, `{"inputs": ..., "output": ...}`-style dict."""
        if node_id is None:
            return self.get("/object_info")
        info = self.get(f"/object_info/{node_id}")
        if node_id not in info:
            raise ComfyServerError(f"ComfyUI does not know node {node_id!r}; is the pack loaded?\n{self.log_tail()}")
        return info[node_id]

    def workflow_templates(self) -> dict:
        """`/workflow_templates`: {custom node folder name: [workflow names]} of the packs' example workflows."""
        return self.get("/workflow_templates")

    def queue(self, api_prompt: dict, client_id: str | None = None) -> str:
        """POST an API-format prompt; return its prompt_id. HTTP 400 raises ComfyPromptError with the node errors."""
        return self.submit(api_prompt, client_id)["prompt_id"]

    def submit(self, api_prompt: dict, client_id: str | None = None) -> dict:
        """POST an API-format prompt; return ComfyUI's answer (`prompt_id`, `number`, `node_errors`).

        ComfyUI queues a prompt when at least one output node is valid and drops the invalid ones: their
        errors are in the answer's `node_errors`. When none is valid it answers HTTP 400: ComfyPromptError."""
        payload = {"prompt": api_prompt, "client_id": client_id or uuid.uuid4().hex}
        try:
            answer = self.post("/prompt", payload)
        except urllib.error.HTTPError as error:
            raw = error.read().decode("utf-8", errors="replace")
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = raw
            raise ComfyPromptError(
                f"ComfyUI rejected the prompt (HTTP {error.code}): {json.dumps(body, indent=1)[:LOG_TAIL_CHARS]}", body
            ) from None
        return answer

    def history(self, prompt_id: str) -> dict | None:
        """The `/history/<id>` entry of a finished prompt, or None while it is queued or running."""
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300.0, check: bool = False) -> dict:
        """Poll `/history/<id>` until the prompt finished and return its entry (`outputs`, `status`, ...).

        With `check=True` an execution error or interrupt raises ComfyServerError; otherwise inspect
        `history_error(entry)` yourself."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:
                error = history_error(entry) if check else None
                if error:
                    raise ComfyServerError(f"prompt {prompt_id} failed: {error}\n{self.log_tail()}")
                return entry
            self._raise_if_dead()
            time.sleep(POLL_INTERVAL_S)
        raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.\n{self.log_tail()}")

    def queue_state(self) -> tuple[list[str], list[str]]:
        """prompt_ids (running, pending) from `/queue`."""
        queue = self.get("/queue")
        return [item[1] for item in queue["queue_running"]], [item[1] for item in queue["queue_pending"]]

    def wait_until_running(self, prompt_id: str, timeout: float = 60.0) -> bool:
        """Block until `prompt_id` is the running prompt (True) or already finished (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running, _ = self.queue_state()
            if prompt_id in running:
                return True
            if self.history(prompt_id) is not None:
                return False
            self._raise_if_dead()
            time.sleep(POLL_INTERVAL_S / 2)
        raise ComfyServerError(f"prompt {prompt_id} did not start within {timeout:.0f} s.\n{self.log_tail()}")

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: stop the running prompt (only `prompt_id` if given and it is the running one)."""
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free. ComfyUI applies the flags in its prompt worker, between prompts."""
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def _raise_if_dead(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise ComfyServerError(f"ComfyUI exited with code {self._process.returncode}.\n{self.log_tail()}")


class MessageRecorder:
    """Records what ComfyUI sends one editor over its websocket (`/ws?clientId=...`): JSON and binary messages.

    A minimal RFC 6455 client on the standard library, enough for a server that sends whole, unmasked frames
    (aiohttp does) and never needs an answer: it only reads. Binary messages start with ComfyUI's 4-byte event type
    (1 preview image, 3 node text, 4 preview image with metadata).
    """

    def __init__(self, server: ComfyServer, client_id: str | None = None) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
        self._socket = socket.create_connection((host, port), timeout=HTTP_TIMEOUT_S)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws?clientId={self.client_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self._socket.sendall(request.encode())
        self._stream = self._socket.makefile("rb")
        status = self._stream.readline()
        if b" 101 " not in status:
            raise ComfyServerError(f"websocket handshake refused: {status!r}")
        while self._stream.readline() not in (b"\r\n", b""):
            pass
        self._socket.settimeout(None)
        self.text: list[dict] = []
        self.binary: list[tuple[int, bytes]] = []
        self._reader = threading.Thread(target=self._read_frames, daemon=True)
        self._reader.start()

    def _read_exactly(self, count: int) -> bytes:
        data = self._stream.read(count)
        if data is None or len(data) < count:
            raise EOFError
        return data

    def _read_frames(self) -> None:
        with contextlib.suppress(EOFError, OSError, ValueError):
            while True:
                first, second = self._read_exactly(2)
                opcode, length = first & 0x0F, second & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._read_exactly(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._read_exactly(8))[0]
                if second & 0x80:
                    self._read_exactly(4)  # a server never masks; skip a mask anyway
                payload = self._read_exactly(length)
                if opcode == 0x1:
                    self.text.append(json.loads(payload))
                elif opcode == 0x2:
                    self.binary.append((struct.unpack(">I", payload[:4])[0], payload[4:]))
                elif opcode == 0x8:
                    return

    def messages(self, kind: str) -> list[dict]:
        """The `data` of every JSON message of `kind` ("progress", "executed", "executing", ...)."""
        return [m["data"] for m in list(self.text) if m.get("type") == kind]

    def node_texts(self) -> list[tuple[str, str]]:
        """`(node id, text)` of every "text on the node" message (`PromptServer.send_progress_text`)."""
        texts = []
        for event, payload in list(self.binary):
            if event == 3:
                size = struct.unpack(">I", payload[:4])[0]
                texts.append((payload[4 : 4 + size].decode(), payload[4 + size :].decode()))
        return texts

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.close()
