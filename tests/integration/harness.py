"""Start and drive the real `quell` binary for integration tests.

Each QuellServer runs `quell serve` on a free loopback port with its own data
directory, and is stopped by PID (SIGTERM, or SIGKILL for crash tests).
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

QUELL = os.environ.get("QUELL_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "quell")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send_raw(port, data, timeout=10):
    """Sends `data` (bytes) on a new connection to 127.0.0.1:PORT and returns the reply
    up to the end of its header block (the server may answer before reading it all)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def run_cli(*args, check=True, env=None):
    """Runs `quell ARGS...` (in `env`, or this process's environment) and returns
    (exit code, stdout, stderr)."""
    p = subprocess.run([QUELL, *args], capture_output=True, text=True, timeout=60, env=env)
    if check and p.returncode != 0:
        raise AssertionError("quell %s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr))
    return p.returncode, p.stdout, p.stderr


class QuellServer:
    def __init__(self, data_dir=None, extra_args=(), env=None):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="quell-it-")
            data_dir = self._tmp.name
        self.data = data_dir
        self.extra_args = list(extra_args)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.port = None
        self.admin_key = None
        self.log_path = os.path.join(self.data, "server.log")

    def start(self, dev=True):
        self.port = free_port()
        args = [QUELL, "serve", "--data", self.data, "--listen", "127.0.0.1:%d" % self.port,
                "--threads", "2", *self.extra_args]
        if dev:
            args.append("--dev")
        self._log = open(self.log_path, "ab")
        self._out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._log, env=self.env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                with open(self.log_path) as log:
                    tail = log.read()[-3000:]
                raise AssertionError("quell exited with %d; log:\n%s" % (self.proc.returncode, tail))
            try:
                status, _, _ = self.request("GET", "/healthz", auth=False)
                if status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("quell did not become healthy")
        self._out.seek(0)
        m = re.search(r"admin key \(shown once\): (\S+)", self._out.read().decode())
        if m:
            self.admin_key = m.group(1)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        self._log.close()
        self._out.close()
        return code

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def cleanup(self):
        if self.proc is not None:
            self.kill9()
        if self._tmp is not None:
            self._tmp.cleanup()

    def connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(self, method, path, body=None, key=None, auth=True, headers=None, conn=None,
                raw=False):
        """Returns (status, parsed JSON or text, headers dict)."""
        h = dict(headers or {})
        if auth:
            h["Authorization"] = "Bearer " + (key or self.admin_key or "")
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if body is not None:
            h.setdefault("Content-Type", "application/json")
        own = conn is None
        c = conn or self.connection()
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            if own:
                c.close()
        text = data.decode("utf-8", "replace")
        if raw:
            return r.status, text, hdrs
        ctype = hdrs.get("content-type", "")
        if ctype.startswith("application/json"):
            return r.status, json.loads(text) if text else None, hdrs
        return r.status, text, hdrs

    def create_key(self, role, *sources):
        args = ["keys", "create", "--role", role, "--data", self.data]
        for s in sources:
            args += ["--source", s]
        return run_cli(*args)[1].strip()
