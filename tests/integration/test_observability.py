"""Integration tests for observability (issue 9): structured logs without secrets,
request ids, W3C trace propagation and OTLP export, and a real Prometheus scraping
the real binary."""
import json
import os
import re
import unittest

from harness import QuellServer


def log_lines(server):
    """The server's stderr, parsed: every line must be one JSON object."""
    out = []
    with open(server.log_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


class LogTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.q = QuellServer(env={"QUELL_LOG_LEVEL": "info"}).start()
        assert cls.q.admin_key, "serve --dev printed no admin key"
        cls.detector_key = cls.q.create_key("detector", "bot-model")

    @classmethod
    def tearDownClass(cls):
        cls.q.cleanup()

    def test_keys_never_logged(self):
        q = self.q
        secrets = [q.admin_key, self.detector_key]
        # Every way a key reaches the server: bearer header, X-Api-Key, a bad bearer,
        # the query string, a request body, and a key minted by the API itself.
        self.assertEqual(q.request("GET", "/v1/check?entity=user:a")[0], 200)
        q.request("GET", "/v1/check?entity=user:a", key=self.detector_key)
        q.request("GET", "/v1/check?entity=user:a&key=" + q.admin_key)
        q.request("GET", "/v1/decisions", auth=False, headers={"X-Api-Key": self.detector_key})
        q.request("GET", "/v1/keys", key=self.detector_key + "x")
        status, m, _ = q.request("POST", "/v1/mitigations",
                                 {"entity": "user:logged", "action": "block", "ttl": "1h",
                                  "reason": q.admin_key})
        self.assertEqual(status, 201, m)
        status, k, _ = q.request("POST", "/v1/keys", {"role": "viewer", "name": "dash"})
        self.assertEqual(status, 201, k)
        secrets.append(k["key"])
        q.request("GET", "/v1/keys", key=k["key"])
        q.request("GET", "/v1/no/such/route", key=q.admin_key)
        lines = log_lines(q)
        access = [l for l in lines if l.get("msg") == "request"]
        self.assertGreaterEqual(len(access), 9, lines)
        with open(q.log_path, encoding="utf-8") as f:
            text = f.read()
        for s in secrets:
            self.assertTrue(s)
            self.assertNotIn(s, text)
            # Nor the secret part alone (a token may carry its id before the secret).
            self.assertNotIn(s[-20:], text)
        self.assertNotIn("Bearer", text)

    def test_access_line_fields(self):
        status, _, hdrs = self.q.request("GET", "/v1/check?entity=user:fields",
                                         headers={"X-Request-Id": "it-req-42"})
        self.assertEqual(status, 200)
        self.assertEqual(hdrs["x-request-id"], "it-req-42")
        line = [l for l in log_lines(self.q) if l.get("request_id") == "it-req-42"]
        self.assertEqual(len(line), 1, line)
        l = line[0]
        self.assertEqual(l["level"], "info")
        self.assertEqual(l["method"], "GET")
        self.assertEqual(l["route"], "/v1/check")
        self.assertEqual(l["status"], 200)
        self.assertEqual(l["remote"], "127.0.0.1")
        self.assertIsInstance(l["duration_us"], int)
        self.assertGreater(l["bytes"], 0)
        self.assertRegex(l["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertNotIn("user:fields", json.dumps(l))  # the path is not logged, the pattern is

    def test_request_id_generated_when_absent_or_insane(self):
        ids = set()
        for incoming in [None, "", "a b", "x" * 200, "<script>"]:
            h = {} if incoming is None else {"X-Request-Id": incoming}
            status, _, hdrs = self.q.request("GET", "/healthz", auth=False, headers=h)
            self.assertEqual(status, 200)
            rid = hdrs["x-request-id"]
            self.assertRegex(rid, r"^[0-9a-f]{16}$")
            ids.add(rid)
        self.assertEqual(len(ids), 5)

    def test_unrouted_and_startup_lines(self):
        status, _, hdrs = self.q.request("GET", "/nowhere", auth=False)
        self.assertEqual(status, 404)
        rid = hdrs["x-request-id"]
        lines = log_lines(self.q)
        self.assertTrue(any(l.get("msg") == "quell serving" and "listen" in l for l in lines))
        mine = [l for l in lines if l.get("request_id") == rid]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["route"], "-")
        self.assertEqual(mine[0]["status"], 404)


class LogLevelTest(unittest.TestCase):
    def test_warn_level_silences_access_log(self):
        q = QuellServer(env={"QUELL_LOG_LEVEL": "warn"}).start()
        try:
            for _ in range(3):
                self.assertEqual(q.request("GET", "/v1/check?entity=user:a")[0], 200)
        finally:
            q.stop()
        lines = log_lines(q)
        self.assertFalse([l for l in lines if l.get("msg") == "request"], lines)
        q.cleanup()


if __name__ == "__main__":
    unittest.main()
