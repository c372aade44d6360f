"""Integration tests: the real quell binary over real HTTP (issue 2)."""
import json
import os
import signal
import socket
import tempfile
import threading
import time
import unittest

from harness import QuellServer, free_port, run_cli, send_raw


def wait_until_read_by_server(server_port, client_port, timeout=10):
    """Waits until the server's end of the loopback connection from CLIENT_PORT has
    nothing left to read (/proc/net/tcp's rx_queue): the server has read the request."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote, queues = fields[1], fields[2], fields[4]
                if (int(local.split(":")[1], 16) == server_port and
                        int(remote.split(":")[1], 16) == client_port and
                        int(queues.split(":")[1], 16) == 0):
                    return
        time.sleep(0.01)
    raise AssertionError("the server did not read the request in %ds" % timeout)


class ApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.q = QuellServer().start()
        assert cls.q.admin_key, "serve --dev printed no admin key"

    @classmethod
    def tearDownClass(cls):
        cls.q.cleanup()

    def create(self, entity, action="block", ttl="1h", reason="integration test", **kw):
        return self.q.request("POST", "/v1/mitigations",
                              {"entity": entity, "action": action, "ttl": ttl, "reason": reason}, **kw)

    def check(self, *entities, surface=None):
        qs = "&".join("entity=" + e for e in entities)
        if surface:
            qs += "&surface=" + surface
        return self.q.request("GET", "/v1/check?" + qs)

    def test_health_ready_metrics_need_no_key(self):
        self.assertEqual(self.q.request("GET", "/healthz", auth=False)[0], 200)
        status, body, _ = self.q.request("GET", "/readyz", auth=False)
        self.assertEqual(status, 200)
        self.assertEqual(body["status"], "ready")
        status, text, hdrs = self.q.request("GET", "/metrics", auth=False)
        self.assertEqual(status, 200)
        self.assertIn("quell_ledger_seq", text)
        self.assertTrue(hdrs["content-type"].startswith("text/plain"))

    def test_deeply_nested_json_is_refused_and_the_server_stays_up(self):
        # 200,000 levels used to overflow a server thread's stack (a segfault) on any JSON
        # route, for any key. Now a 400 before the parser, whatever the route.
        deep = "[" * 200000 + "]" * 200000
        for method, path in (("POST", "/v1/check"), ("POST", "/v1/mitigations"),
                             ("POST", "/v1/detections")):
            status, body, _ = self.q.request(method, path, deep)
            self.assertEqual(status, 400, (path, body))
            # The 101st '[': bytes count from 1, as in the importer's messages.
            self.assertIn("JSON nested deeper than 100 levels at byte 101", body["error"]["message"])
        ndjson = '{"id":"d1","evidence":' + "[" * 500 + "]" * 500 + "}\n"
        status, body, _ = self.q.request("POST", "/v1/detections", ndjson,
                                         headers={"Content-Type": "application/x-ndjson"})
        self.assertEqual(status, 400, body)
        self.assertIn("nested deeper", body["results"][0]["error"]["message"])
        self.assertEqual(self.q.request("GET", "/healthz", auth=False)[0], 200)

    def test_a_policy_set_without_policies_is_refused_with_its_reason(self):
        # `{}` used to publish an empty set (every policy and breaker gone), and every
        # refusal read "0 error(s); first:  " (the details were moved out first).
        _, _, before = self.q.request("GET", "/v1/policies", raw=True)
        status, body, _ = self.q.request("PUT", "/v1/policies", "{}",
                                         headers={"Content-Type": "application/yaml"})
        self.assertEqual(status, 400, body)
        self.assertIn("policy set rejected: 1 error(s); first: 1:1 the policy set has no "
                      "`policies:`", body["error"]["message"])
        _, _, after = self.q.request("GET", "/v1/policies", raw=True)
        self.assertEqual(after.get("x-quell-policy-version"), before.get("x-quell-policy-version"))

    def test_writes_refuse_query_parameters_they_do_not_take(self):
        # `?dry_run=true` used to be ignored: the rollback or revocation really happened.
        status, m, _ = self.create("user:dryrun", action="block")
        self.assertEqual(status, 201, m)
        status, body, _ = self.q.request("POST", "/v1/mitigations/%s/revoke?dry_run=true" % m["id"],
                                         {"reason": "preview"})
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"]["details"][0]["field"], "query.dry_run")
        status, body, _ = self.q.request("POST", "/v1/rollbacks?dry_run=true",
                                         {"filter": {"entity": "user:dryrun"}, "reason": "preview"})
        self.assertEqual(status, 400, body)
        # `"dry_run": null` (how many clients write an unset option) read as absent, so
        # false: the preview revoked for real.
        status, body, _ = self.q.request("POST", "/v1/rollbacks",
                                         {"filter": {"action": "block"}, "dry_run": None,
                                          "reason": "preview"})
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"]["details"][0],
                         {"field": "dry_run", "message": "must be true or false"})
        self.assertEqual(self.q.request("GET", "/v1/mitigations/" + m["id"])[1]["state"], "active")

    def test_list_cursors_and_filters_are_checked(self):
        # A garbage cursor answered an empty page (as if there were no more), a repeated
        # filter answered for its last value.
        for e in ("user:page-a", "user:page-b"):
            self.assertEqual(self.create(e, action="flag")[0], 201)
        status, page, _ = self.q.request("GET", "/v1/mitigations?action=flag&limit=1")
        self.assertEqual(status, 200, page)
        status, nxt, _ = self.q.request("GET", "/v1/mitigations?action=flag&limit=1&cursor=" +
                                        page["next_cursor"])
        self.assertEqual(status, 200, nxt)
        self.assertNotEqual(nxt["mitigations"][0]["id"], page["mitigations"][0]["id"])
        for qs, field in (("cursor=garbage", "query.cursor"), ("state=active&state=shadow", "query.state")):
            status, body, _ = self.q.request("GET", "/v1/mitigations?" + qs)
            self.assertEqual(status, 400, body)
            self.assertEqual(body["error"]["details"][0]["field"], field)
        status, body, _ = self.q.request("GET", "/v1/reviews?cursor=zzz")
        self.assertEqual(status, 400, body)

    def test_a_field_given_twice_is_refused(self):
        # {"action":"flag","action":"block"} created a flag (the first); many client
        # libraries would have read block (the last).
        body = '{"entity":"user:dupkey","action":"flag","action":"block","ttl":"1h","reason":"x"}'
        status, err, _ = self.q.request("POST", "/v1/mitigations", body)
        self.assertEqual(status, 400, err)
        self.assertEqual(err["error"]["details"][0], {"field": "action", "message": "given twice"})
        self.assertEqual(self.check("user:dupkey")[1]["verdict"], "allow")

    def test_create_check_revoke(self):
        status, m, _ = self.create("user:alice", action="suspend")
        self.assertEqual(status, 201, m)
        self.assertEqual(m["state"], "active")
        self.assertEqual(m["entity"], "user:alice")
        self.assertTrue(m["id"].startswith("m_"))
        status, v, _ = self.check("user:alice")
        self.assertEqual(status, 200)
        self.assertEqual(v["verdict"], "deny")
        self.assertEqual([x["id"] for x in v["mitigations"]], [m["id"]])
        self.assertGreaterEqual(v["seq"], m["seq"])
        # Read-your-write through the list and the entity view.
        status, page, _ = self.q.request("GET", "/v1/mitigations?entity=user:alice")
        self.assertEqual([x["id"] for x in page["mitigations"]], [m["id"]])
        status, view, _ = self.q.request("GET", "/v1/entities/user:alice")
        self.assertEqual(status, 200)
        self.assertEqual(view["verdict"], "deny")
        self.assertEqual(view["timeline"][0]["mitigation"]["id"], m["id"])
        # Revoke: gone from check, and a second revoke conflicts.
        status, r, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % m["id"],
                                      {"reason": "appeal accepted"})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["state"], "revoked")
        self.assertEqual(self.check("user:alice")[1]["verdict"], "allow")
        self.assertEqual(self.q.request("POST", "/v1/mitigations/%s/revoke" % m["id"], {})[0], 409)
        self.assertEqual(self.q.request("POST", "/v1/mitigations/m_nope/revoke", {})[0], 404)
        status, view, _ = self.q.request("GET", "/v1/entities/user:alice")
        self.assertEqual([t["mitigation"]["state"] for t in view["timeline"]], ["active", "revoked"])

    def test_surfaces_and_verdict_order(self):
        self.create("user:bob", action="exclude_royalties")
        self.create("user:bob", action="throttle")
        v = self.check("user:bob")[1]
        self.assertEqual(v["verdict"], "throttle")
        self.assertEqual(len(v["mitigations"]), 2)
        # exclude_royalties applies only to payout; throttle not to payout.
        v = self.check("user:bob", surface="payout")[1]
        self.assertEqual([x["action"] for x in v["mitigations"]], ["exclude_royalties"])
        self.assertEqual(v["verdict"], "allow")
        # POST form, several entities.
        status, v, _ = self.q.request("POST", "/v1/check", {"entities": ["user:bob", "user:nobody"]})
        self.assertEqual(status, 200)
        self.assertEqual(v["verdict"], "throttle")

    def test_cidr_and_ip_normalisation(self):
        status, m, _ = self.create("cidr:10.20.0.0/16")
        self.assertEqual(status, 201, m)
        self.create("cidr:2001:DB8::/32", action="challenge")
        v = self.check("ip:10.20.3.4")[1]
        self.assertEqual(v["verdict"], "deny")
        self.assertEqual(v["mitigations"][0]["entity"], "cidr:10.20.0.0/16")
        self.assertEqual(self.check("ip:10.21.0.1")[1]["verdict"], "allow")
        # Two addresses of the network: its mitigation is listed once (it was twice).
        both = self.q.request("GET", "/v1/check?entity=ip:10.20.3.4&entity=ip:10.20.9.9")[1]
        self.assertEqual([x["id"] for x in both["mitigations"]], [m["id"]], both)
        v = self.check("ip:2001:0db8:0000::0001")[1]
        self.assertEqual(v["verdict"], "challenge")
        status, m, _ = self.create("ip:2001:DB8:0:0::7")
        self.assertEqual(m["entity"], "ip:2001:db8::7")
        self.assertEqual(len(self.check("ip:2001:db8::7")[1]["mitigations"]), 2)

    def test_same_action_extends_instead_of_stacking(self):
        _, a, _ = self.create("user:carol", ttl="1h")
        status, b, _ = self.create("user:carol", ttl="2h")
        self.assertEqual(status, 200)
        self.assertEqual(a["id"], b["id"])
        self.assertGreater(b["expires_at"], a["expires_at"])
        # A shorter one changes no expiry, but who asked and why is on the record (it left
        # no trace: an analyst's confirmation was invisible in the timeline and the audit).
        reviewer = self.q.create_key("reviewer")
        status, c, _ = self.create("user:carol", ttl="10m", reason="analyst confirmed, case 77",
                                   key=reviewer)
        self.assertEqual((status, c["id"], c["expires_at"]), (200, a["id"], b["expires_at"]))
        timeline = self.q.request("GET", "/v1/entities/user:carol")[1]["timeline"]
        last = timeline[-1]
        self.assertEqual(last["actor"], reviewer.split(".")[0], last)
        self.assertIn("confirmed: analyst confirmed, case 77", json.dumps(last))

    def test_idempotency_key(self):
        body = {"entity": "user:dave", "action": "flag", "ttl": "1h", "reason": "idem"}
        h = {"Idempotency-Key": "req-123"}
        s1, m1, _ = self.q.request("POST", "/v1/mitigations", body, headers=h)
        s2, m2, hdrs = self.q.request("POST", "/v1/mitigations", body, headers=h)
        self.assertEqual((s1, s2), (201, 201))
        self.assertEqual(m1, m2)
        self.assertEqual(hdrs.get("idempotent-replayed"), "true")
        body["reason"] = "another body"
        s3, e, _ = self.q.request("POST", "/v1/mitigations", body, headers=h)
        self.assertEqual(s3, 422, e)
        self.assertEqual(e["error"]["code"], "idempotency_key_reused")
        # Given, the key is meant: empty (a client's unset variable) or twice is a 400,
        # not a request quietly made without one.
        self.assertError(self.q.request("POST", "/v1/mitigations", body,
                                        headers={"Idempotency-Key": ""}),
                         400, "header.Idempotency-Key")
        self.assertError(self.raw_request("POST", "/v1/mitigations", body,
                                          [("Authorization", "Bearer " + self.q.admin_key),
                                           ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]),
                         400, "header.Idempotency-Key")

    def raw_request(self, method, path, body, extra_headers):
        """As q.request, with header lines given in order (names may repeat)."""
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.q.port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            c.putrequest(method, path)
            c.putheader("Content-Type", "application/json")
            for name, value in extra_headers:
                c.putheader(name, value)
            if data is not None:
                c.putheader("Content-Length", str(len(data)))
            c.endheaders(data)
            r = c.getresponse()
            text = r.read().decode()
            return r.status, json.loads(text) if text else None, dict(r.getheaders())
        finally:
            c.close()

    def test_auth_and_roles(self):
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:x", auth=False)[0], 401)
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:x", key="k_bad.secret")[0], 401)
        bad = self.q.admin_key[:-1] + ("0" if self.q.admin_key[-1] != "0" else "1")
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:x", key=bad)[0], 401)
        # One credential: two Authorization lines are a 400 (which one counts is a guess),
        # whichever order the keys come in.
        viewer = self.q.create_key("viewer")
        for pair in ((viewer, self.q.admin_key), (self.q.admin_key, viewer)):
            self.assertError(self.raw_request("GET", "/v1/keys", None,
                                              [("Authorization", "Bearer " + k) for k in pair]),
                             400, "header.Authorization")
        # Authorization carries a scheme: the bare key, or under another one, is refused.
        for value in (self.q.admin_key, "Basic " + self.q.admin_key):
            s, e, _ = self.q.request("GET", "/v1/check?entity=user:x", auth=False,
                                     headers={"Authorization": value})
            self.assertEqual(s, 401, value)
            self.assertIn("Bearer", e["error"]["message"])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:x", auth=False,
                                        headers={"Authorization": "bearer " + self.q.admin_key})[0], 200)
        # A key made by the CLI against the running server's data works at once.
        enforcer = self.q.create_key("enforcer")
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:x", key=enforcer)[0], 200)
        status, e, _ = self.create("user:x", key=enforcer)
        self.assertEqual(status, 403)
        self.assertEqual(e["error"]["code"], "permission_denied")
        # Revoked on the CLI: refused within the key refresh period (bounded wait).
        key_id = enforcer.split(".")[0]
        run_cli("keys", "revoke", key_id, "--data", self.q.data)
        deadline = time.time() + 5
        while time.time() < deadline:
            if self.q.request("GET", "/v1/check?entity=user:x", key=enforcer)[0] == 401:
                break
            time.sleep(0.05)
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:x", key=enforcer)[0], 401)
        # Keys over HTTP.
        status, k, _ = self.q.request("POST", "/v1/keys", {"role": "viewer", "name": "dash"})
        self.assertEqual(status, 201, k)
        self.assertEqual(self.q.request("GET", "/v1/mitigations", key=k["key"])[0], 200)
        self.assertEqual(self.q.request("GET", "/v1/keys", key=k["key"])[0], 403)
        listing = self.q.request("GET", "/v1/keys")[1]
        self.assertNotIn("secret", json.dumps(listing))
        self.assertNotIn(k["key"].split(".")[1], json.dumps(listing))

    def test_cli_check_gives_the_verdict_and_why(self):
        # `quell check` (SPEC's CLI) was missing: "unknown command".
        _, m, _ = self.create("cidr:10.77.0.0/16", action="challenge", reason="proxy farm 77")
        url = "http://127.0.0.1:%d" % self.q.port
        code, out, err = run_cli("check", "ip:10.77.3.4", "user:nobody-77", "--server", url,
                                 "--key", self.q.admin_key)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith("verdict: challenge\n"), out)
        self.assertIn("cidr:10.77.0.0/16  challenge (challenge) until ", out)
        self.assertIn(m["id"], out)
        self.assertIn("proxy farm 77", out)
        code, out, _ = run_cli("check", "user:nobody-77", "--server", url, "--key",
                               self.q.admin_key, "--json")
        self.assertEqual((code, json.loads(out)["verdict"]), (0, "allow"))
        code, _, err = run_cli("check", "nocolon", "--server", url, "--key", self.q.admin_key,
                               check=False)
        self.assertEqual(code, 2)  # bad usage, as the server read it: not "did not answer"
        self.assertIn("entities[0]", err)
        self.assertEqual(run_cli("check", "user:x", "--server", url, check=False)[0], 2)  # no key

    def test_list_entries_need_a_list(self):
        # A misspelt list name is refused, not started as a new list.
        status, body, _ = self.q.request("POST", "/v1/lists/vip-artsts/entries",
                                         {"add": ["user:a1"]})
        self.assertEqual(status, 404, body)
        self.assertIn("PUT /v1/lists/vip-artsts", body["error"]["message"])
        self.assertEqual(self.q.request("GET", "/v1/lists/vip-artsts")[0], 404)
        status, body, _ = self.q.request("PUT", "/v1/lists/vip-artists", {"protected": True})
        self.assertEqual(status, 200, body)
        status, body, _ = self.q.request("POST", "/v1/lists/vip-artists/entries",
                                         {"add": ["user:a1"]})
        self.assertEqual((status, body["entries"]), (200, ["user:a1"]), body)
        # A PUT of the entries alone keeps the list protected (it silently unprotected it).
        status, body, _ = self.q.request("PUT", "/v1/lists/vip-artists", {"entries": ["user:a2"]})
        self.assertEqual((status, body["protected"], body["entries"]), (200, True, ["user:a2"]), body)
        self.assertError(self.q.request("PUT", "/v1/lists/vip-artists",
                                        {"kind": "protected", "protected": False}), 400, "protected")
        # An entity both added and removed has no one meaning: refused, nothing written.
        self.assertError(self.q.request("POST", "/v1/lists/vip-artists/entries",
                                        {"add": ["user:a3"], "remove": ["user:a3"]}),
                         400, "remove[0]")
        self.assertEqual(self.q.request("GET", "/v1/lists/vip-artists")[1]["entries"], ["user:a2"])
        # Nor in two requests: the stored kind counts (a PUT of protected=false alone left
        # a kind-protected list unprotected, its entries' decisions no longer held).
        self.assertEqual(self.q.request("PUT", "/v1/lists/plist",
                                        {"kind": "protected", "entries": ["user:p1"]})[0], 200)
        self.assertError(self.q.request("PUT", "/v1/lists/plist", {"protected": False}),
                         400, "protected")
        self.assertEqual(self.q.request("GET", "/v1/lists/plist")[1]["protected"], True)
        status, body, _ = self.q.request("PUT", "/v1/lists/plist",
                                         {"kind": "watch", "protected": False})
        self.assertEqual((status, body["protected"], body["kind"]), (200, False, "watch"), body)

    def assertError(self, resp, status, field=None):
        got_status, body, _ = resp
        self.assertEqual(got_status, status, body)
        self.assertIn("error", body)
        self.assertIn("code", body["error"])
        self.assertIn("message", body["error"])
        if field:
            fields = [d["field"] for d in body["error"].get("details", [])]
            self.assertIn(field, fields, body)

    def test_bad_input(self):
        seq = self.q.request("GET", "/readyz", auth=False)[1]["seq"]
        post = lambda body: self.q.request("POST", "/v1/mitigations", body)
        self.assertError(post(b"{not json"), 400)
        self.assertError(post(b""), 400)
        self.assertError(post(b"[1,2]"), 400)
        self.assertError(post(b'{"entity":"user:a"} trailing'), 400)
        self.assertError(post(b'{"entity":"user:\xff","action":"block","reason":"x"}'), 400)
        self.assertError(post({"entity": 5, "action": "block", "reason": "x"}), 400, "entity")
        self.assertError(post({"entity": "user:a", "action": "block", "reason": "x", "colour": 1}),
                         400, "colour")
        self.assertError(post({"entity": "User:a", "action": "block", "reason": "x"}), 400, "entity")
        # A reason is read by people: no NUL, no terminal escape (line breaks are fine).
        self.assertError(post({"entity": "user:a", "action": "block", "reason": "a\u0000b"}),
                         400, "reason")
        self.assertError(post({"entity": "user:a", "action": "block",
                               "reason": "\u001b[31mred"}), 400, "reason")
        # Every other text a person writes too: a rollback's reason (it became the revoked
        # mitigations' state_reason), review and appeal notes, appeal statements.
        self.assertError(self.q.request("POST", "/v1/rollbacks",
                                        {"filter": {"source": "nobody"}, "dry_run": True,
                                         "reason": "a\u001b[2Jb"}), 400, "reason")
        self.assertError(self.q.request("POST", "/v1/reviews/m_nope/decision",
                                        {"approve": True, "note": "ok\u001b[2Jx"}), 400, "note")
        self.assertError(self.q.request("POST", "/v1/appeals",
                                        {"mitigation_id": "m_nope", "statement": "a\u0001b"}),
                         400, "statement")
        self.assertError(self.q.request("POST", "/v1/appeals/ap_nope/decision",
                                        {"grant": False, "note": "a\u0000b"}), 400, "note")
        # A key's sources and name hold what a detection can carry, each source once.
        # C1 controls too (U+009B is CSI), and the real-time rules' reserved sources: such
        # a key could never submit.
        for body in ({"role": "detector", "sources": ["a\u0000b"]},
                     {"role": "detector", "sources": ["x\u001by"]},
                     {"role": "detector", "sources": ["s1", "s1"]},
                     {"role": "detector", "sources": ["src\u009b"]},
                     {"role": "detector", "sources": ["rule:loop-listener"]},
                     {"role": "viewer", "name": "a\u0001"},
                     {"role": "viewer", "name": "x\u009b31mRED"}):
            status, err, _ = self.q.request("POST", "/v1/keys", body)
            self.assertEqual(status, 400, (body, err))
            # Each with the field at fault, as every other 400 (it was a bare message).
            self.assertEqual(err["error"]["details"][0]["field"],
                             "name" if "name" in body else
                             "sources[1]" if body["sources"] == ["s1", "s1"] else "sources[0]",
                             err)
        self.assertError(post({"entity": "user:a", "action": "flag", "reason": "a\u009bb"}),
                         400, "reason")
        self.assertError(post({"entity": "ip:999.1.1.1", "action": "block", "reason": "x"}), 400, "entity")
        self.assertError(post({"entity": "cidr:10.0.0.1/8", "action": "block", "reason": "x"}),
                         400, "entity")
        self.assertError(post({"entity": "user:a", "action": "nuke", "reason": "x"}), 400, "action")
        self.assertError(post({"entity": "user:a", "action": "block", "reason": "x", "ttl": "soon"}),
                         400, "ttl")
        self.assertError(post({"entity": "user:a", "action": "block"}), 400, "reason")
        self.assertError(self.q.request("GET", "/v1/check"), 400, "query.entity")
        self.assertError(self.q.request("GET", "/v1/check?entity=user:a&entity=nocolon"), 400,
                         "query.entity[1]")
        self.assertError(self.q.request("POST", "/v1/check", {"entities": []}), 400, "entities")
        # One surface limit on every path (GET took any length), and the message names the
        # field (POST said only "invalid check").
        self.assertError(self.q.request("GET", "/v1/check?entity=user:a&surface=" + "x" * 65),
                         400, "query.surface")
        s, body, _ = self.q.request("POST", "/v1/check", {"entities": ["user:a"], "surface": "x" * 65})
        self.assertEqual(s, 400, body)
        self.assertEqual(body["error"]["message"],
                         "invalid check: surface: must be at most 64 bytes", body)
        # Only entity repeats: with two surfaces, the last one silently won.
        self.assertError(self.q.request("GET", "/v1/check?entity=user:a&surface=login&surface=charts"),
                         400, "query.surface")
        self.assertError(self.q.request("GET", "/v1/mitigations?limit=0"), 400, "query.limit")
        self.assertError(self.q.request("GET", "/v1/mitigations?state=sleeping"), 400, "query.state")
        # A route reads only the parameters it documents, each once: anything else is a
        # 400 naming it, never a silent "everything" or a guess at which of two wins.
        self.assertError(self.q.request("GET", "/v1/breakers?name=x"), 400, "query.name")
        self.assertError(self.q.request("GET", "/v1/mitigations/m_x?full=1"), 400, "query.full")
        self.assertError(self.q.request("GET", "/v1/changes?after=1&after=2"), 400, "query.after")
        # Integers are decimal digits: a sign or spaces around them were taken too.
        for after in ("+5", "5%20", "%205", "0x10", ""):
            self.assertError(self.q.request("GET", "/v1/changes?after=" + after), 400,
                             "query.after")
        self.assertError(self.q.request("GET", "/v1/mitigations?limit=%2B3"), 400, "query.limit")
        self.assertError(self.q.request("GET", "/v1/rollbacks?limit=1&limit=2"), 400, "query.limit")
        self.assertError(self.q.request("GET", "/v1/reviews?limit=1&limit=2"), 400, "query.limit")
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:a&entity=user:b")[0], 200)
        self.assertError(self.q.request("GET", "/v1/nope"), 404)
        self.assertError(self.q.request("DELETE", "/v1/check"), 405)
        # A 405 says which methods the path takes (RFC 9110).
        self.assertEqual(self.q.request("DELETE", "/v1/check")[2].get("allow"), "GET, HEAD, POST")
        self.assertError(self.q.request("GET", "/v1/snapshot?view=bogus"), 400, "query.view")
        self.assertError(self.q.request("GET", "/v1/snapshot?view="), 400, "query.view")
        # Oversized body: 413 from the server's limit (8 MiB by default).
        # The server answers as soon as it reads Content-Length, before the body, so the
        # client must read the reply instead of insisting on sending 9 MiB.
        reply = send_raw(self.q.port, (
            "POST /v1/mitigations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (self.q.admin_key, 9 << 20)).encode() + b'{"entity":')
        self.assertTrue(reply.startswith(b"HTTP/1.1 413"), reply[:100])
        # None of it wrote anything.
        self.assertEqual(self.q.request("GET", "/readyz", auth=False)[1]["seq"], seq)

    def test_error_bodies_are_utf8_whatever_the_path_decodes_to(self):
        # A percent-encoded path that decodes to bytes that are not UTF-8 was echoed
        # into the error message as is: the JSON body could not be decoded (RFC 8259).
        for path in ("/v1/%ff%22x", "/v1/mitigations/m_%ff%fe", "/v1/lists/%c0%af"):
            c = self.q.connection()
            try:
                c.request("GET", path, headers={"Authorization": "Bearer " + self.q.admin_key})
                r = c.getresponse()
                status, data = r.status, r.read()
            finally:
                c.close()
            self.assertIn(status, (400, 404), data)
            body = json.loads(data.decode("utf-8"))  # strict: raises on a bad byte
            self.assertIn("\ufffd", body["error"]["message"] +
                          "".join(d["message"] + d["field"] for d in body["error"].get(
                              "details", [])), body)

    def test_a_long_poll_ends_when_its_key_is_revoked(self):
        # A revoked key's parked /v1/changes poll was answered with the changes written
        # after the revocation (for up to `wait`, 60 s at most); now 401, as any request.
        status, k, _ = self.q.request("POST", "/v1/keys", {"role": "enforcer", "name": "feed"})
        self.assertEqual(status, 201, k)
        head = self.q.request("GET", "/v1/changes?after=0&limit=10000")[1]["next"]
        with socket.create_connection(("127.0.0.1", self.q.port), timeout=30) as s:
            s.sendall(("GET /v1/changes?after=%d&wait=20 HTTP/1.1\r\nHost: t\r\n"
                       "Authorization: Bearer %s\r\n\r\n" % (head, k["key"])).encode())
            # Parked before the revocation: the server has read the request (nothing
            # left in its socket's receive queue) and has not answered it.
            wait_until_read_by_server(self.q.port, s.getsockname()[1])
            s.setblocking(False)
            with self.assertRaises(BlockingIOError):
                s.recv(1)
            s.setblocking(True)
            self.assertEqual(self.q.request("DELETE", "/v1/keys/" + k["id"])[0], 200)
            self.create("device:after-revoke", action="throttle")
            reply = s.recv(65536)
        self.assertTrue(reply.startswith(b"HTTP/1.1 401"), reply[:200])

    def test_change_feed_long_poll_and_snapshot(self):
        start = self.q.request("GET", "/v1/changes?after=0&limit=10000")[1]["next"]
        result = {}

        def poll():
            result["resp"] = self.q.request("GET", "/v1/changes?after=%d&wait=20" % start)

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.2)  # let the poll park; the assertion below does not depend on it
        _, m, _ = self.create("device:feed1", action="throttle")
        t.join(30)
        status, body, _ = result["resp"]
        self.assertEqual(status, 200)
        self.assertEqual(body["changes"][0]["mitigation"]["id"], m["id"])
        self.assertEqual(body["changes"][0]["op"], "upsert")
        self.assertEqual(body["next"], body["changes"][-1]["seq"])
        # An empty poll with wait=0 answers at once with next == after.
        head = self.q.request("GET", "/v1/changes?after=0&limit=10000")[1]["next"]
        status, body, _ = self.q.request("GET", "/v1/changes?after=%d" % head)
        self.assertEqual((status, body), (200, {"changes": [], "next": head}))
        # A cursor past the ledger's last change is not from this ledger: waiting on it
        # would skip the changes up to it once written. 409 cursor_ahead, for both logs,
        # at once even when asked to wait.
        for path in ("/v1/changes?after=%d&wait=20" % (head + 10**6),
                     "/v1/audit?after=%d" % (head + 1)):
            status, body, _ = self.q.request("GET", path)
            self.assertEqual(status, 409, (path, body))
            self.assertEqual(body["error"]["code"], "cursor_ahead", body)
            self.assertIn("past the ledger's last change (%d)" % head, body["error"]["message"])
        # Snapshot: first line is the seq, then every active mitigation.
        status, text, hdrs = self.q.request("GET", "/v1/snapshot", raw=True)
        self.assertEqual(status, 200)
        lines = text.strip().split("\n")
        head = json.loads(lines[0])
        self.assertIn("seq", head)
        ids = {json.loads(l)["id"] for l in lines[1:]}
        self.assertIn(m["id"], ids)
        self.assertTrue(all(json.loads(l)["state"] == "active" for l in lines[1:]))
        # view=enforcement: the same mitigations, only the fields enforcing takes.
        full = {json.loads(l)["id"]: json.loads(l) for l in lines[1:]}
        status, text, _ = self.q.request("GET", "/v1/snapshot?view=enforcement", raw=True)
        self.assertEqual(status, 200)
        slim = text.strip().split("\n")
        self.assertEqual(json.loads(slim[0]), head)
        fields = ("id", "entity", "action", "state", "expires_at")
        self.assertEqual({json.loads(l)["id"]: json.loads(l) for l in slim[1:]},
                         {i: {f: m[f] for f in fields} for i, m in full.items()})
        status, body, _ = self.q.request("GET", "/v1/snapshot?view=everything")
        self.assertEqual(status, 400)
        self.assertIn("view", json.dumps(body))

    def test_audit_route_chains(self):
        self.create("user:audit1")
        status, body, _ = self.q.request("GET", "/v1/audit?after=0&limit=1000")
        self.assertEqual(status, 200)
        prev = "0" * 64
        for c in body["changes"]:
            self.assertEqual(c["prev_hash"], prev)
            prev = c["hash"]


class PolicyPublishTest(unittest.TestCase):
    SET = """
actions:
  - {name: block, verdict: deny, severity: high, ttl: 7d}
%s
policies: []
"""
    SUSPEND = "  - {name: suspend, verdict: deny, severity: critical, ttl: 30d}"

    def publish(self, yaml):
        return self.q.request("PUT", "/v1/policies", yaml,
                              headers={"Content-Type": "application/yaml"})

    def test_a_set_that_drops_an_action_live_mitigations_use_is_refused(self):
        # Dropping `suspend` while a user is suspended made check answer `allow` for it:
        # the suspension silently lifted.
        self.q = QuellServer().start()
        try:
            self.assertEqual(self.publish(self.SET % self.SUSPEND)[0], 200)
            status, m, _ = self.q.request("POST", "/v1/mitigations", {
                "entity": "user:suspended", "action": "suspend", "ttl": "1h", "reason": "t"})
            self.assertEqual(status, 201, m)
            status, body, _ = self.publish(self.SET % "")
            self.assertEqual(status, 409, body)
            self.assertIn("drops action suspend, which live mitigations use (%s is active)"
                          % m["id"], body["error"]["message"])
            verdict = self.q.request("GET", "/v1/check?entity=user:suspended")[1]["verdict"]
            self.assertEqual(verdict, "deny")
            # A new verdict for it is fine; so is dropping it once nothing live uses it.
            changed = self.SET % self.SUSPEND.replace("verdict: deny", "verdict: allow")
            self.assertEqual(self.publish(changed)[0], 200)
            status, body, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % m["id"],
                                             {"reason": "t"})
            self.assertEqual(status, 200, body)
            self.assertEqual(self.publish(self.SET % "")[0], 200)
        finally:
            self.q.cleanup()


class LifecycleTest(unittest.TestCase):
    """Restart, expiry without requests, graceful shutdown, audit verify."""

    def test_restart_expiry_and_audit(self):
        q = QuellServer()
        try:
            q.start()
            _, keep, _ = q.request("POST", "/v1/mitigations", {"entity": "user:keep", "action": "suspend",
                                                               "ttl": "1h", "reason": "r"})
            _, short, _ = q.request("POST", "/v1/mitigations", {"entity": "user:short", "action": "block",
                                                                "ttl": "1s", "reason": "r"})
            # Expiry happens with no request touching the mitigation.
            deadline = time.time() + 10
            state = None
            while time.time() < deadline:
                state = q.request("GET", "/v1/mitigations/" + short["id"])[1]["state"]
                if state == "expired":
                    break
                time.sleep(0.1)
            self.assertEqual(state, "expired")
            self.assertEqual(q.stop(), 0)  # SIGTERM: graceful, exit 0
            key = q.admin_key
            q.start(dev=False)
            q.admin_key = key
            v = q.request("GET", "/v1/check?entity=user:keep&entity=user:short")[1]
            self.assertEqual([m["id"] for m in v["mitigations"]], [keep["id"]])
            # SIGHUP (a closed terminal or session) drains as SIGTERM does; it killed the
            # server at once (exit 129), requests in flight and all.
            self.assertEqual(q.stop(signal.SIGHUP), 0)
            with open(q.log_path, encoding="utf-8") as f:
                self.assertIn('"signal":%d' % signal.SIGHUP, f.read())
            code, out, _ = run_cli("audit", "verify", "--data", q.data)
            self.assertIn("ok:", out)
        finally:
            q.cleanup()

    def test_last_admin_key_is_kept(self):
        q = QuellServer()
        try:
            q.start()
            dev_id = q.admin_key.split(".")[0]
            status, body, _ = q.request("DELETE", "/v1/keys/" + dev_id)
            self.assertEqual(status, 409, body)
            self.assertIn("last active admin key", body["error"]["message"])
            status, second, _ = q.request("POST", "/v1/keys", {"role": "admin", "name": "ops"})
            self.assertEqual(status, 201, second)
            # With another admin key, either may go; then the other is the last again.
            self.assertEqual(q.request("DELETE", "/v1/keys/" + dev_id)[0], 200)
            status, body, _ = q.request("DELETE", "/v1/keys/" + second["id"], key=second["key"])
            self.assertEqual(status, 409, body)
            status, body, _ = q.request("POST", "/v1/keys", {"role": "detector"},
                                        key=second["key"])
            self.assertEqual(status, 400, body)
            self.assertIn('"sources" in the API', body["error"]["message"])
        finally:
            q.cleanup()

    def test_in_flight_request_finishes_on_sigterm(self):
        q = QuellServer()
        try:
            q.start()
            result = {}

            def poll():
                head = q.request("GET", "/readyz", auth=False)[1]["seq"]
                result["resp"] = q.request("GET", "/v1/changes?after=%d&wait=2" % head)

            t = threading.Thread(target=poll)
            t.start()
            time.sleep(0.3)
            q.proc.send_signal(signal.SIGTERM)
            t.join(30)
            self.assertEqual(result["resp"][0], 200)
            self.assertEqual(q.proc.wait(30), 0)
            q.proc = None
        finally:
            q.cleanup()

    def test_cli_usage_errors(self):
        code, _, err = run_cli("frobnicate", check=False)
        self.assertEqual(code, 2)
        code, _, err = run_cli("keys", "create", "--data", "/tmp/unused", "--role", "wizard",
                               check=False)
        self.assertEqual(code, 2)
        # A command's slip shows that command's usage, not the 25-line overview.
        self.assertIn("usage: quell keys create", err)
        self.assertNotIn("usage: quell <command>", err)
        code, _, err = run_cli("keys", "list", "--dat", "d1", check=False)
        self.assertEqual(code, 2)
        self.assertIn("usage: quell keys create", err)
        code, _, err = run_cli("serve", "--listen", "nope", check=False)
        self.assertEqual(code, 2)
        self.assertIn("usage: quell serve", err)
        code, out, _ = run_cli("--help")
        self.assertIn("serve", out)

    def test_cli_slips_are_refused_before_anything_is_touched(self):
        with tempfile.TemporaryDirectory() as tmp:
            typo = os.path.join(tmp, "typo")
            # A path where --data was meant: bad usage, not the default ./var.
            for args in (["serve", typo], ["migrate", typo], ["keys", "list", typo]):
                code, _, err = run_cli(*args, check=False)
                self.assertEqual(code, 2, (args, err))
                self.assertIn('unexpected argument "%s" (--data %s?)' % (typo, typo), err)
                # The command's own usage, not the overview of every command.
                self.assertIn("usage: quell %s" % args[0], err)
                self.assertNotIn("usage: quell <command>", err)
            # A flag of another command (all used to share one set, silently).
            code, _, err = run_cli("migrate", "--listen", "127.0.0.1:1", "--data", typo,
                                   check=False)
            self.assertEqual(code, 2, err)
            self.assertIn("migrate: unknown flag --listen", err)
            self.assertFalse(os.path.exists(typo))
            # A mistyped --data is not a new, empty ledger "migrated" with exit 0.
            code, _, err = run_cli("migrate", "--data", typo, check=False)
            self.assertEqual(code, 1, err)
            self.assertIn("no ledger in %s" % typo, err)
            self.assertFalse(os.path.exists(typo))
            # Stray arguments, a flag given twice, a flag of another verb, stdin twice:
            # usage errors, each (they ran, or the last value silently won).
            for args, says in ((["version", "extra"], 'unexpected argument "extra"'),
                               (["audit", "verify", "extra"], 'unexpected argument "extra"'),
                               (["audit", "veriphy"], 'unknown subcommand "veriphy"'),
                               (["keys", "create", "--role", "admin", "--role", "viewer"],
                                "--role is given twice"),
                               (["keys", "list", "--role", "admin"], "--role is for keys create"),
                               (["import", "-", "-"], "can be read only once")):
                code, _, err = run_cli(*args, "--data", typo, check=False)
                self.assertEqual(code, 2, (args, err))
                self.assertIn(says, err)
            self.assertFalse(os.path.exists(typo))
            # --data with --postgres or QUELL_POSTGRES names two ledgers (only a
            # configuration's postgres: was refused): with QUELL_POSTGRES exported, `keys
            # create --data ./var` wrote an admin key into that database. Refused before
            # any connection, so the URL need not answer.
            pg = "postgresql://nobody@127.0.0.1:1/none"
            # (serve --postgres keeps its --data: the node's own directory.)
            for args in (["keys", "create", "--role", "admin"], ["keys", "list"],
                         ["audit", "verify"], ["migrate"]):
                code, _, err = run_cli(*args, "--data", typo, check=False,
                                       env=dict(os.environ, QUELL_POSTGRES=pg))
                self.assertEqual(code, 2, (args, err))
                self.assertIn("--data and QUELL_POSTGRES both name a ledger", err)
                code, _, err = run_cli(*args, "--data", typo, "--postgres", pg, check=False)
                self.assertEqual(code, 2, (args, err))
                self.assertIn("--data and --postgres both name a ledger", err)
            self.assertFalse(os.path.exists(typo))
            # ":PORT" passed the start-up check, then failed to resolve after the data
            # directory and a --dev key were written.
            code, out, err = run_cli("serve", "--dev", "--data", typo, "--listen", ":18487",
                                     check=False)
            self.assertEqual(code, 2, err)
            self.assertIn('--listen (listen:) must be HOST:PORT, got ":18487"', err)
            self.assertNotIn("admin key", out)
            self.assertFalse(os.path.exists(typo))
            # Reading commands on a directory without a ledger: an error, no empty ledger
            # created (audit verify used to answer "ok: 0 changes verified").
            for args in (["audit", "verify"], ["keys", "list"], ["keys", "revoke", "k_x"]):
                code, _, err = run_cli(*args, "--data", typo, check=False)
                self.assertEqual(code, 1, (args, err))
                self.assertIn("no ledger in %s" % typo, err)
            # A usage error creates nothing either; a good key creates the ledger and its
            # parent directories.
            run_cli("keys", "create", "--role", "wizard", "--data", typo, check=False)
            self.assertFalse(os.path.exists(typo))
            run_cli("keys", "create", "--role", "admin", "--data", os.path.join(typo, "a", "b"))
            self.assertTrue(os.path.exists(os.path.join(typo, "a", "b", "quell.db")))
            # A directory given as a config file or a policies file: an error, not an abort.
            code, _, err = run_cli("keys", "list", "--config", tmp, "--data", typo, check=False)
            self.assertEqual(code, 2, err)
            self.assertIn("is a directory", err)
            conf = os.path.join(tmp, "policies-dir.yaml")
            with open(conf, "w") as f:
                f.write("policies: %s\nmetrics: {enabled: false}\n" % tmp)
            code, _, err = run_cli("serve", "--config", conf, "--data", os.path.join(tmp, "d"),
                                   "--listen", "127.0.0.1:%d" % free_port(), check=False)
            self.assertEqual(code, 1, err)
            self.assertIn("policies file: %s is a directory" % tmp, err)

    def test_a_long_poll_is_answered_at_shutdown(self):
        # It was cut off after the whole grace (10 s: an empty reply, the server's log
        # saying 200), holding the shutdown that long.
        q = QuellServer()
        try:
            q.start()
            head = q.request("GET", "/readyz", auth=False)[1]["seq"]
            got = {}

            def poll():
                got["reply"] = q.request("GET", "/v1/changes?after=%d&wait=30" % head)

            t = threading.Thread(target=poll)
            t.start()
            time.sleep(0.5)
            self.assertEqual(q.stop(), 0)
            t.join(timeout=30)
            # Answered, with what there was (no timing asserted: cut off, it got no reply).
            self.assertIn("reply", got, "the long-poll got no reply")
            status, body, _ = got["reply"]
            self.assertEqual((status, body["changes"], body["next"]), (200, [], head))
        finally:
            q.stop()
            q.cleanup()

    def test_every_command_has_its_help(self):
        # SPEC: every command has --help (serve, keys, audit and migrate printed the global
        # usage; -h was a file name to import, an entity to check, bad usage to serve).
        for args, says in ((["serve"], "--grpc-listen"), (["keys", "create"], "--role ROLE"),
                           (["keys"], "keys revoke ID"), (["audit", "verify"], "BROKEN at seq"),
                           (["migrate"], "schema migrations"), (["version"], "Prints the version"),
                           (["import"], "usage: quell import"), (["check"], "usage: quell check"),
                           (["policy"], "policy test FILE")):
            for flag in ("--help", "-h"):
                code, out, err = run_cli(*args, flag, check=False)
                self.assertEqual(code, 0, (args, flag, err))
                self.assertIn(says, out, (args, flag))
        # keys list shows each key's name: what tells keys of one role apart.
        with tempfile.TemporaryDirectory() as tmp:
            run_cli("keys", "create", "--role", "viewer", "--name", "checkout service",
                    "--data", tmp)
            out = run_cli("keys", "list", "--data", tmp)[1]
            self.assertIn("NAME", out.splitlines()[0])
            self.assertTrue(out.splitlines()[1].endswith("checkout service"), out)

    def test_an_unreachable_redis_is_said_at_start(self):
        # The server starts (Redis may come later), but says so at once, not at the first
        # event; the serving line names the counters backend.
        port = free_port()  # nothing listens there
        q = QuellServer(extra_args=["--redis", "redis://127.0.0.1:%d" % port])
        try:
            q.start()
            deadline = time.time() + 10
            lines = []
            while time.time() < deadline:
                with open(q.log_path, encoding="utf-8") as f:
                    lines = [json.loads(l) for l in f if l.strip()]
                if any(l.get("msg") == "quell serving" for l in lines):
                    break
                time.sleep(0.05)
            warn = [l for l in lines if l.get("msg", "").startswith("counters: redis does not answer")]
            self.assertEqual(len(warn), 1, lines)
            self.assertEqual(warn[0]["redis"], "redis://127.0.0.1:%d" % port)
            serving = [l for l in lines if l.get("msg") == "quell serving"]
            self.assertEqual(serving[0]["counters"], "redis://127.0.0.1:%d" % port)
        finally:
            q.stop()
            q.cleanup()

    def test_a_start_on_a_busy_port_writes_nothing(self):
        # The --dev key and the first policy set were written before the bind failed: the
        # next start printed no key, and an edited policies file was then ignored.
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            data = os.path.join(tmp, "d")
            code, out, err = run_cli("serve", "--dev", "--data", data, "--listen",
                                     "127.0.0.1:%d" % port, check=False)
            self.assertEqual(code, 1, err)
            self.assertIn("cannot listen on 127.0.0.1:%d" % port, err)
            self.assertNotIn("admin key", out)
            self.assertFalse(os.path.exists(data))
            # Nor on an address this machine does not have, or a name that does not resolve
            # (only "in use" and "not permitted" used to stop the start).
            for listen in ("192.0.2.1:%d" % port, "nohost.invalid:%d" % port):
                code, out, err = run_cli("serve", "--dev", "--data", data, "--listen", listen,
                                         check=False)
                self.assertEqual(code, 1, err)
                self.assertIn("cannot listen on", err)
                self.assertFalse(os.path.exists(data), listen)
            # The gRPC address is checked as early: busy, or the HTTP address itself (gRPC's
            # SO_REUSEPORT shared it, and one of the two never saw a connection).
            free = free_port()
            code, out, err = run_cli("serve", "--dev", "--data", data, "--listen",
                                     "127.0.0.1:%d" % free, "--grpc-listen",
                                     "127.0.0.1:%d" % port, check=False)
            self.assertEqual(code, 1, err)
            self.assertIn("cannot listen on 127.0.0.1:%d" % port, err)
            self.assertNotIn("admin key", out)
            self.assertFalse(os.path.exists(data))
            for grpc_host in ("127.0.0.1", "0.0.0.0", "localhost"):  # overlapping addresses
                code, out, err = run_cli("serve", "--dev", "--data", data, "--listen",
                                         "127.0.0.1:%d" % free, "--grpc-listen",
                                         "%s:%d" % (grpc_host, free), check=False)
                self.assertEqual(code, 2, (grpc_host, err))
                self.assertIn("is the HTTP address", err)
                self.assertFalse(os.path.exists(data))
            # A malformed gRPC address is named as such (the message named --listen).
            code, out, err = run_cli("serve", "--dev", "--data", data, "--listen",
                                     "127.0.0.1:%d" % free, "--grpc-listen", "nonsense",
                                     check=False)
            self.assertEqual(code, 2, err)
            self.assertIn("--grpc-listen (grpc_listen:) must be HOST:PORT", err)
            self.assertFalse(os.path.exists(data))
            # And a policies file that is missing or does not load.
            for policies in (os.path.join(tmp, "missing.yaml"), os.path.join(tmp, "bad.yaml")):
                if policies.endswith("bad.yaml"):
                    with open(policies, "w") as f:
                        f.write("policies: [{id: x}]\n")
                conf = os.path.join(tmp, "conf.yaml")
                with open(conf, "w") as f:
                    f.write("policies: %s\n" % policies)
                code, out, err = run_cli("serve", "--dev", "--config", conf, "--data", data,
                                         "--listen", "127.0.0.1:%d" % free, check=False)
                self.assertEqual(code, 1, err)
                self.assertNotIn("admin key", out)
                self.assertFalse(os.path.exists(data), policies)
            # That check is a first start's: later starts keep the ledger's policy set, so a
            # policies file edited since (here: broken) does not stop a restart.
            good = os.path.join(tmp, "good.yaml")
            with open(good, "w") as f:
                f.write("policies: []\n")
            with open(conf, "w") as f:
                f.write("policies: %s\n" % good)
            os.makedirs(data)
            q = QuellServer(data_dir=data, extra_args=["--config", conf])
            try:
                q.start()
                self.assertEqual(q.stop(), 0)
                with open(good, "w") as f:
                    f.write("policies: [{id: x}]\n")
                q.start(dev=False)
                self.assertEqual(q.request("GET", "/healthz", auth=False)[0], 200)
            finally:
                q.stop()


if __name__ == "__main__":
    unittest.main()
