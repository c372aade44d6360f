"""Integration tests: webhooks (issue 6 item 4) against the real quell binary.

A local receiver (http.server on a free port) fails, is slow, is down, and comes back;
the server is killed and restarted mid-way. Every test checks that accepted deliveries
arrive in seq order, with none missing, each carrying a valid HMAC-SHA256 signature.
Delivery is at least once: a change whose 2xx was not yet recorded when the server died
is delivered again after the restart, so duplicates across a restart are allowed.

Waits are bounded polls (wait_for), never sleeps used as assertions.
"""
import hashlib
import hmac
import http.server
import json
import threading
import time
import unittest

from harness import QuellServer, free_port

FAST_ENV = {
    "QUELL_WEBHOOK_BACKOFF_INITIAL": "50ms",
    "QUELL_WEBHOOK_BACKOFF_MAX": "300ms",
    "QUELL_WEBHOOK_TIMEOUT": "1s",
    "QUELL_WEBHOOK_POLL": "200ms",
    "QUELL_WEBHOOK_MAX_ATTEMPTS": "30",
}


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    if not pred():
        raise AssertionError("timed out waiting for " + what)


class Receiver:
    """A webhook receiver. `behave(n, body)` decides the reply of the n-th request (0-based):
    an int status, or ("sleep", seconds, status). Every request is logged."""

    def __init__(self, port=None, behave=None):
        self.port = port or free_port()
        self.behave = behave or (lambda n, body: 200)
        self.lock = threading.Lock()
        self.log = []  # dicts: seq, body, signature, headers, status, run
        self.run = 0
        self.server = None

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    n = len(receiver.log)
                    entry = {"body": body, "headers": dict(self.headers), "status": None,
                             "run": receiver.run, "seq": json.loads(body)["seq"]}
                    receiver.log.append(entry)
                action = receiver.behave(n, body)
                if isinstance(action, tuple):
                    _, seconds, status = action
                    entry["status"] = "late"  # the client gives up before this answer
                    time.sleep(seconds)
                else:
                    status = action
                    entry["status"] = status
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self):
        return "http://127.0.0.1:%d/hook" % self.port

    def entries(self):
        with self.lock:
            return list(self.log)

    def accepted(self):
        return [e for e in self.entries() if isinstance(e["status"], int) and 200 <= e["status"] < 300]


class WebhookCase(unittest.TestCase):
    env = FAST_ENV

    def setUp(self):
        self.q = QuellServer(env=self.env).start()
        self.receivers = []

    def tearDown(self):
        for r in self.receivers:
            r.stop()
        self.q.cleanup()

    def receiver(self, **kw):
        r = Receiver(**kw).start()
        self.receivers.append(r)
        return r

    def subscribe(self, url, **filters):
        status, body, _ = self.q.request("POST", "/v1/webhooks", dict(url=url, **filters))
        self.assertEqual(status, 201, body)
        self.assertTrue(body["secret"].startswith("whsec_"))
        return body

    def create(self, entity, action="block"):
        status, body, _ = self.q.request("POST", "/v1/mitigations",
                                         {"entity": entity, "action": action, "ttl": "1h",
                                          "reason": "webhook test"})
        self.assertIn(status, (200, 201), body)
        return body

    def revoke(self, mid):
        status, body, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % mid,
                                         {"reason": "webhook test"})
        self.assertEqual(status, 200, body)
        return body

    def check_signed(self, sub, entries):
        for e in entries:
            want = "sha256=" + hmac.new(sub["secret"].encode(), e["body"], hashlib.sha256).hexdigest()
            self.assertEqual(e["headers"].get("X-Quell-Signature"), want)
            self.assertEqual(e["headers"].get("X-Quell-Seq"), str(e["seq"]))
            self.assertEqual(e["headers"].get("X-Quell-Subscription"), sub["id"])
            self.assertTrue(e["headers"].get("Content-Type", "").startswith("application/json"))

    def check_in_order(self, entries):
        seqs = [e["seq"] for e in entries]
        self.assertEqual(seqs, sorted(seqs), "deliveries out of seq order")

    def status_of(self, sub_id):
        status, body, _ = self.q.request("GET", "/v1/webhooks")
        self.assertEqual(status, 200, body)
        for w in body["webhooks"]:
            if w["id"] == sub_id:
                return w
        self.fail("subscription %s not listed" % sub_id)


class WebhookDeliveryTest(WebhookCase):
    def test_api_shapes(self):
        r = self.receiver()
        sub = self.subscribe(r.url, actions=["block"], entity_types=["ip"])
        listed = self.status_of(sub["id"])
        self.assertNotIn("secret", listed)
        self.assertEqual(listed["actions"], ["block"])
        self.assertEqual(listed["entity_types"], ["ip"])
        self.assertEqual(self.q.request("POST", "/v1/webhooks", {"url": "https://x/h"})[0], 400)
        self.assertEqual(self.q.request("POST", "/v1/webhooks", {"nope": 1})[0], 400)
        s, e, _ = self.q.request("POST", "/v1/webhooks", {"url": r.url, "from_seq": -1})
        self.assertEqual(s, 400, e)
        self.assertEqual(e["error"]["details"][0]["field"], "from_seq")  # was "url"
        # Past the ledger's last change: it would skip every change up to it, silently.
        head = self.q.request("GET", "/readyz", auth=False)[1]["seq"]
        s, e, _ = self.q.request("POST", "/v1/webhooks", {"url": r.url, "from_seq": head + 1000})
        self.assertEqual(s, 400, e)
        self.assertEqual(e["error"]["details"][0]["field"], "from_seq", e)
        self.assertIn("past the ledger's last change (%d)" % head, e["error"]["message"])
        s, e, _ = self.q.request("POST", "/v1/webhooks", {"url": r.url + "#frag"})
        self.assertEqual((s, e["error"]["details"][0]["field"]), (400, "url"), e)
        # Filters that could match nothing: an action not in the catalog, a malformed type.
        s, e, _ = self.q.request("POST", "/v1/webhooks",
                                 {"url": r.url, "actions": ["block", "blok"], "entity_types": ["IP"]})
        self.assertEqual(s, 400, e)
        self.assertEqual([d["field"] for d in e["error"]["details"]],
                         ["actions[1]", "entity_types[0]"], e)
        self.assertIn("no action blok", e["error"]["details"][0]["message"])
        viewer = self.q.create_key("viewer")
        self.assertEqual(self.q.request("GET", "/v1/webhooks", key=viewer)[0], 403)
        self.assertEqual(self.q.request("GET", "/v1/webhooks/%s/dead_letters" % sub["id"])[0], 200)
        self.assertEqual(self.q.request("DELETE", "/v1/webhooks/%s" % sub["id"])[0], 200)
        self.assertEqual(self.q.request("DELETE", "/v1/webhooks/%s" % sub["id"])[0], 404)
        self.assertEqual(self.q.request("GET", "/v1/webhooks/wh_nope/dead_letters")[0], 404)

    def test_a_failing_then_accepting_in_order_filtered_signed(self):
        r = self.receiver(behave=lambda n, body: 500 if n < 4 else 200)
        sub = self.subscribe(r.url, entity_types=["ip"])
        expected = []
        for i in range(8):
            m = self.create("ip:10.1.0.%d" % i)
            expected.append(m["seq"])
            self.create("user:u%d" % i)  # filtered out
        m = self.create("ip:10.1.1.1")
        expected.append(m["seq"])
        expected.append(self.revoke(m["id"])["seq"])
        wait_for(lambda: len(r.accepted()) >= len(expected), what="all deliveries")
        entries = r.entries()
        self.assertEqual(sum(1 for e in entries if e["status"] == 500), 4)
        self.check_in_order(entries)
        self.check_signed(sub, entries)
        self.assertEqual([e["seq"] for e in r.accepted()], sorted(expected))
        last = json.loads(r.accepted()[-1]["body"])
        self.assertEqual(last["op"], "delete")
        self.assertEqual(last["mitigation"]["state"], "revoked")
        first = json.loads(r.accepted()[0]["body"])
        self.assertEqual(first["op"], "upsert")
        self.assertEqual(first["mitigation"]["entity"], "ip:10.1.0.0")
        wait_for(lambda: self.status_of(sub["id"])["cursor"] >= max(expected), what="cursor")

    def test_b_slow_receiver_is_retried(self):
        r = self.receiver(behave=lambda n, body: ("sleep", 2.0, 200) if n == 0 else 200)
        sub = self.subscribe(r.url)
        expected = [self.create("ip:10.2.0.%d" % i)["seq"] for i in range(3)]
        wait_for(lambda: len(r.accepted()) >= 3, what="deliveries after the slow one")
        entries = r.entries()
        self.assertEqual(entries[0]["status"], "late")
        self.assertEqual(entries[1]["seq"], entries[0]["seq"])  # the timed-out one, again
        self.check_in_order(entries)
        self.check_signed(sub, entries)
        self.assertEqual([e["seq"] for e in r.accepted()], expected)
        self.assertGreaterEqual(int(entries[1]["headers"]["X-Quell-Attempt"]), 2)

    def test_c_receiver_down_then_back_catches_up(self):
        port = free_port()  # nothing listens there yet
        r = Receiver(port=port)
        self.receivers.append(r)
        sub = self.subscribe(r.url)
        expected = [self.create("ip:10.3.0.%d" % i)["seq"] for i in range(5)]
        wait_for(lambda: self.status_of(sub["id"])["delivery"]["failures"] >= 2, what="failures")
        self.assertIn("connect", self.status_of(sub["id"])["delivery"]["last_error"])
        r.start()
        expected += [self.create("ip:10.3.1.%d" % i)["seq"] for i in range(3)]
        wait_for(lambda: len(r.accepted()) >= len(expected), what="catch-up")
        self.check_in_order(r.entries())
        self.check_signed(sub, r.entries())
        self.assertEqual([e["seq"] for e in r.accepted()], expected)
        # Delivered again: the subscription no longer reports the outage's error (it did,
        # so a healthy subscription read as failing).
        wait_for(lambda: self.status_of(sub["id"])["delivery"]["pending_seq"] == 0,
                 what="nothing pending")
        delivery = self.status_of(sub["id"])["delivery"]
        self.assertEqual((delivery["failures"], delivery["last_error"]), (0, ""), delivery)

    def test_d_restart_resumes_from_durable_cursor(self):
        r = self.receiver()
        slow = threading.Event()

        def behave(n, body):
            if slow.is_set():
                time.sleep(0.1)  # below the client timeout: just slows delivery down
            return 200

        r.behave = behave
        sub = self.subscribe(r.url)
        slow.set()
        expected = [self.create("ip:10.4.0.%d" % i)["seq"] for i in range(15)]
        wait_for(lambda: len(r.accepted()) >= 3, what="first deliveries")
        self.q.kill9()
        with r.lock:
            r.run = 1
        run0 = [e["seq"] for e in r.accepted() if e["run"] == 0]
        self.assertLess(len(run0), len(expected), "all delivered before the kill: no restart tested")
        slow.clear()
        self.q.start()
        expected += [self.create("ip:10.4.1.%d" % i)["seq"] for i in range(3)]
        wait_for(lambda: set(e["seq"] for e in r.accepted()) >= set(expected), what="resume")
        run0 = [e["seq"] for e in r.accepted() if e["run"] == 0]
        run1 = [e["seq"] for e in r.accepted() if e["run"] == 1]
        self.assertEqual(run0, sorted(run0))
        self.assertEqual(run1, sorted(run1))
        self.assertEqual(len(run1), len(set(run1)))
        # No gap: the second run starts at or before the first change the first run missed.
        missed = [s for s in expected if s not in run0]
        self.assertLessEqual(run1[0], missed[0])
        self.assertEqual(sorted(set(run0) | set(run1)), expected)
        # Duplicates are allowed only across the restart, and only of what run0 had got.
        for s in set(run0) & set(run1):
            self.assertLessEqual(s, run0[-1])
        self.check_signed(sub, r.entries())


class WebhookDeadLetterTest(WebhookCase):
    env = dict(FAST_ENV, QUELL_WEBHOOK_MAX_ATTEMPTS="3")

    def test_e_permanent_failure_ends_in_dead_letters(self):
        bad = self.receiver(behave=lambda n, body: 503)
        good = self.receiver()
        bad_sub = self.subscribe(bad.url)
        good_sub = self.subscribe(good.url)
        expected = [self.create("ip:10.5.0.%d" % i)["seq"] for i in range(3)]

        def letters():
            status, body, _ = self.q.request("GET", "/v1/webhooks/%s/dead_letters" % bad_sub["id"])
            self.assertEqual(status, 200, body)
            return body["dead_letters"]

        wait_for(lambda: len(letters()) == 3, what="dead letters")
        dl = letters()
        self.assertEqual([d["seq"] for d in dl], expected)
        for d in dl:
            self.assertEqual(d["attempts"], 3)
            self.assertEqual(d["last_error"], "HTTP 503")
            self.assertEqual(d["delivery"]["seq"], d["seq"])
            self.assertEqual(d["delivery"]["op"], "upsert")
        self.assertEqual([e["seq"] for e in bad.entries()], [s for s in expected for _ in range(3)])
        # The healthy subscription was not held up by the failing one.
        wait_for(lambda: len(good.accepted()) >= 3, what="healthy subscription")
        self.assertEqual([e["seq"] for e in good.accepted()], expected)
        self.check_signed(good_sub, good.entries())
        metrics = self.q.request("GET", "/metrics", auth=False)[1]
        self.assertIn('quell_webhook_deliveries_total{result="dead_letter"} 3', metrics)
        # One result per attempt (9 sent): 2 retried failures and 1 given up per change.
        self.assertIn('quell_webhook_deliveries_total{result="failed"} 6', metrics)
        wait_for(lambda: "quell_webhook_queue_depth 0\n" in
                 self.q.request("GET", "/metrics", auth=False)[1], what="queue depth 0")
        # Dead letters and the cursor survive a restart; nothing is re-sent.
        self.q.stop()
        self.q.start()
        self.assertEqual([d["seq"] for d in letters()], expected)
        self.assertGreaterEqual(self.status_of(bad_sub["id"])["cursor"], expected[-1])
        self.assertEqual(len(letters()), 3)
        paged = self.q.request("GET", "/v1/webhooks/%s/dead_letters?after=%d&limit=1"
                               % (bad_sub["id"], expected[0]))[1]
        self.assertEqual([d["seq"] for d in paged["dead_letters"]], [expected[1]])


if __name__ == "__main__":
    unittest.main()
