"""Integration tests for observability (issue 9): structured logs without secrets,
request ids, W3C trace propagation and OTLP export, and a real Prometheus scraping
the real binary."""
import calendar
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

from harness import QUELL, QuellServer, free_port, run_cli, send_raw
from test_multinode import CLUSTER_BIN, PgCluster


def log_lines(server, until=None, timeout=10.0):
    """The server's stderr, parsed: every line must be one JSON object.

    Info lines (the access log) reach the file from the server's log flusher within
    ~10 ms (src/obs/log.h), so a caller waiting for lines passes `until`, a predicate on
    the parsed lines, and this polls until it holds or `timeout` passes."""
    deadline = time.time() + timeout
    while True:
        out = []
        with open(server.log_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
        if until is None or until(out) or time.time() > deadline:
            return out
        time.sleep(0.02)


def with_request_id(rid):
    return lambda lines: any(l.get("request_id") == rid for l in lines)


def open_approval_and_rollback(test, q, prefix):
    """Opens two reviews on `q` (its bulk threshold must be 1): a pending approval (a
    manual block over a /8) and a rollback request (of two `challenge` mitigations).
    Returns (the pending mitigation, the rollback reply)."""
    s, pending, _ = q.request("POST", "/v1/mitigations",
                              {"entity": "cidr:11.0.0.0/8", "action": "block",
                               "reason": "abuse"})
    test.assertEqual((s, pending["state"]), (201, "pending_approval"), pending)
    for entity in (prefix + "-1", prefix + "-2"):
        s, m, _ = q.request("POST", "/v1/mitigations",
                            {"entity": entity, "action": "challenge", "ttl": "1h",
                             "reason": "t"})
        test.assertEqual(s, 201, m)
    s, rb, _ = q.request("POST", "/v1/rollbacks",
                         {"filter": {"action": "challenge"}, "reason": "bad rule"})
    test.assertEqual((s, rb["state"]), (202, "pending_approval"), rb)
    return pending, rb


def open_appeal(test, q, entity):
    """Blocks `entity` on `q` and files an appeal against it: returns the open appeal."""
    s, m, _ = q.request("POST", "/v1/mitigations",
                        {"entity": entity, "action": "block", "ttl": "1h", "reason": "t"})
    test.assertEqual(s, 201, m)
    s, appeal, _ = q.request("POST", "/v1/appeals",
                             {"mitigation_id": m["id"], "statement": "not me"})
    test.assertEqual((s, appeal["state"]), (201, "open"), appeal)
    return appeal


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
        lines = log_lines(q, until=lambda ls: sum(l.get("msg") == "request" for l in ls) >= 9)
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
        line = [l for l in log_lines(self.q, until=with_request_id("it-req-42"))
                if l.get("request_id") == "it-req-42"]
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
        lines = log_lines(self.q, until=with_request_id(rid))
        self.assertTrue(any(l.get("msg") == "quell serving" and "listen" in l for l in lines))
        mine = [l for l in lines if l.get("request_id") == rid]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["route"], "-")
        self.assertEqual(mine[0]["status"], 404)


    def test_the_http_layers_own_refusals_are_logged_and_counted(self):
        # 413 (body over the limit) and 400 (unreadable): answered before any route, in
        # the access log with route "-" and counted in quell_http_refused_total.
        def refused(code):
            text = self.q.request("GET", "/metrics", auth=False, raw=True)[1]
            m = re.search(r'^quell_http_refused_total\{code="%d"\} (\d+)' % code, text, re.M)
            return int(m.group(1)) if m else 0
        before = {413: refused(413), 400: refused(400)}
        for request, rid in (
                (b"POST /v1/detections HTTP/1.1\r\nHost: x\r\nX-Request-Id: it-big-1\r\n"
                 b"Content-Length: %d\r\n\r\n" % (9 << 20), "it-big-1"),
                (b"GET /v1/check HTTP/1.1\r\nHost: x\r\nX-Request-Id: it-bad-1\r\n"
                 b"Content-Length: nope\r\n\r\n", "it-bad-1")):
            reply = send_raw(self.q.port, request)
            self.assertIn(("x-request-id: %s" % rid).encode(), reply.lower())
            lines = log_lines(self.q, until=with_request_id(rid))
            mine = [l for l in lines if l.get("request_id") == rid]
            self.assertEqual(len(mine), 1, lines[-3:])
            self.assertEqual(mine[0]["route"], "-")
            self.assertEqual(mine[0]["remote"], "127.0.0.1")
            self.assertIn(mine[0]["status"], (413, 400))
            self.assertTrue(mine[0]["error"])
        self.assertEqual(refused(413), before[413] + 1)
        self.assertEqual(refused(400), before[400] + 1)


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


class OtlpReceiver:
    """A local OTLP/HTTP collector: keeps every span POSTed to /v1/traces."""

    def __init__(self):
        self.spans = []
        self.requests = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.path == "/v1/traces" and \
                    self.headers.get("Content-Type") == "application/json"
                if ok:
                    doc = json.loads(body)
                    with receiver.lock:
                        receiver.requests += 1
                        for rs in doc["resourceSpans"]:
                            for ss in rs["scopeSpans"]:
                                receiver.spans.extend(ss["spans"])
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/v1/traces" % self.port

    def wait_for(self, predicate, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        with self.lock:
            raise AssertionError("spans never matched; got %r" % self.spans)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def attrs(span):
    out = {}
    for a in span.get("attributes", []):
        v = a["value"]
        out[a["key"]] = next(iter(v.values()))
    return out


def parse_rfc3339(text):
    """Unix seconds of an RFC 3339 UTC time such as 2026-01-01T00:00:00.123Z."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", text)
    assert m, text
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)


def metric_value(text, name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None


class TracingTest(unittest.TestCase):
    def setUp(self):
        self.collector = OtlpReceiver()
        self.q = QuellServer(env={"QUELL_TRACING_ENDPOINT": self.collector.url}).start()

    def tearDown(self):
        self.q.cleanup()
        self.collector.close()

    def test_spans_continue_incoming_trace_with_parent_child_links(self):
        trace_id = os.urandom(16).hex()
        parent_id = os.urandom(8).hex()
        # Not sampled upstream and the ratio is 0: nothing may be exported for this one.
        status, _, _ = self.q.request("POST", "/v1/mitigations",
                                      {"entity": "user:untraced", "action": "block", "ttl": "1h",
                                       "reason": "t"},
                                      headers={"traceparent": "00-%s-%s-00" % (os.urandom(16).hex(),
                                                                               parent_id)})
        self.assertEqual(status, 201)
        status, m, hdrs = self.q.request(
            "POST", "/v1/mitigations",
            {"entity": "user:traced", "action": "block", "ttl": "1h", "reason": "t"},
            headers={"traceparent": "00-%s-%s-01" % (trace_id, parent_id),
                     "tracestate": "vendor=abc", "X-Request-Id": "trace-it-1"})
        self.assertEqual(status, 201, m)
        names = {"POST /v1/mitigations", "ledger.submit", "ledger.commit", "index.apply"}
        spans = self.collector.wait_for(
            lambda ss: names <= {s["name"] for s in ss if s["traceId"] == trace_id})
        self.assertEqual({s["traceId"] for s in spans}, {trace_id})  # the unsampled one is absent
        by_name = {}
        for s in spans:
            by_name.setdefault(s["name"], []).append(s)
        self.assertEqual({n: len(v) for n, v in by_name.items()}, {n: 1 for n in names}, spans)
        server, submit, commit, apply = (by_name[n][0] for n in (
            "POST /v1/mitigations", "ledger.submit", "ledger.commit", "index.apply"))
        # request -> ledger.submit (request side: queue, commit, apply) -> ledger.commit
        # (the group commit, recorded on the commit thread) -> index.apply (listeners).
        self.assertEqual(server["parentSpanId"], parent_id)
        self.assertEqual(server["traceState"], "vendor=abc")
        self.assertEqual(server["kind"], 2)
        self.assertEqual(submit["parentSpanId"], server["spanId"])
        self.assertEqual(commit["parentSpanId"], submit["spanId"])
        self.assertEqual(apply["parentSpanId"], commit["spanId"])
        ids = [s["spanId"] for s in (server, submit, commit, apply)]
        self.assertEqual(len(set(ids)), 4, ids)
        for s in (server, submit, commit, apply):
            self.assertRegex(s["spanId"], r"^[0-9a-f]{16}$")
            self.assertIsInstance(s["startTimeUnixNano"], str)
            self.assertLessEqual(int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"]))
            self.assertEqual(s.get("traceState", ""), "vendor=abc")
        self.assertLessEqual(int(server["startTimeUnixNano"]), int(submit["startTimeUnixNano"]))
        self.assertLessEqual(int(submit["startTimeUnixNano"]), int(commit["startTimeUnixNano"]))
        self.assertLessEqual(int(commit["endTimeUnixNano"]), int(apply["startTimeUnixNano"]))
        self.assertLessEqual(int(apply["endTimeUnixNano"]), int(submit["endTimeUnixNano"]))
        a = attrs(server)
        self.assertEqual(a["http.route"], "/v1/mitigations")
        self.assertEqual(a["http.request.method"], "POST")
        self.assertEqual(a["http.response.status_code"], "201")
        self.assertEqual(a["quell.request_id"], "trace-it-1")
        self.assertEqual(attrs(submit)["quell.ledger.seq"], str(m["seq"]))
        self.assertEqual(attrs(commit)["quell.ledger.seq"], str(m["seq"]))
        self.assertGreaterEqual(int(attrs(commit)["quell.ledger.batch_mutations"]), 1)
        self.assertEqual(attrs(apply)["quell.ledger.changes"], attrs(commit)["quell.ledger.changes"])
        # The access log line carries the same trace id.
        line = [l for l in log_lines(self.q, until=with_request_id("trace-it-1"))
                if l.get("request_id") == "trace-it-1"]
        self.assertEqual([l.get("trace_id") for l in line], [trace_id])

    def test_detection_spans_engine_commit_and_apply(self):
        policies = ("actions:\n  - {name: block, verdict: deny, severity: high, ttl: 7d}\n"
                    "policies:\n  - id: bot\n    on: detection\n"
                    "    when: detection.type == \"bot\"\n    action: block\n")
        s, body, _ = self.q.request("PUT", "/v1/policies", policies,
                                    headers={"Content-Type": "application/yaml"})
        self.assertIn(s, (200, 201), body)
        trace_id = os.urandom(16).hex()
        parent_id = os.urandom(8).hex()
        det = {"id": "d-trace-1", "source": "model-a", "type": "bot", "entity": "user:tr",
               "score": 0.9,
               "observed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        s, body, _ = self.q.request("POST", "/v1/detections", det,
                                    headers={"traceparent": "00-%s-%s-01" % (trace_id, parent_id)})
        self.assertEqual(s, 200, body)
        self.assertEqual(body["results"][0]["status"], "accepted", body)
        names = {"POST /v1/detections", "engine.evaluate", "ledger.commit", "index.apply"}
        spans = self.collector.wait_for(
            lambda ss: names <= {s["name"] for s in ss if s["traceId"] == trace_id})
        by_name = {}
        for sp in spans:
            if sp["traceId"] == trace_id:
                by_name.setdefault(sp["name"], []).append(sp)
        self.assertEqual({n: len(v) for n, v in by_name.items()}, {n: 1 for n in names})
        server, engine, commit, apply = (by_name[n][0] for n in (
            "POST /v1/detections", "engine.evaluate", "ledger.commit", "index.apply"))
        # request -> engine (evaluation) and request -> ledger.commit -> index.apply.
        self.assertEqual(server["parentSpanId"], parent_id)
        self.assertEqual(engine["parentSpanId"], server["spanId"])
        self.assertEqual(commit["parentSpanId"], server["spanId"])
        self.assertEqual(apply["parentSpanId"], commit["spanId"])
        self.assertLessEqual(int(engine["endTimeUnixNano"]), int(commit["startTimeUnixNano"]))
        self.assertLessEqual(int(commit["endTimeUnixNano"]), int(apply["startTimeUnixNano"]))
        self.assertLessEqual(int(apply["endTimeUnixNano"]), int(server["endTimeUnixNano"]))
        a = attrs(engine)
        self.assertEqual((a["quell.detections"], a["quell.proposals"]), ("1", "1"))

    def test_malformed_traceparent_is_ignored(self):
        for bad in ["00-%s-%s-01" % ("0" * 32, "1" * 16), "01-%s-%s-01" % ("a" * 32, "b" * 16),
                    "garbage"]:
            status, _, _ = self.q.request("GET", "/v1/check?entity=user:x",
                                          headers={"traceparent": bad})
            self.assertEqual(status, 200)
        marker = os.urandom(16).hex()
        self.q.request("GET", "/v1/check?entity=user:x",
                       headers={"traceparent": "00-%s-%s-01" % (marker, "c" * 16)})
        spans = self.collector.wait_for(lambda ss: any(s["traceId"] == marker for s in ss))
        self.assertEqual([s["traceId"] for s in spans], [marker])


class TracingEndpointTest(unittest.TestCase):
    def test_a_bad_endpoint_is_named_where_it_was_set(self):
        # serve said "tracing.endpoint: ..." for an endpoint set by the environment, a key
        # the user never wrote. With tracing off, a bad endpoint is never looked at.
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, QUELL_TRACING_ENDPOINT="127.0.0.1:4318")
            p = subprocess.run([QUELL, "serve", "--data", d, "--listen", "127.0.0.1:%d" % free_port()],
                               env=env, capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("quell: QUELL_TRACING_ENDPOINT: ", p.stderr)
            off = os.path.join(d, "off.yaml")
            with open(off, "w") as f:
                f.write("tracing: {enabled: false, endpoint: 'https://collector/v1/traces'}\n")
            code, out, err = run_cli("keys", "create", "--role", "admin", "--data", d,
                                     "--config", off)
            self.assertEqual(code, 0, err)


class TracingDropTest(unittest.TestCase):
    def run_against(self, endpoint):
        q = QuellServer(env={"QUELL_TRACING_ENDPOINT": endpoint,
                             "QUELL_TRACING_SAMPLE_RATIO": "1"}).start()
        try:
            for i in range(30):
                status, body, _ = q.request("GET", "/v1/check?entity=user:%d" % i)
                self.assertEqual(status, 200, body)
            status, m, _ = q.request("POST", "/v1/mitigations",
                                     {"entity": "user:d", "action": "block", "ttl": "1h",
                                      "reason": "t"})
            self.assertEqual(status, 201, m)
            deadline = time.time() + 30
            dropped = None
            while time.time() < deadline:
                text = q.request("GET", "/metrics", auth=False)[1]
                dropped = metric_value(text, "quell_trace_spans_dropped_total",
                                       '{reason="export_failed"}')
                if dropped:
                    break
                time.sleep(0.1)
            self.assertGreater(dropped or 0, 0)
            self.assertEqual(metric_value(text, "quell_trace_spans_exported_total"), 0)
            # Still serving while the collector is away.
            self.assertEqual(q.request("GET", "/v1/check?entity=user:x")[0], 200)
        finally:
            q.stop()
        warn = [l for l in log_lines(q) if l.get("msg", "").startswith("trace export failing")]
        self.assertEqual(len(warn), 1, warn)  # logged once, not per batch
        q.cleanup()

    def test_dead_collector_drops_spans_and_requests_succeed(self):
        self.run_against("http://127.0.0.1:%d/v1/traces" % free_port())

    def test_black_hole_collector_drops_spans_and_requests_succeed(self):
        # Accepts connections (the kernel backlog) but never answers.
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        try:
            self.run_against("http://127.0.0.1:%d/v1/traces" % hole.getsockname()[1])
        finally:
            hole.close()


class ThreadNamesTest(unittest.TestCase):
    """On call, `top -H` must say which part of the server is busy."""

    def test_the_servers_threads_say_what_they_do(self):
        # --threads 2 (the harness): two event loops; gRPC one queue per core at least.
        want = {"quell-commit", "quell-finish", "quell-ckpt", "quell-http-0", "quell-http-1",
                "quell-work-0", "quell-grpc-0", "quell-expiry", "quell-sweeper",
                "quell-webhooks"}
        q = QuellServer(extra_args=["--grpc-listen", "127.0.0.1:%d" % free_port()]).start()
        try:
            # /healthz answers before gRPC, expiry and webhooks start, and a thread names
            # itself once it runs: look until all are there (or 10 s).
            task = "/proc/%d/task" % q.proc.pid
            deadline = time.time() + 10
            while True:
                names = set()
                for tid in os.listdir(task):
                    try:
                        with open(os.path.join(task, tid, "comm")) as f:
                            names.add(f.read().strip())
                    except FileNotFoundError:  # a thread that ended meanwhile
                        pass
                if want <= names or time.time() > deadline:
                    break
                time.sleep(0.05)
        finally:
            q.cleanup()
        self.assertEqual(want - names, set())


class ScrapeMixin:
    def scrape(self, q):
        status, text, _ = q.request("GET", "/metrics", auth=False, raw=True)
        self.assertEqual(status, 200)
        return text

    def review_queue(self, q):
        """{kind: depth} from a scrape. Every kind must be exported, with an oldest age
        that is 0 exactly when its depth is."""
        text = self.scrape(q)
        out = {}
        for kind in ("mitigation", "rollback", "appeal"):
            label = '{kind="%s"}' % kind
            depth = metric_value(text, "quell_review_queue_depth", label)
            age = metric_value(text, "quell_review_queue_oldest_age_seconds", label)
            self.assertIsNotNone(depth, "no depth for %s:\n%s" % (kind, text))
            self.assertIsNotNone(age, "no age for %s" % kind)
            self.assertTrue(0 <= age < 3600, (kind, age))
            self.assertEqual(age == 0, depth == 0, (kind, depth, age))
            out[kind] = depth
        return out


class OperationalMetricsTest(ScrapeMixin, unittest.TestCase):
    """The ledger, index, review-queue and feed-lag metrics read back from a real scrape."""

    def test_index_ledger_review_and_feed_metrics(self):
        q = QuellServer(env={"QUELL_NODE_NAME": "quell-it-a"}).start()
        try:
            for entity in ("user:a", "user:b"):
                s, m, _ = q.request("POST", "/v1/mitigations",
                                    {"entity": entity, "action": "block", "ttl": "1h",
                                     "reason": "t"})
                self.assertEqual(s, 201, m)
            s, m, _ = q.request("POST", "/v1/mitigations",
                                {"entity": "user:c", "action": "challenge", "ttl": "1h",
                                 "reason": "t"})
            self.assertEqual(s, 201, m)
            # A manual action over a /8 waits for someone else's approval: a review.
            s, pending, _ = q.request("POST", "/v1/mitigations",
                                      {"entity": "cidr:11.0.0.0/8", "action": "block",
                                       "reason": "abuse"})
            self.assertEqual(s, 201, pending)
            self.assertEqual(pending["state"], "pending_approval")
            # Revoke the challenge: its action stays listed, at 0.
            s, r, _ = q.request("POST", "/v1/mitigations/%s/revoke" % m["id"], {"reason": "t"})
            self.assertEqual(s, 200, r)
            seq = q.request("GET", "/readyz", auth=False)[1]["seq"]
            text = self.scrape(q)
            self.assertEqual(metric_value(text, "quell_index_mitigations_by_action",
                                          '{action="block"}'), 2)
            self.assertEqual(metric_value(text, "quell_index_mitigations_by_action",
                                          '{action="challenge"}'), 0)
            self.assertEqual(metric_value(text, "quell_index_mitigations"), 2)
            self.assertGreater(metric_value(text, "quell_index_memory_bytes"), 0)
            self.assertEqual(metric_value(text, "quell_review_queue_depth", '{kind="mitigation"}'), 1)
            age = metric_value(text, "quell_review_queue_oldest_age_seconds", '{kind="mitigation"}')
            self.assertTrue(0 <= age < 3600, age)
            self.assertEqual(metric_value(text, "quell_feed_lag_changes", '{node="quell-it-a"}'), 0)
            self.assertEqual(metric_value(text, "quell_feed_lag_seconds", '{node="quell-it-a"}'), 0)
            self.assertEqual(metric_value(text, "quell_ledger_seq"), seq)
            commits = metric_value(text, "quell_ledger_commits_total")
            self.assertGreaterEqual(commits, 5)
            # One histogram observation per group commit.
            self.assertEqual(metric_value(text, "quell_ledger_commit_duration_seconds_count"),
                             commits)
            self.assertEqual(metric_value(text, "quell_ledger_batch_size_count"), commits)
            self.assertGreaterEqual(metric_value(text, "quell_ledger_batch_size_sum"), commits)
            self.assertEqual(metric_value(text, "quell_ledger_batch_size_bucket",
                                          '{le="+Inf"}'), commits)
            self.assertIsNotNone(metric_value(text, "quell_webhook_queue_depth"))
            # After a restart the open review is found in the store, not forgotten.
            self.assertEqual(q.stop(), 0)
            q.start()
            text = self.scrape(q)
            self.assertEqual(metric_value(text, "quell_review_queue_depth", '{kind="mitigation"}'), 1)
            self.assertEqual(metric_value(text, "quell_index_mitigations_by_action",
                                          '{action="block"}'), 2)
        finally:
            q.cleanup()

    def test_review_queue_depth_by_kind(self):
        # Rollbacks over more than one entity wait for approval.
        q = QuellServer(env={"QUELL_SAFEGUARDS_BULK_THRESHOLD": "1"}).start()
        try:
            reviewer = q.create_key("reviewer")
            self.assertEqual(self.review_queue(q), {"mitigation": 0, "rollback": 0, "appeal": 0})
            # A pending approval and a rollback request (two entities, over the threshold).
            pending, rb = open_approval_and_rollback(self, q, "user:rq")
            # An appeal against a live block.
            appeal = open_appeal(self, q, "user:rq-appellant")
            # The gauges agree with the review queue the API lists.
            reviews = q.request("GET", "/v1/reviews?state=open")[1]["reviews"]
            self.assertEqual(sorted(r["kind"] for r in reviews), ["mitigation", "rollback"])
            self.assertEqual(self.review_queue(q), {"mitigation": 1, "rollback": 1, "appeal": 1})
            # A restarted node rebuilds the same figures from the store.
            self.assertEqual(q.stop(), 0)
            q.start()
            self.assertEqual(self.review_queue(q), {"mitigation": 1, "rollback": 1, "appeal": 1})
            # Decided, each by another key: out of the queue.
            s, r, _ = q.request("POST", "/v1/appeals/%s/decision" % appeal["id"],
                                {"grant": False, "note": "seen it"}, key=reviewer)
            self.assertEqual((s, r["state"]), (200, "denied"), r)
            self.assertEqual(self.review_queue(q), {"mitigation": 1, "rollback": 1, "appeal": 0})
            s, r, _ = q.request("POST", "/v1/reviews/%s/decision" % rb["id"],
                                {"approve": False, "note": "the rule was right"}, key=reviewer)
            self.assertEqual(s, 200, r)
            self.assertEqual(self.review_queue(q), {"mitigation": 1, "rollback": 0, "appeal": 0})
            s, r, _ = q.request("POST", "/v1/reviews/%s/decision" % pending["id"],
                                {"approve": False, "note": "too wide"}, key=reviewer)
            self.assertEqual((s, r["mitigation"]["state"]), (200, "rejected"), r)
            self.assertEqual(self.review_queue(q), {"mitigation": 0, "rollback": 0, "appeal": 0})
            self.assertEqual(q.request("GET", "/v1/reviews?state=open")[1]["reviews"], [])
        finally:
            q.cleanup()

    def test_expired_reviews_stop_counting_though_nothing_is_written(self):
        # A rollback request expires lazily (nothing is written); the sweeper, which would
        # expire pending approvals, runs only once a day here.
        q = QuellServer(env={"QUELL_SAFEGUARDS_BULK_THRESHOLD": "1",
                             "QUELL_SAFEGUARDS_PENDING_TTL": "10s",
                             "QUELL_SAFEGUARDS_SWEEP_INTERVAL": "24h"}).start()
        try:
            pending, rb = open_approval_and_rollback(self, q, "user:ex")
            seq = q.request("GET", "/readyz", auth=False)[1]["seq"]
            expires = min(parse_rfc3339(rb["request"]["expires_at"]),
                          parse_rfc3339(pending["created_at"]) + 10)
            counts = self.review_queue(q)
            if time.time() < expires:  # scraped before either expired (not on a stalled host)
                self.assertEqual(counts, {"mitigation": 1, "rollback": 1, "appeal": 0})
            # Then neither counts, with no change written.
            deadline = time.time() + 60
            while counts != {"mitigation": 0, "rollback": 0, "appeal": 0}:
                self.assertLess(time.time(), deadline, counts)
                time.sleep(0.2)
                counts = self.review_queue(q)
            self.assertEqual(q.request("GET", "/v1/rollbacks/" + rb["id"])[1]["state"], "expired")
            self.assertEqual(q.request("GET", "/readyz", auth=False)[1]["seq"], seq)
            # And a restart does not bring them back.
            self.assertEqual(q.stop(), 0)
            q.start()
            self.assertEqual(self.review_queue(q), {"mitigation": 0, "rollback": 0, "appeal": 0})
        finally:
            q.cleanup()

    def test_node_label_defaults_to_the_host_name(self):
        q = QuellServer()
        q.env.pop("QUELL_NODE_NAME", None)
        q.start()
        try:
            text = self.scrape(q)
            self.assertEqual(metric_value(text, "quell_feed_lag_changes",
                                          '{node="%s"}' % socket.gethostname()), 0)
        finally:
            q.cleanup()

    def test_metrics_off_records_nothing(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("metrics: {enabled: false}\n")
        try:
            q = QuellServer(extra_args=["--config", f.name]).start()
            try:
                self.assertEqual(q.request("POST", "/v1/mitigations",
                                           {"entity": "user:off", "action": "block", "ttl": "1h",
                                            "reason": "t"})[0], 201)
                self.assertEqual(self.scrape(q), "")
            finally:
                q.cleanup()
        finally:
            os.unlink(f.name)


@unittest.skipUnless(os.path.exists(CLUSTER_BIN), "quell_pg_test_cluster not built")
class ReviewQueueClusterTest(ScrapeMixin, unittest.TestCase):
    """Two nodes on one PostgreSQL: the review items written through one node show in the
    other's gauges (the change feed), and a restarted node rebuilds the same figures."""

    def setUp(self):
        self.pg = PgCluster()
        self.addCleanup(self.pg.close)
        url = self.pg.new_database()
        run_cli("migrate", "--postgres", url)
        self.admin = run_cli("keys", "create", "--role", "admin", "--postgres", url)[1].strip()
        self.reviewer = run_cli("keys", "create", "--role", "reviewer", "--postgres",
                                url)[1].strip()
        self.nodes = []
        for _ in range(2):
            n = QuellServer(extra_args=["--postgres", url],
                            env={"QUELL_SAFEGUARDS_BULK_THRESHOLD": "1"})
            self.addCleanup(n.cleanup)
            n.start(dev=False)
            n.admin_key = self.admin
            self.nodes.append(n)

    def wait_queue(self, node, want):
        """Waits (bounded: not a timing check) until `node` reports `want`."""
        deadline = time.time() + 120
        got = self.review_queue(node)
        while got != want:
            self.assertLess(time.time(), deadline, "node :%d reports %s" % (node.port, got))
            time.sleep(0.1)
            got = self.review_queue(node)

    def test_every_node_counts_the_shared_queue(self):
        a, b = self.nodes
        pending, rb = open_approval_and_rollback(self, a, "user:pg")
        appeal = open_appeal(self, a, "user:pg-appellant")
        for n in (a, b):
            self.wait_queue(n, {"mitigation": 1, "rollback": 1, "appeal": 1})
        # Decided on node b: node a's gauges follow.
        s, r, _ = b.request("POST", "/v1/appeals/%s/decision" % appeal["id"], {"grant": True},
                            key=self.reviewer)
        self.assertEqual((s, r["state"]), (200, "granted"), r)
        s, r, _ = b.request("POST", "/v1/reviews/%s/decision" % rb["id"], {"approve": False},
                            key=self.reviewer)
        self.assertEqual(s, 200, r)
        for n in (a, b):
            self.wait_queue(n, {"mitigation": 1, "rollback": 0, "appeal": 0})
        # A restarted node rebuilds the same figures from the database.
        self.assertEqual(b.stop(), 0)
        b.start(dev=False)
        self.assertEqual(self.review_queue(b), {"mitigation": 1, "rollback": 0, "appeal": 0})
        s, r, _ = a.request("POST", "/v1/reviews/%s/decision" % pending["id"], {"approve": False},
                            key=self.reviewer)
        self.assertEqual(s, 200, r)
        for n in (a, b):
            self.wait_queue(n, {"mitigation": 0, "rollback": 0, "appeal": 0})


DEPLOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                      "prometheus")


DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs")


def used_metric_families():
    """The metric families deploy/prometheus/alerts.yml and deploy/grafana/quell.json use."""
    with open(os.path.join(DEPLOY, "alerts.yml"), encoding="utf-8") as f:
        texts = [f.read()]
    with open(os.path.join(DEPLOY, "..", "grafana", "quell.json"), encoding="utf-8") as f:
        for panel in json.load(f)["panels"]:
            texts += [t["expr"] for t in panel.get("targets", [])]
    names = set()
    for t in texts:
        for n in re.findall(r"\bquell_[a-z_]+", t):
            names.add(re.sub(r"_(bucket|sum|count)$", "", n)
                      if re.search(r"_(seconds|size)_(bucket|sum|count)$", n) else n)
    return names


@unittest.skipUnless(shutil.which("promtool"), "promtool not installed")
class PromtoolTest(unittest.TestCase):
    def check(self, text):
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        return p.returncode, p.stdout + p.stderr

    def test_the_linter_catches_a_bad_exposition(self):
        code, _ = self.check("# HELP foo A counter.\n# TYPE foo counter\nfoo 1\n")
        self.assertNotEqual(code, 0)

    def test_real_scrape_passes_promtool(self):
        # Tracing on (towards a dead collector) so its metric families are present too.
        q = QuellServer(env={"QUELL_TRACING_ENDPOINT": "http://127.0.0.1:%d/v1/traces" % free_port(),
                             "QUELL_TRACING_SAMPLE_RATIO": "1"}).start()
        try:
            self.assertEqual(q.request("POST", "/v1/mitigations",
                                       {"entity": "user:p", "action": "block", "ttl": "1h",
                                        "reason": "t"})[0], 201)
            q.request("GET", "/v1/check?entity=user:p")
            q.request("GET", "/v1/nothing")
            status, text, hdrs = q.request("GET", "/metrics", auth=False)
            self.assertEqual(status, 200)
            self.assertTrue(hdrs["content-type"].startswith("text/plain; version=0.0.4"))
            for family in ["quell_http_requests_total", "quell_http_request_duration_seconds",
                           "quell_ledger_seq", "quell_index_mitigations", "quell_build_info",
                           "quell_trace_spans_dropped_total", "quell_trace_spans_exported_total",
                           "quell_ledger_commit_duration_seconds", "quell_ledger_batch_size",
                           "quell_index_mitigations_by_action", "quell_index_memory_bytes",
                           "quell_feed_lag_changes", "quell_feed_lag_seconds",
                           "quell_review_queue_depth", "quell_review_queue_oldest_age_seconds",
                           "quell_webhook_queue_depth", "quell_webhook_deliveries_total"]:
                self.assertIn("# TYPE %s " % family, text)
            code, out = self.check(text)
            self.assertEqual(code, 0, out)
            # Every metric the alert rules and the dashboard use is exported (those of
            # the decision path render once they have a sample) and documented.
            exported = set(re.findall(r"^# TYPE (quell_[a-z_]+) ", text, re.M))
            with open(os.path.join(DOCS, "metrics.md"), encoding="utf-8") as f:
                documented = set(re.findall(r"`(quell_[a-z_]+)`", f.read()))
            for name in used_metric_families():
                self.assertIn(name, documented, "undocumented metric %s" % name)
                if name not in ("quell_decisions_total", "quell_detections_total",
                                "quell_events_total"):
                    self.assertIn(name, exported, "alert/dashboard metric %s not exported" % name)
        finally:
            q.cleanup()


class Prometheus:
    """Debian's prometheus, on a free loopback port, scraping `target` every second,
    with Quell's alert rules loaded; stopped by PID."""

    def __init__(self, target):
        self.tmp = tempfile.TemporaryDirectory(prefix="quell-prom-")
        self.port = free_port()
        shutil.copy(os.path.join(DEPLOY, "alerts.yml"), self.tmp.name)
        config = os.path.join(self.tmp.name, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "rule_files: [alerts.yml]\n"
                    "scrape_configs:\n"
                    "  - job_name: quell\n"
                    "    scrape_interval: 1s\n"
                    "    static_configs: [{targets: ['%s']}]\n" % target)
        self.log = open(os.path.join(self.tmp.name, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(
            ["prometheus", "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(self.tmp.name, "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path, **params):
        url = "http://127.0.0.1:%d%s?%s" % (self.port, path, urllib.parse.urlencode(params))
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def wait(self, fetch, predicate, timeout=90):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited: " + self.logs())
            try:
                last = fetch()
                if predicate(last):
                    return last
            except OSError as e:
                last = e
            time.sleep(0.25)
        raise AssertionError("prometheus never answered as expected; last: %r\n%s" % (
            last, self.logs()))

    def logs(self):
        with open(os.path.join(self.tmp.name, "prometheus.log"), errors="replace") as f:
            return f.read()[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.tmp.cleanup()


@unittest.skipUnless(shutil.which("prometheus"), "prometheus not installed")
class RealPrometheusTest(unittest.TestCase):
    def test_prometheus_scrapes_quell_and_answers_queries(self):
        q = QuellServer().start()
        prom = None
        try:
            status, m, _ = q.request("POST", "/v1/mitigations",
                                     {"entity": "user:prom", "action": "block", "ttl": "1h",
                                      "reason": "t"})
            self.assertEqual(status, 201, m)
            prom = Prometheus("127.0.0.1:%d" % q.port)

            def query(expr):
                return lambda: prom.api("/api/v1/query", query=expr)

            def value_at_least(n):
                return lambda r: r["status"] == "success" and r["data"]["result"] and \
                    float(r["data"]["result"][0]["value"][1]) >= n

            r = prom.wait(query('quell_ledger_seq{job="quell"}'), value_at_least(m["seq"]))
            self.assertEqual(r["data"]["result"][0]["metric"]["instance"], "127.0.0.1:%d" % q.port)
            r = prom.wait(query('quell_http_requests_total{job="quell",route="/v1/mitigations",'
                                'method="POST",code="201"}'), value_at_least(1))
            self.assertEqual(len(r["data"]["result"]), 1)
            prom.wait(query('up{job="quell"}'), value_at_least(1))
            # The alert rules loaded into a real Prometheus, and none fires on a healthy node.
            rules = prom.wait(lambda: prom.api("/api/v1/rules"),
                              lambda r: r["status"] == "success" and r["data"]["groups"])
            names = {rule["name"] for g in rules["data"]["groups"] for rule in g["rules"]}
            self.assertIn("QuellHighErrorRate", names)
            self.assertIn("QuellBreakerOpen", names)
            self.assertEqual([a for a in prom.api("/api/v1/alerts")["data"]["alerts"]
                              if a["state"] == "firing"], [])
        finally:
            if prom is not None:
                prom.stop()
            q.cleanup()


if __name__ == "__main__":
    unittest.main()
