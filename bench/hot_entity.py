#!/usr/bin/env python3
"""One entity hit over and over: the ledger bytes and time per hit, against a reference.

An entity that a real-time rule hits on every event (a bot's plays) gets one hit on its
live mitigation per detection, and every hit rewrites the mitigation into the ledger. This
sends HITS detections (100 a request, the same policy, the same entity) to a fresh server
of QUELL_BIN and of BASE_BIN (the reference: an earlier build), then prints for each the
seconds, hits/s, the data directory's bytes (database + WAL) and the bytes per hit, and the
ratios.

usage: QUELL_BIN=build/quell BASE_BIN=/tmp/quell-old bench/hot_entity.py [HITS]
"""
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

POLICIES = """
actions:
  - {name: challenge, verdict: challenge, severity: low, ttl: 1h}
policies:
  - {id: plays-too-fast, on: detection, when: 'detection.type == "bot"', action: challenge}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, method, path, body, key, ctype="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 method=method, headers={"Authorization": "Bearer " + key,
                                                         "Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def run(binary, hits):
    tmp = tempfile.mkdtemp(prefix="quell-hot-", dir=os.environ.get("BENCH_TMPDIR", "/var/tmp"))
    port = free_port()
    proc = subprocess.Popen([binary, "serve", "--data", tmp, "--listen", "127.0.0.1:%d" % port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=1)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "the server did not start"
                time.sleep(0.05)
        key = subprocess.run([binary, "keys", "create", "--role", "admin", "--data", tmp],
                             capture_output=True, text=True, check=True).stdout.strip()
        request(port, "PUT", "/v1/policies", POLICIES.encode(), key, "application/yaml")
        at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        start = time.time()
        for first in range(0, hits, 100):
            dets = [{"id": "h%d" % i, "source": "play-rules", "type": "bot", "entity": "user:hot",
                     "score": 1, "observed_at": at} for i in range(first, min(first + 100, hits))]
            request(port, "POST", "/v1/detections", {"detections": dets}, key)
        seconds = time.time() - start
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)
                   if f.startswith("quell.db"))
        return seconds, size
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    hits = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    here = os.path.dirname(os.path.abspath(__file__))
    quell = os.environ.get("QUELL_BIN", os.path.join(here, "..", "build", "quell"))
    base = os.environ["BASE_BIN"]
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    got = {}
    for name, binary in (("quell", quell), ("base", base)):
        s, size = run(binary, hits)
        got[name] = (s, size)
        print("%-5s %s: %d hits on one entity in %.2f s (%.0f hits/s), ledger %d bytes "
              "(%.0f bytes/hit)" % (name, binary, hits, s, hits / s, size, size / hits))
    print("ratio quell/base: time %.3f, ledger bytes %.3f" % (
        got["quell"][0] / got["base"][0], got["quell"][1] / got["base"][1]))


if __name__ == "__main__":
    main()
