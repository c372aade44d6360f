"""Integration tests: the CrowdSec Local API decision endpoints (issue 6 item 3).

The JSON shapes are checked over HTTP against what CrowdSec 1.4 answers, and the stock
Debian `crowdsec-custom-bouncer` is run against the real quell binary: it must be told
about every ip:/cidr: deny or challenge mitigation, and about its revocation.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

from harness import QuellServer

GO_DURATION = re.compile(r"^-?(\d+h)?(\d+m)?\d+(\.\d+)?(s|ms|\u00b5s|ns)$")
DECISION_KEYS = ["duration", "id", "origin", "scenario", "scope", "type", "value"]


def go_seconds(d):
    """Parses a Go duration string (the forms Go writes) into seconds."""
    m = re.match(r"^(-?)(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)(s|ms|\u00b5s|ns))?$", d)
    assert m, d
    sign, h, mi, v, unit = m.groups()
    scale = {"s": 1, "ms": 1e-3, "\u00b5s": 1e-6, "ns": 1e-9, None: 0}[unit]
    total = int(h or 0) * 3600 + int(mi or 0) * 60 + float(v or 0) * scale
    return -total if sign else total


def new_key(q, role):
    """A key made over the API: the server knows it at once (a CLI-made key can meet the
    key ring's reload rate limit right after a miss)."""
    status, body, _ = q.request("POST", "/v1/keys", {"role": role, "name": "crowdsec test"})
    assert status == 201, body
    return body["key"]


class CrowdSecApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.q = QuellServer().start()
        assert cls.q.admin_key, "serve --dev printed no admin key"

    @classmethod
    def tearDownClass(cls):
        cls.q.cleanup()

    def create(self, entity, action="block", ttl="1h"):
        status, body, _ = self.q.request("POST", "/v1/mitigations",
                                         {"entity": entity, "action": action, "ttl": ttl,
                                          "reason": "crowdsec test"})
        self.assertIn(status, (200, 201), body)
        return body

    def revoke(self, mid):
        status, body, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % mid, {"reason": "test"})
        self.assertEqual(status, 200, body)

    def cs(self, path, key, method="GET"):
        status, body, hdrs = self.q.request(method, path, auth=False, headers={"X-Api-Key": key},
                                            raw=True)
        return status, body, hdrs

    def cs_json(self, path, key):
        status, text, _ = self.cs(path, key)
        self.assertEqual(status, 200, text)
        return json.loads(text), text

    def check_decision(self, d):
        self.assertEqual(list(d.keys()), DECISION_KEYS)  # Go's order, no extra fields
        self.assertIsInstance(d["id"], int)
        self.assertGreater(d["id"], 0)
        self.assertEqual(d["origin"], "quell")
        self.assertIn(d["scope"], ("Ip", "Range"))
        self.assertIn(d["type"], ("ban", "captcha"))
        self.assertRegex(d["duration"], GO_DURATION)

    def test_auth_roles(self):
        enforcer = new_key(self.q, "enforcer")
        for role in ("viewer", "reviewer"):
            status, text, _ = self.cs("/v1/decisions?ip=1.1.1.1", new_key(self.q, role))
            self.assertEqual(status, 403, text)
            status, text, _ = self.cs("/v1/decisions/stream?startup=true", new_key(self.q, role))
            self.assertEqual(status, 403, text)
        status, text, _ = self.cs("/v1/decisions?ip=1.1.1.1", "k_nope.secret")
        self.assertEqual(status, 401)
        self.assertIn("X-Api-Key", text)  # the header this API takes, not Bearer
        # The key goes in X-Api-Key; a Bearer header alone is not CrowdSec's way.
        status, _, _ = self.q.request("GET", "/v1/decisions?ip=1.1.1.1", key=enforcer)
        self.assertEqual(status, 401)
        self.assertEqual(self.cs("/v1/decisions?ip=1.1.1.1", enforcer)[0], 200)
        self.assertEqual(self.cs("/v1/decisions?ip=1.1.1.1", self.q.admin_key)[0], 200)

    def test_live_empty_is_literal_null(self):
        key = new_key(self.q, "enforcer")
        status, text, hdrs = self.cs("/v1/decisions?ip=192.0.2.77", key)
        self.assertEqual((status, text), (200, "null"))
        self.assertTrue(hdrs["content-type"].startswith("application/json"))

    def test_an_address_with_a_nul_inside_is_refused(self):
        # inet_pton stopped at the NUL: ?ip=A%00junk answered A's decisions.
        key = new_key(self.q, "enforcer")
        self.q.request("POST", "/v1/mitigations", {"entity": "ip:192.0.2.78", "action": "block",
                                                   "ttl": "1h", "reason": "nul"})
        self.assertEqual(len(self.cs_json("/v1/decisions?ip=192.0.2.78", key)[0]), 1)
        for query in ("ip=192.0.2.78%00junk", "range=192.0.2.0%00junk/24",
                      "range=192.0.2.78%00junk"):
            status, text, _ = self.cs("/v1/decisions?" + query, key)
            self.assertEqual(status, 400, (query, text))
        # value= has no error of its own: it names no decision.
        self.assertEqual(self.cs("/v1/decisions?value=192.0.2.78%00junk", key)[1], "null")

    def test_live_ip_range_scope_type(self):
        key = new_key(self.q, "enforcer")
        ip = self.create("ip:198.51.100.7", "block", "4h")
        net = self.create("cidr:198.51.100.0/24", "challenge", "2h")
        self.create("ip:198.51.100.8", "flag", "4h")          # verdict allow: not a decision
        self.create("user:cs-live", "block", "4h")            # not an address: invisible

        got, _ = self.cs_json("/v1/decisions?ip=198.51.100.7", key)
        for d in got:
            self.check_decision(d)
        by_scope = {d["scope"]: d for d in got}
        self.assertEqual(len(got), 2, got)
        self.assertEqual((by_scope["Ip"]["value"], by_scope["Ip"]["type"], by_scope["Ip"]["scenario"]),
                         ("198.51.100.7", "ban", "block"))
        self.assertEqual((by_scope["Range"]["value"], by_scope["Range"]["type"]),
                         ("198.51.100.0/24", "captcha"))
        self.assertTrue(4 * 3600 - 120 < go_seconds(by_scope["Ip"]["duration"]) <= 4 * 3600)
        self.assertTrue(2 * 3600 - 120 < go_seconds(by_scope["Range"]["duration"]) <= 2 * 3600)

        # The flagged ip only sees the covering range.
        got, _ = self.cs_json("/v1/decisions?ip=198.51.100.8", key)
        self.assertEqual([d["scope"] for d in got], ["Range"])
        # scope/value and type filters.
        got, _ = self.cs_json("/v1/decisions?scope=Ip&value=198.51.100.7", key)
        self.assertEqual([d["scope"] for d in got], ["Ip"])
        got, _ = self.cs_json("/v1/decisions?scope=range&value=198.51.100.0/24", key)
        self.assertEqual([d["value"] for d in got], ["198.51.100.0/24"])
        # With a scope too, a value matches exactly (as CrowdSec's): no covering range.
        self.assertEqual(self.cs("/v1/decisions?scope=range&value=198.51.100.0/25", key)[1], "null")
        self.assertEqual(self.cs("/v1/decisions?scope=ip&value=198.51.100.8", key)[1], "null")
        # value alone matches a decision's value exactly, in any scope (it listed every
        # decision before: a live bouncer asking about one address was told of all).
        got, _ = self.cs_json("/v1/decisions?value=198.51.100.7", key)
        self.assertEqual([(d["scope"], d["value"]) for d in got], [("Ip", "198.51.100.7")])
        got, _ = self.cs_json("/v1/decisions?value=198.51.100.0/24", key)
        self.assertEqual([(d["scope"], d["value"]) for d in got], [("Range", "198.51.100.0/24")])
        for value in ("198.51.100.9", "198.51.100.0/25", "cs-live"):
            self.assertEqual(self.cs("/v1/decisions?value=" + value, key)[1], "null", value)
        self.assertEqual(self.cs("/v1/decisions?ip=198.51.100.7&type=captcha", key)[1][:1], "[")
        got, _ = self.cs_json("/v1/decisions?ip=198.51.100.7&type=captcha", key)
        self.assertEqual([d["type"] for d in got], ["captcha"])
        # A range query returns the ranges that contain it.
        got, _ = self.cs_json("/v1/decisions?range=198.51.100.128/25", key)
        self.assertEqual([d["value"] for d in got], ["198.51.100.0/24"])
        self.assertEqual(self.cs("/v1/decisions?range=198.51.0.0/16", key)[1], "null")
        self.assertEqual(self.cs("/v1/decisions?scope=user&value=cs-live", key)[1], "null")
        self.assertEqual(self.cs("/v1/decisions?ip=198.51.100.7&origins=crowdsec", key)[1], "null")
        # No value: every decision (here: ours among any others).
        got, _ = self.cs_json("/v1/decisions", key)
        values = {d["value"] for d in got}
        self.assertTrue({"198.51.100.7", "198.51.100.0/24"} <= values)
        self.assertNotIn("198.51.100.8", values)
        self.assertNotIn("cs-live", values)
        # Ids are stable: the same in live mode and in the stream.
        stream, _ = self.cs_json("/v1/decisions/stream?startup=true", key)
        ids = {d["value"]: d["id"] for d in stream["new"]}
        self.assertEqual(ids["198.51.100.7"], by_scope["Ip"]["id"])
        self.assertEqual(ids["198.51.100.0/24"], by_scope["Range"]["id"])
        self.assertNotEqual(by_scope["Ip"]["id"], by_scope["Range"]["id"])
        # HEAD answers 200 without a body.
        status, text, _ = self.cs("/v1/decisions?ip=198.51.100.7", key, method="HEAD")
        self.assertEqual((status, text), (200, ""))
        self.revoke(ip["id"])
        self.revoke(net["id"])
        self.assertEqual(self.cs("/v1/decisions?ip=198.51.100.7", key)[1], "null")

    def test_stream_cursor_per_key(self):
        a = new_key(self.q, "enforcer")
        b = new_key(self.q, "enforcer")
        first, _ = self.cs_json("/v1/decisions/stream?startup=true", a)
        self.assertEqual(sorted(first.keys()), ["deleted", "new"])
        self.assertIsNone(first["deleted"])  # startup: nothing to delete
        _, text = self.cs_json("/v1/decisions/stream?startup=false", a)
        self.assertEqual(text, '{"deleted":null,"new":null}')  # exactly CrowdSec's bytes

        m1 = self.create("ip:203.0.113.10", "block", "1h")
        m2 = self.create("cidr:203.0.113.128/25", "challenge", "1h")
        self.create("user:cs-stream", "block", "1h")
        self.create("ip:203.0.113.11", "throttle", "1h")
        got, _ = self.cs_json("/v1/decisions/stream", a)
        self.assertIsNone(got["deleted"])
        self.assertEqual(sorted((d["scope"], d["value"], d["type"]) for d in got["new"]),
                         [("Ip", "203.0.113.10", "ban"), ("Range", "203.0.113.128/25", "captcha")])
        for d in got["new"]:
            self.check_decision(d)
        # HEAD does not move the cursor.
        self.revoke(m1["id"])
        self.assertEqual(self.cs("/v1/decisions/stream", a, method="HEAD")[:2], (200, ""))
        got, _ = self.cs_json("/v1/decisions/stream", a)
        self.assertIsNone(got["new"])
        self.assertEqual([d["value"] for d in got["deleted"]], ["203.0.113.10"])
        self.check_decision(got["deleted"][0])
        self.assertLess(go_seconds(got["deleted"][0]["duration"]), 0)
        self.assertEqual(self.cs_json("/v1/decisions/stream", a)[1], '{"deleted":null,"new":null}')

        # Key b has no cursor yet: its first pull is a startup (all active, not m1).
        got, _ = self.cs_json("/v1/decisions/stream?startup=true&scopes=ip", b)
        self.assertNotIn("203.0.113.10", [d["value"] for d in got["new"] or []])
        self.assertNotIn("203.0.113.128/25", [d["value"] for d in got["new"] or []])  # scopes=ip
        self.revoke(m2["id"])
        got, _ = self.cs_json("/v1/decisions/stream?scopes=ip", b)
        self.assertIsNone(got["deleted"])
        got, _ = self.cs_json("/v1/decisions/stream", a)
        self.assertEqual([d["value"] for d in got["deleted"]], ["203.0.113.128/25"])

    def test_deleted_held_back_while_another_ban_holds_the_value(self):
        key = new_key(self.q, "enforcer")
        self.cs_json("/v1/decisions/stream?startup=true", key)
        m1 = self.create("ip:203.0.113.50", "block", "1h")
        self.create("ip:203.0.113.50", "suspend", "2h")
        got, _ = self.cs_json("/v1/decisions/stream", key)
        # One decision per value, the longest (a bouncer keeps one timeout per value).
        self.assertEqual([(d["value"], d["scenario"]) for d in got["new"]],
                         [("203.0.113.50", "suspend")])
        self.revoke(m1["id"])
        got, _ = self.cs_json("/v1/decisions/stream", key)
        self.assertIsNone(got["deleted"], got)  # still banned by the suspend
        self.assertEqual(len(self.cs_json("/v1/decisions?ip=203.0.113.50", key)[0]), 1)

    def test_a_shorter_ban_never_shortens_a_longer_one(self):
        # Sent after the 1h ban, a 30s one made bouncers that set a timeout per add lift
        # the ban after 30 s (CrowdSec sends only the longest: crowdsec#1158).
        key = new_key(self.q, "enforcer")
        self.cs_json("/v1/decisions/stream?startup=true", key)
        self.create("ip:203.0.113.60", "block", "1h")
        self.cs_json("/v1/decisions/stream", key)
        self.create("ip:203.0.113.60", "suspend", "30s")
        got, _ = self.cs_json("/v1/decisions/stream", key)
        self.assertEqual([d["scenario"] for d in got["new"]], ["block"], got)
        self.assertGreater(go_seconds(got["new"][0]["duration"]), 3000)
        fresh = new_key(self.q, "enforcer")
        got, _ = self.cs_json("/v1/decisions/stream?startup=true", fresh)
        self.assertEqual([d["scenario"] for d in got["new"] if d["value"] == "203.0.113.60"],
                         ["block"])

    def test_a_decision_hidden_by_filters_does_not_hold_back_a_delete(self):
        # The suspend is filtered out for this bouncer: it never saw it, nor would it see
        # its end; the block's revoke used to be held back by it, leaving the ban forever.
        key = new_key(self.q, "enforcer")
        flt = "scenarios_not_containing=suspend"
        self.cs_json("/v1/decisions/stream?startup=true&" + flt, key)
        block = self.create("ip:203.0.113.70", "block", "1h")
        self.create("ip:203.0.113.70", "suspend", "2h")
        got, _ = self.cs_json("/v1/decisions/stream?" + flt, key)
        self.assertEqual([d["scenario"] for d in got["new"]], ["block"])
        self.revoke(block["id"])
        got, _ = self.cs_json("/v1/decisions/stream?" + flt, key)
        self.assertEqual([d["value"] for d in got["deleted"] or []], ["203.0.113.70"], got)


CATALOG = """
actions:
  - {name: block, verdict: %(block)s, severity: high, ttl: 7d}
  - {name: flag, verdict: %(flag)s, severity: low, ttl: 7d}
  - {name: challenge, verdict: %(challenge)s, severity: low, ttl: 1d}
policies: []
"""


class CrowdSecCatalogChangeTest(unittest.TestCase):
    """A policy set that gives actions other verdicts changes which mitigations are
    decisions: a stream bouncer must be told, or it keeps a ban Quell no longer has (and
    never hears of its revocation)."""

    def publish(self, **verdicts):
        status, body, _ = self.q.request("PUT", "/v1/policies", CATALOG % verdicts,
                                         headers={"Content-Type": "application/yaml"})
        self.assertEqual(status, 200, body)

    def pull(self, key, startup=False):
        status, text, _ = self.q.request(
            "GET", "/v1/decisions/stream" + ("?startup=true" if startup else ""), auth=False,
            headers={"X-Api-Key": key}, raw=True)
        self.assertEqual(status, 200, text)
        body = json.loads(text)
        return ({(d["value"], d["type"]) for d in body["deleted"] or []},
                {(d["value"], d["type"]) for d in body["new"] or []})

    def test_a_catalog_change_resyncs_the_stream(self):
        self.q = QuellServer().start()
        try:
            self.publish(block="deny", flag="allow", challenge="challenge")
            ids = {}
            for ip, action in (("203.0.113.9", "block"), ("203.0.113.10", "block"),
                               ("203.0.113.11", "flag"), ("203.0.113.12", "challenge")):
                status, m, _ = self.q.request("POST", "/v1/mitigations", {
                    "entity": "ip:" + ip, "action": action, "ttl": "1h", "reason": "t"})
                self.assertEqual(status, 201, m)
                ids[ip] = m["id"]
            key = new_key(self.q, "enforcer")
            self.assertEqual(self.pull(key, startup=True), (set(), {
                ("203.0.113.9", "ban"), ("203.0.113.10", "ban"), ("203.0.113.12", "captcha")}))
            # block allows now, flag denies, challenge bans; .10's block is revoked too.
            self.publish(block="allow", flag="deny", challenge="deny")
            status, body, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % ids["203.0.113.10"],
                                             {"reason": "t"})
            self.assertEqual(status, 200, body)
            deleted, new = self.pull(key)
            self.assertEqual(deleted, {("203.0.113.9", "ban"), ("203.0.113.10", "ban"),
                                       ("203.0.113.12", "captcha")})
            self.assertEqual(new, {("203.0.113.11", "ban"), ("203.0.113.12", "ban")})
            # Then incremental again, under the new verdicts.
            self.assertEqual(self.pull(key), (set(), set()))
            status, body, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % ids["203.0.113.11"],
                                             {"reason": "t"})
            self.assertEqual(status, 200, body)
            self.assertEqual(self.pull(key), ({("203.0.113.11", "ban")}, set()))
        finally:
            self.q.cleanup()


class CrowdSecRestartTest(unittest.TestCase):
    def test_unknown_cursor_after_restart_gets_all_active_and_recent_deletes(self):
        q = QuellServer()
        try:
            q.start()
            key = new_key(q, "enforcer")
            hdr = {"X-Api-Key": key}
            keep = q.request("POST", "/v1/mitigations", {"entity": "ip:192.0.2.1", "action": "block",
                                                         "ttl": "1h", "reason": "t"})[1]
            gone = q.request("POST", "/v1/mitigations", {"entity": "ip:192.0.2.2", "action": "block",
                                                         "ttl": "1h", "reason": "t"})[1]
            q.request("GET", "/v1/decisions/stream?startup=true", auth=False, headers=hdr)
            q.request("POST", "/v1/mitigations/%s/revoke" % gone["id"], {"reason": "t"})
            self.assertEqual(q.stop(), 0)
            q.start(dev=False)
            _, got, _ = q.request("GET", "/v1/decisions/stream", auth=False, headers=hdr)
            self.assertEqual([d["value"] for d in got["new"]], ["192.0.2.1"])
            self.assertEqual([d["value"] for d in got["deleted"]], ["192.0.2.2"])
            self.assertEqual(got["new"][0]["id"], self._live_id(q, hdr, "192.0.2.1"))
            self.assertTrue(keep["id"])
            _, got, _ = q.request("GET", "/v1/decisions/stream", auth=False, headers=hdr)
            self.assertEqual(got, {"deleted": None, "new": None})
        finally:
            q.cleanup()

    @staticmethod
    def _live_id(q, hdr, ip):
        return q.request("GET", "/v1/decisions?ip=" + ip, auth=False, headers=hdr)[1][0]["id"]


BOUNCER = shutil.which("crowdsec-custom-bouncer")


@unittest.skipUnless(BOUNCER, "crowdsec-custom-bouncer not installed "
                              "(/work/shared/peers/crowdsec-lapi install, or scripts/setup)")
class StockBouncerTest(unittest.TestCase):
    """The Debian 12 crowdsec-custom-bouncer, unmodified, pointed at quell."""

    def setUp(self):
        self.q = QuellServer().start()
        self.tmp = tempfile.TemporaryDirectory(prefix="quell-cs-")
        self.calls = os.path.join(self.tmp.name, "calls.txt")
        script = os.path.join(self.tmp.name, "record.sh")
        with open(script, "w") as f:
            f.write('#!/bin/sh\nprintf "%%s %%s %%s %%s\\n" "$1" "$2" "$3" "$4" >> %s\n' % self.calls)
        os.chmod(script, 0o755)
        key = new_key(self.q, "enforcer")
        self.config = os.path.join(self.tmp.name, "bouncer.yaml")
        with open(self.config, "w") as f:
            f.write("\n".join([
                "bin_path: " + script,
                "feed_via_stdin: false",
                "total_retries: 0",
                "scenarios_containing: []",
                "scenarios_not_containing: []",
                "origins: []",
                "piddir: " + self.tmp.name,
                "update_frequency: 200ms",
                "cache_retention_duration: 1s",
                "daemonize: false",
                "log_mode: stdout",
                "log_dir: " + self.tmp.name,
                "log_level: info",
                "api_url: http://127.0.0.1:%d/" % self.q.port,
                "api_key: " + key,
                "prometheus:",
                "  enabled: false",
                "  listen_addr: 127.0.0.1",
                "  listen_port: 0",
                ""]))
        self.log = open(os.path.join(self.tmp.name, "bouncer.log"), "wb")
        self.bouncer = None

    def tearDown(self):
        if self.bouncer is not None and self.bouncer.poll() is None:
            self.bouncer.terminate()
            try:
                self.bouncer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.bouncer.kill()
                self.bouncer.wait()
        self.log.close()
        self.q.cleanup()
        self.tmp.cleanup()

    def read_calls(self):
        try:
            with open(self.calls) as f:
                return [line.split() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_for(self, pred, what, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            calls = self.read_calls()
            if pred(calls):
                return calls
            self.assertIsNone(self.bouncer.poll(), "bouncer exited: " + self.bouncer_log())
            time.sleep(0.1)
        self.fail("timed out waiting for %s; calls: %s; log: %s" % (what, self.read_calls(),
                                                                    self.bouncer_log()))

    def bouncer_log(self):
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()[-3000:]

    def create(self, entity, action, ttl):
        status, body, _ = self.q.request("POST", "/v1/mitigations", {
            "entity": entity, "action": action, "ttl": ttl, "reason": "bouncer test"})
        self.assertEqual(status, 201, body)
        return body

    def test_adds_and_deletes_reach_the_script(self):
        # One decision exists before the bouncer starts: it arrives in the startup pull.
        self.create("ip:198.18.0.1", "suspend", "3h")
        self.bouncer = subprocess.Popen([BOUNCER, "-c", self.config], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.wait_for(lambda c: ["add", "198.18.0.1"] in [x[:2] for x in c], "the startup add")

        block = self.create("ip:198.18.0.2", "block", "2h")
        self.create("cidr:198.18.1.0/24", "challenge", "1h")
        self.create("user:bouncer-u1", "block", "1h")   # not an address
        self.create("ip:198.18.0.3", "flag", "1h")      # verdict allow
        calls = self.wait_for(lambda c: {"198.18.0.2", "198.18.1.0/24"} <= {x[1] for x in c if x[0] == "add"},
                              "the ip and cidr adds")
        adds = {x[1]: x for x in calls if x[0] == "add"}
        self.assertEqual(adds["198.18.0.2"][3], "block")          # scenario = action
        self.assertTrue(7000 < int(adds["198.18.0.2"][2]) <= 7200)  # seconds left of 2h
        self.assertTrue(3500 < int(adds["198.18.1.0/24"][2]) <= 3600)

        status, _, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % block["id"],
                                      {"reason": "bouncer test"})
        self.assertEqual(status, 200)
        calls = self.wait_for(lambda c: ["del", "198.18.0.2"] in [x[:2] for x in c], "the delete")
        values = {x[1] for x in calls}
        self.assertNotIn("bouncer-u1", values)
        self.assertNotIn("198.18.0.3", values)
        self.assertNotIn("del", [x[0] for x in calls if x[1] != "198.18.0.2"])


if __name__ == "__main__":
    unittest.main()
