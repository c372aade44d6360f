"""Integration tests for real-time events (issue 4): POST /v1/events against the real
binary with the example music-streaming policy set — counters, late events, rule-made
detections through the decision path, idempotent replays, and the Redis backend with
redis-server stopped and restarted under load (fail_open and fail_closed)."""
import datetime
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from harness import QuellServer, free_port

EXAMPLES = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "examples"))


def ts(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def config_file(tmp, counters):
    """The example config with an absolute policies path and a `counters:` section."""
    with open(os.path.join(EXAMPLES, "quell.yaml")) as f:
        text = f.read()
    policies = os.environ.get("QUELL_TEST_POLICIES") or os.path.join(EXAMPLES, "policies", "music.yaml")
    text = text.replace("policies: policies/music.yaml", "policies: " + policies)
    text += "\ncounters:\n" + "".join("  %s: %s\n" % kv for kv in counters.items())
    path = os.path.join(tmp, "quell.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


class RedisServer:
    """A redis-server on a free loopback port, stopped by PID."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="quell-redis-")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        self.dir.cleanup()


def login(user, ip, at=None):
    return {"type": "login", "entity": user, "at": ts(at or now()), "attrs": {"ip": ip}}


def rule_detections(result):
    return [d for d in result.get("detections", [])]


def wait_verdict(q, entity, want, timeout=5):
    """The check verdict for `entity` on the login surface, once it is `want` (the index
    follows the ledger) or when `timeout` passes."""
    deadline = time.time() + timeout
    while True:
        s, c, _ = q.request("GET", "/v1/check?entity=" + entity + "&surface=login")
        assert s == 200, c
        if c["verdict"] == want or time.time() > deadline:
            return c["verdict"]
        time.sleep(0.05)


class EventsMemoryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="quell-ev-")
        cfg = config_file(cls.tmp.name, {"backend": "memory", "lateness": "5m"})
        cls.q = QuellServer(extra_args=["--config", cfg]).start()

    @classmethod
    def tearDownClass(cls):
        cls.q.cleanup()
        cls.tmp.cleanup()

    def test_credential_stuffing_rule_makes_a_detection(self):
        ip = "ip:10.1.2.3"
        events = [login("user:cs%d" % i, ip) for i in range(25)]
        # A batch is recorded whole before its rules run: 15 accounts stay under the bar.
        s, r, _ = self.q.request("POST", "/v1/events", {"events": events[:15]})
        self.assertEqual(s, 200, r)
        res = r["results"]
        self.assertEqual(len(res), 15)
        self.assertTrue(all(x["status"] == "accepted" for x in res), res)
        self.assertTrue(all(x["outcomes"]["counted"] == 1 for x in res), res)
        self.assertFalse(any(rule_detections(x) for x in res), res)
        # 25 distinct accounts (> 20): the rule fires for the login events of this batch.
        s, r, _ = self.q.request("POST", "/v1/events", {"events": events[15:]})
        self.assertEqual(s, 200, r)
        fired = [x for x in r["results"] if rule_detections(x)]
        self.assertEqual(len(fired), 10, r)
        d = fired[0]["detections"][0]
        self.assertEqual(d["status"], "accepted", d)
        self.assertEqual(d["source"], "rule:credential-stuffing", d)
        self.assertEqual(d["decisions"][0]["entity"], ip, d)
        # The mitigation is live on the IP (the policy's target), via the normal path.
        self.assertEqual(wait_verdict(self.q, ip, "challenge"), "challenge")
        # Replaying the same events is idempotent: the detections are duplicates.
        s, r2, _ = self.q.request("POST", "/v1/events", {"events": events[15:]})
        self.assertEqual(s, 200, r2)
        dups = [d for x in r2["results"] for d in rule_detections(x)]
        self.assertEqual(len(dups), 10, r2)
        self.assertEqual({d["status"] for d in dups}, {"duplicate"}, dups)

    def test_one_address_spelt_two_ways_is_one_counter_key(self):
        # ip:2001:DB8::1 and ip:2001:db8:0:0:0:0:0:1 are one address; as counter keys they
        # were three, and stuffing from it spread over the spellings escaped the rule.
        spellings = ["ip:2001:DB8::7", "ip:2001:db8::7", "ip:2001:db8:0:0:0:0:0:7"]
        fired = []
        for i in range(21):
            s, r, _ = self.q.request("POST", "/v1/events",
                                     login("user:spell%d" % i, spellings[i % 3]))
            self.assertEqual(s, 200, r)
            fired += rule_detections(r["results"][0])
        self.assertEqual(len(fired), 1, fired)  # the 21st distinct account
        self.assertEqual(fired[0]["decisions"][0]["entity"], "ip:2001:db8::7")

    def test_an_event_slightly_ahead_counts_at_once(self):
        # Up to 5 s ahead is accepted; it was counted in its future bucket, which reads
        # (up to now) did not see: accepted and "counted", yet invisible to its own rule.
        user = "user:ahead"
        at = now() + datetime.timedelta(seconds=3)
        events = [{"type": "login_failed", "entity": user, "at": ts(at)} for _ in range(10)]
        for i, e in enumerate(events):
            e["id"] = "ahead-%d" % i
        s, r, _ = self.q.request("POST", "/v1/events", {"events": events})
        self.assertEqual(s, 200, r)
        self.assertTrue(any(rule_detections(x) for x in r["results"]), r)

    def test_brute_force_counts_and_late_events(self):
        user = "user:bf1"
        t = now()
        # 9 failed logins, some late but within the 5 m bound: they count in their window.
        events = [{"type": "login_failed", "entity": user,
                   "at": ts(t - datetime.timedelta(minutes=3, seconds=i))} for i in range(9)]
        s, r, _ = self.q.request("POST", "/v1/events", {"events": events})
        self.assertEqual(s, 200, r)
        self.assertFalse(any(rule_detections(x) for x in r["results"]), r)
        # Too old: rejected with its reason, not counted.
        old = {"type": "login_failed", "entity": user, "at": ts(t - datetime.timedelta(minutes=9))}
        s, r, _ = self.q.request("POST", "/v1/events", old)
        self.assertEqual(s, 400, r)
        self.assertEqual(r["results"][0]["status"], "rejected")
        self.assertEqual(r["results"][0]["reason"], "too_late")
        # The 10th failed login within 10 m fires brute-force-account (count >= 10).
        s, r, _ = self.q.request("POST", "/v1/events",
                                 {"type": "login_failed", "entity": user, "at": ts(now())})
        self.assertEqual(s, 200, r)
        dets = rule_detections(r["results"][0])
        self.assertEqual(len(dets), 1, r)
        self.assertEqual(wait_verdict(self.q, user, "throttle"), "throttle")

    def test_policies_test_decides_events_and_writes_nothing(self):
        # POST /v1/policies/test with events: the rule reads the real counters with the
        # tested events counted virtually; no mitigation, no ledger change, no count.
        user = "user:pt1"
        ev = lambda: {"type": "login_failed", "entity": user, "at": ts(now())}
        s, r, _ = self.q.request("POST", "/v1/events", {"events": [ev() for _ in range(8)]})
        self.assertEqual(s, 200, r)
        self.assertFalse(any(rule_detections(x) for x in r["results"]), r)
        seq = self.q.request("GET", "/readyz", auth=False)[1]["seq"]

        def decisions(t):
            return [[(d["policy"], d["action"], d["state"], d["entity"]) for d in e["decisions"]]
                    for e in t["events"]]
        # A 9th failed login, tested: under brute-force-account's 10.
        s, t, _ = self.q.request("POST", "/v1/policies/test", {"events": [ev()]})
        self.assertEqual(s, 200, t)
        self.assertEqual(decisions(t), [[]], t)
        self.assertEqual(t["results"], [], t)
        # Two in one request: a batch counts whole before its rules run, both read 10.
        s, t, _ = self.q.request("POST", "/v1/policies/test", {"events": [ev(), ev()]})
        self.assertEqual(s, 200, t)
        fired = [("brute-force-account", "throttle", "active", user)]
        self.assertEqual(decisions(t), [fired, fired], t)
        self.assertEqual([e["index"] for e in t["events"]], [0, 1])
        # An event a submission would refuse is a 400 naming it.
        s, t, _ = self.q.request("POST", "/v1/policies/test",
                                 {"events": [ev(), {"type": "login_failed"}]})
        self.assertEqual(s, 400, t)
        self.assertEqual([d["field"] for d in t["error"]["details"]], ["events[1].entity"], t)
        # Nothing was written.
        self.assertEqual(self.q.request("GET", "/readyz", auth=False)[1]["seq"], seq)
        s, c, _ = self.q.request("GET", "/v1/check?entity=" + user)
        self.assertEqual((s, c["verdict"], c["mitigations"]), (200, "allow", []), c)
        s, m, _ = self.q.request("GET", "/v1/mitigations?entity=" + user)
        self.assertEqual((s, m["mitigations"]), (200, []), m)
        # Nor counted: the 3 tested events would make a real 9th fire. It does not; the
        # real 10th does.
        s, r, _ = self.q.request("POST", "/v1/events", ev())
        self.assertEqual(s, 200, r)
        self.assertEqual(r["results"][0]["outcomes"]["counted"], 1, r)
        self.assertEqual(rule_detections(r["results"][0]), [], r)
        self.assertEqual(self.q.request("GET", "/readyz", auth=False)[1]["seq"], seq)
        s, r, _ = self.q.request("POST", "/v1/events", ev())
        self.assertEqual(s, 200, r)
        self.assertEqual(len(rule_detections(r["results"][0])), 1, r)
        self.assertEqual(wait_verdict(self.q, user, "throttle"), "throttle")

    def test_per_item_errors_and_limits(self):
        good = {"type": "play", "entity": "user:p1", "at": ts(now()),
                "attrs": {"ip": "ip:10.9.9.9", "track": "track:t1", "ms_played": 40000}}
        s, r, _ = self.q.request("POST", "/v1/events", {"events": [
            good, {"type": "play"}, {"type": "play", "entity": "nope"},
            {"type": "play", "entity": "user:p1", "at": ts(now() + datetime.timedelta(minutes=5))}]})
        self.assertEqual(s, 200, r)
        st = [x["status"] for x in r["results"]]
        self.assertEqual(st, ["accepted", "rejected", "rejected", "rejected"], r)
        self.assertEqual(r["results"][0]["outcomes"]["counted"], 2)  # plays + tracks_per_ip
        self.assertEqual(r["results"][3]["reason"], "too_early")
        # A rejected event's error has a detection's shape (SPEC: one error shape).
        e = r["results"][2]["error"]
        self.assertEqual(e["code"], "invalid_argument", r)
        self.assertEqual([d["field"] for d in e["details"]], ["events[2].entity"], r)
        self.assertTrue(e["message"].startswith("events[2].entity: "), r)
        self.assertEqual(r["results"][3]["error"]["details"][0]["field"], "events[3].at", r)
        # A field given twice, at the top or within attrs: accepted before, counting the
        # first value where a proxy or an audit tool keeps the last.
        body = ('{"events": [{"type": "play", "entity": "user:p1", "entity": "user:p2"},'
                ' {"type": "play", "entity": "user:p1", "attrs": {"ip": "ip:10.0.0.1",'
                ' "ip": "ip:10.0.0.2"}}]}')
        s, r, _ = self.q.request("POST", "/v1/events", body)
        self.assertEqual(s, 400, r)
        self.assertEqual([x["error"]["message"] for x in r["results"]],
                         ["events[0].entity: given twice", "events[1].attrs.ip: given twice"], r)
        self.assertEqual([x["error"]["details"] for x in r["results"]],
                         [[{"field": "events[0].entity", "message": "given twice"}],
                          [{"field": "events[1].attrs.ip", "message": "given twice"}]], r)
        big = {"events": [good] * 10001}
        s, r, _ = self.q.request("POST", "/v1/events", big)
        self.assertEqual(s, 413, r)
        # A viewer key may not submit events.
        key = self.q.create_key("viewer")
        s, _, _ = self.q.request("POST", "/v1/events", good, key=key)
        self.assertEqual(s, 403)

    def test_metrics(self):
        # A type no counter or policy is on is refused (it used to be "accepted", counting
        # nothing: a misspelt type looked as if it worked), and counted as "other".
        s, r, _ = self.q.request("POST", "/v1/events", {"type": "weird_type", "entity": "user:m1"})
        self.assertEqual(s, 400, r)
        self.assertEqual(r["results"][0]["reason"], "unknown_type", r)
        e = r["results"][0]["error"]
        self.assertTrue(e["message"].startswith('type: no counter or policy of the active policy set'), r)
        self.assertIn('is on "weird_type"', e["message"])
        self.assertEqual(e["details"][0]["field"], "type", r)
        s, r, _ = self.q.request("POST", "/v1/events", {"events": [
            {"type": "play", "entity": "user:m1", "attrs": {"ip": "10.0.0.1", "track": "t"}},
            {"type": "plays", "entity": "user:m1"}]})
        self.assertEqual(s, 200, r)
        self.assertEqual([x["status"] for x in r["results"]], ["accepted", "rejected"], r)
        self.assertTrue(r["results"][1]["error"]["message"].startswith("events[1].type: "), r)
        # A login without attrs.ip: credential-stuffing's distinct() on it fails at run time
        # and reads as false. The reply cannot say (the event is fine); the metric does.
        s, r, _ = self.q.request("POST", "/v1/events", {"type": "login", "entity": "user:m2"})
        self.assertEqual(s, 200, r)
        s, text, _ = self.q.request("GET", "/metrics", raw=True)
        self.assertEqual(s, 200)
        self.assertIn('quell_events_total{type="other",status="rejected"}', text)
        self.assertRegex(text, r'quell_policy_errors_total\{policy="credential-stuffing",'
                               r'kind="condition"\} [1-9]')
        self.assertIn("quell_velocity_keys", text)
        self.assertIn("quell_velocity_evictions_cap_total", text)


class NumericCounterKeyTest(unittest.TestCase):
    SET = """
actions:
  - {name: flag, verdict: allow, severity: low, ttl: 1d}
counters:
  - {name: per_card, on: payment, key: attrs.card, windows: [1h]}
  - {name: amounts, on: payment, key: entity, distinct: attrs.amount, windows: [1h]}
policies:
  - id: card-reuse
    on: payment
    when: count("per_card", event.attrs.card, "1h") >= 2
    action: flag
  - id: amount-probing
    on: payment
    when: distinct("amounts", entity, "1h") >= 2
    action: flag
"""

    def test_a_counter_keyed_on_a_number_is_read_by_count(self):
        # "card": 4111 was counted (under "4111") but count() refused a number: the rule
        # never fired, with only a policy error in the metrics.
        q = QuellServer().start()
        try:
            s, body, _ = q.request("PUT", "/v1/policies", self.SET,
                                   headers={"Content-Type": "application/yaml"})
            self.assertEqual(s, 200, body)
            fired = []
            for i in range(2):
                s, r, _ = q.request("POST", "/v1/events", {
                    "type": "payment", "entity": "user:card%d" % i, "at": ts(now()),
                    "attrs": {"card": 4111}})
                self.assertEqual(s, 200, r)
                self.assertEqual(r["results"][0]["outcomes"]["counted"], 1, r)
                fired.append(len(rule_detections(r["results"][0])))
            self.assertEqual(fired, [0, 1])
            # Numbers were keyed with 6 significant digits: 12345.67 and 12345.68 were one
            # distinct amount, and a card number past int64 was counted as its digits and
            # read back as "1.84467e+19". Now: the shortest text of the number, both ways.
            def pay(entity, card, amount):
                s, r, _ = q.request("POST", "/v1/events", {
                    "type": "payment", "entity": entity, "at": ts(now()),
                    "attrs": {"card": card, "amount": amount}})
                self.assertEqual(s, 200, r)
                return sorted(d["source"] for d in rule_detections(r["results"][0]))
            big = 18446744073709551615  # one card twice, one amount: card-reuse only
            self.assertEqual([pay("user:big", big, 1.5), pay("user:big", big, 1.5)],
                             [[], ["rule:card-reuse"]])
            # Two cards, two amounts a cent apart: amount-probing only.
            self.assertEqual([pay("user:amt", 701, 12345.67), pay("user:amt", 702, 12345.68)],
                             [[], ["rule:amount-probing"]])
        finally:
            q.cleanup()


class EventsRedisTest(unittest.TestCase):
    """Redis backend: shared counters, outages under load, recovery."""

    @classmethod
    def setUpClass(cls):
        if shutil.which("redis-server") is None:
            raise unittest.SkipTest("redis-server not installed")
        cls.redis = RedisServer().start()
        cls.tmp = tempfile.TemporaryDirectory(prefix="quell-evr-")
        url = "redis://127.0.0.1:%d" % cls.redis.port
        cls.open_cfg = config_file(os.path.join(cls.tmp.name), {"on_error": "fail_open"})
        os.makedirs(os.path.join(cls.tmp.name, "c"))
        cls.closed_cfg = config_file(os.path.join(cls.tmp.name, "c"), {"on_error": "fail_closed"})
        cls.q_open = QuellServer(extra_args=["--config", cls.open_cfg, "--redis", url]).start()
        cls.q_closed = QuellServer(extra_args=["--config", cls.closed_cfg, "--redis", url]).start()

    @classmethod
    def tearDownClass(cls):
        cls.q_open.cleanup()
        cls.q_closed.cleanup()
        cls.redis.cleanup()
        cls.tmp.cleanup()

    def post(self, q, events):
        return q.request("POST", "/v1/events", {"events": events})

    def test_a_rule_chaining_many_counters_fires_as_in_memory(self):
        # Redis counters are read in rounds, one more per count() a rule reaches; it gave
        # up after 8 and kept the evaluation whose unread counters read 0: a rule
        # chaining 10 counts never fired on Redis, and did in memory.
        names = ["c%d" % i for i in range(10)]
        yaml = "actions:\n  - {name: flag, verdict: allow, severity: low, ttl: 1d}\ncounters:\n"
        yaml += "".join("  - {name: %s, on: tick, key: entity, windows: [1h]}\n" % n
                        for n in names)
        yaml += "policies:\n  - id: chain\n    on: tick\n    when: '%s'\n    action: flag\n" % (
            " && ".join('count("%s", entity, "1h") > 0' % n for n in names))
        for args in ([], ["--redis", "redis://127.0.0.1:%d" % self.redis.port]):
            q = QuellServer(extra_args=args).start()
            try:
                s, body, _ = q.request("PUT", "/v1/policies", yaml,
                                       headers={"Content-Type": "application/yaml"})
                self.assertEqual(s, 200, body)
                s, r, _ = q.request("POST", "/v1/events",
                                    {"type": "tick", "entity": "user:chain-%d" % len(args)})
                self.assertEqual(s, 200, r)
                self.assertEqual([d["source"] for d in rule_detections(r["results"][0])],
                                 ["rule:chain"], (args, r))
            finally:
                q.cleanup()

    def test_shared_counters_then_outage_and_recovery(self):
        # Two nodes share one view: 12 failed logins split between them fire the rule.
        user = "user:rb1"
        ev = lambda: {"type": "login_failed", "entity": user, "at": ts(now())}
        s, r, _ = self.post(self.q_open, [ev() for _ in range(6)])
        self.assertEqual(s, 200, r)
        s, r, _ = self.post(self.q_closed, [ev() for _ in range(6)])
        self.assertEqual(s, 200, r)
        self.assertTrue(any(rule_detections(x) for x in r["results"]), r)

        # Redis stops mid-load.
        self.redis.stop()
        s, r, h = self.post(self.q_closed, [ev()])
        self.assertEqual(s, 503, r)
        self.assertIn("retry-after", h)
        s, r, _ = self.post(self.q_open, [ev()])
        self.assertEqual(s, 200, r)
        self.assertEqual(r["results"][0]["status"], "accepted")
        self.assertTrue(r["results"][0]["outcomes"].get("unavailable"), r)
        s, text, _ = self.q_open.request("GET", "/metrics", raw=True)
        fo = [l for l in text.splitlines() if l.startswith("quell_velocity_fail_open_total")]
        self.assertTrue(fo and float(fo[0].split()[-1]) >= 1, fo)
        er = [l for l in text.splitlines() if l.startswith("quell_velocity_store_errors_total")]
        self.assertTrue(er and float(er[0].split()[-1]) >= 1, er)

        # Redis returns (same port, empty): both nodes recover by themselves.
        self.redis.start()
        for q in (self.q_open, self.q_closed):
            deadline = time.time() + 15
            while True:
                s, r, _ = self.post(q, [ev()])
                if s == 200 and r["results"][0]["outcomes"]["counted"] == 1:
                    break
                self.assertLess(time.time(), deadline, (s, r))
                time.sleep(0.2)


if __name__ == "__main__":
    unittest.main()
