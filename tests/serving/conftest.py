"""Fixtures for the serving tests: a model directory with a tokenizer, and `trident serve`
started on a free loopback port (--port 0; the server prints the port it took).
$TRIDENT_SERVE_ARGS adds flags to every server (e.g. "--device cuda" on a GPU machine)."""

import http.client
import json
import os
from json import dumps
import queue
import re
import shlex
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("TRIDENT_MODELS_DIR", REPO / "models"))
CLIENT_TIMEOUT = 60  # seconds for any one client call


def trident_binary():
    path = os.environ.get("TRIDENT_BINARY") or str(REPO / "build" / "trident")
    if not Path(path).exists():
        pytest.fail(f"no trident binary at {path}: build it, or set TRIDENT_BINARY")
    return path


@pytest.fixture(scope="session")
def binary():
    return trident_binary()


def find_model_dir() -> Path:
    """$TRIDENT_SERVE_MODEL if set, else the default model shipped in models/ (a small trained
    model: greedy text is readable English, so stop strings and chat have real text to act on)."""
    if os.environ.get("TRIDENT_SERVE_MODEL"):
        return Path(os.environ["TRIDENT_SERVE_MODEL"])
    model = MODELS / "trident-tiny"
    if not (model / "config.json").exists() or not (model / "tokenizer.json").exists():
        pytest.fail(f"no model at {model}: the default model ships with the repository "
                    f"(set TRIDENT_SERVE_MODEL to serve another)")
    return model


@pytest.fixture(scope="session")
def model_dir():
    return find_model_dir()


class Reply:
    def __init__(self, status_code, text):
        self.status_code, self.text = status_code, text

    def json(self):
        return json.loads(self.text)


def request(server, method, path, json=None, content=None, headers=None, timeout=CLIENT_TIMEOUT):
    """One HTTP request with the standard library (no client package assumed)."""
    body = content if content is not None else (None if json is None else dumps(json).encode())
    headers = {"Content-Type": "application/json", **(headers or {})} if body is not None else (headers or {})
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Reply(r.status, r.read().decode("utf-8", errors="replace"))
    finally:
        conn.close()


class Server:
    """`trident serve` in a child process; stop() ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, binary, model_dir, *extra):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="trident-serve-", suffix=".log",
                                               delete=False)
        # One OpenMP thread: tests run side by side on few cores, where OpenMP threads that wait
        # for each other at every op's barrier make each step many times slower.
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(
            [binary, "serve", "--model", str(model_dir), "--port", "0",
             *shlex.split(os.environ.get("TRIDENT_SERVE_ARGS", "")), *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        first_line = queue.Queue()
        threading.Thread(target=lambda: first_line.put(self.proc.stdout.readline()),
                         daemon=True).start()
        try:
            line = first_line.get(timeout=60)
        except queue.Empty:
            self.stop()
            pytest.fail(f"trident serve did not start within 60 s: {self.logs()}")
        m = re.search(r"listening on http://([\d.]+):(\d+)", line)
        if not m:
            self.stop()
            pytest.fail(f"trident serve did not start (exit {self.proc.returncode}): {self.logs()}")
        self.host, self.port = m.group(1), int(m.group(2))
        self.url = f"http://{self.host}:{self.port}"
        self.model = Path(model_dir).name
        if "--served-model-name" in extra:
            self.model = extra[extra.index("--served-model-name") + 1]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.flush()

    def logs(self):
        return Path(self.log.name).read_text()

    def get(self, path, **kw):
        return request(self, "GET", path, **kw)

    def post(self, path, **kw):
        return request(self, "POST", path, **kw)

    def stream(self, path, json_body, timeout=CLIENT_TIMEOUT):
        """POSTs and returns the open response to read line by line; close() it when done."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.request("POST", path, body=json.dumps(json_body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.connection_to_close = conn
        return response

    def metrics(self):
        """/metrics as {'name{labels}': value}."""
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        values = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


@pytest.fixture(scope="module")
def server(binary, model_dir):
    s = Server(binary, model_dir)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def start_server(binary, model_dir):
    """Starts servers with extra flags; all stop at the end of the module."""
    started = []

    def start(*extra):
        s = Server(binary, model_dir, *extra)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
