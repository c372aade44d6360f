"""Integration tests for detections and policies (issue 3) against the real binary,
with the example music-streaming policy set published at start."""
import datetime
import json
import os
import unittest

from harness import QuellServer

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def det(id, entity, type="artificial_streaming", source="bot-model-v3", score=0.97, **kw):
    d = {"id": id, "source": source, "type": type, "entity": entity, "score": score,
         "observed_at": now()}
    d.update(kw)
    return d


class DetectionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.q = QuellServer(extra_args=["--config", os.path.join(EXAMPLES, "quell.yaml")]).start()

    @classmethod
    def tearDownClass(cls):
        cls.q.cleanup()

    def submit(self, body, key=None):
        return self.q.request("POST", "/v1/detections", body, key=key)

    def check(self, entity):
        return self.q.request("GET", "/v1/check?entity=" + entity)[1]

    def test_one_batch_on_a_new_entity_escalates_and_repeats_answer_alike(self):
        # All in one batch, on an entity with no history: what the batch itself writes
        # must be seen by the detections after it (the same mitigation extended, then
        # escalated), and a repeat of an id in the batch gets its first occurrence's
        # decisions.
        batch = [det("nb-1", "user:newbatch"), det("nb-2", "user:newbatch"),
                 det("nb-1", "user:newbatch"), det("nb-3", "user:newbatch")]
        s, r, _ = self.submit({"detections": batch})
        self.assertEqual(s, 200, r)
        res = r["results"]
        self.assertEqual([x["status"] for x in res],
                         ["accepted", "accepted", "duplicate", "accepted"])
        first = res[0]["decisions"]
        self.assertEqual([(d["action"], d["state"]) for d in first],
                         [("exclude_royalties", "active")])
        self.assertEqual(res[1]["decisions"][0]["mitigation_id"], first[0]["mitigation_id"])
        self.assertEqual(res[2]["decisions"], first)
        self.assertEqual(res[3]["decisions"][0]["action"], "suspend")
        self.assertEqual(self.check("user:newbatch")["verdict"], "deny")

    def test_policies_read_the_lists(self):
        # in_list() read every list as empty on the server (only `policy test`, backtests
        # and imports read them): a verified artist got bot-model-high's decision, held
        # only by the protected-list safeguard, and no chargeback card was ever blocked.
        s, r, _ = self.q.request("POST", "/v1/lists/verified_artists/entries",
                                 {"add": ["user:artist-il"]})
        self.assertEqual(s, 200, r)
        s, r, _ = self.submit({"detections": [det("il-1", "user:artist-il"),
                                              det("il-2", "user:fan-il")]})
        self.assertEqual(s, 200, r)
        self.assertEqual(r["results"][0]["decisions"], [], r)  # the model alone: nothing
        self.assertEqual([(d["policy"], d["state"]) for d in r["results"][1]["decisions"]],
                         [("bot-model-high", "active")], r)
        # An event rule on a deny list, through the policy test route and for real.
        s, r, _ = self.q.request("POST", "/v1/lists/chargeback_cards/entries",
                                 {"add": ["card:c-bad"]})
        self.assertEqual(s, 200, r)
        for card, blocked in (("card:c-bad", True), ("card:c-good", False)):
            s, r, _ = self.q.request("POST", "/v1/events", {
                "type": "trial_start", "entity": "user:trial-" + card[-3:],
                "attrs": {"card": card}})
            self.assertEqual(s, 200, r)
            got = [(x["entity"], x["action"]) for d in r["results"][0].get("detections", [])
                   for x in d["decisions"]]
            self.assertEqual(got, [(card, "block")] if blocked else [], r)
        self.assertEqual(self.check("card:c-bad")["verdict"], "deny")

    def test_a_batch_decides_as_the_same_detections_sent_one_by_one(self):
        # bot-known-offender suspends a 0.98+ bot already excluded from royalties
        # (active()). Sent in one request, the second detection used to be evaluated before
        # the first's exclusion existed, and escaped; sent one by one, it was suspended.
        for entity, batched in (("user:kb-1", True), ("user:kb-2", False)):
            dets = [det(entity + "-a", entity, score=0.95), det(entity + "-b", entity, score=0.99)]
            if batched:
                results = self.submit({"detections": dets})[1]["results"]
            else:
                results = [self.submit(d)[1]["results"][0] for d in dets]
            got = sorted((d["policy"], d["action"]) for d in results[1]["decisions"])
            self.assertEqual(got, [("bot-known-offender", "suspend"),
                                   ("bot-model-high", "exclude_royalties")], (entity, results))

    def test_a_decision_names_its_own_policy(self):
        # bot-model-high's hit extends the exclude_royalties that bot-model-medium created:
        # the reply named the mitigation's policy (medium, for a 0.95 score) instead of the
        # policy that decided, and the backtest attributed it so.
        r1 = self.submit(det("own-1", "user:own", score=0.8))[1]["results"][0]["decisions"]
        self.assertEqual([d["policy"] for d in r1], ["bot-model-medium"])
        r2 = self.submit(det("own-2", "user:own", score=0.95))[1]["results"][0]["decisions"]
        self.assertEqual([(d["policy"], d["mitigation_id"]) for d in r2],
                         [("bot-model-high", r1[0]["mitigation_id"])])

    def test_hits_on_a_manual_mitigation_escalate_from_the_first(self):
        # A person excluded the user's royalties by hand; bot-model-high's hits are then
        # recorded on that mitigation. Its third hit has two prior: suspend (escalate:
        # after 2). The first hit was not counted (it sat where a creation's would).
        s, m, _ = self.q.request("POST", "/v1/mitigations", {
            "entity": "user:manual-esc", "action": "exclude_royalties", "ttl": "1h",
            "reason": "reported by the label"})
        self.assertEqual(s, 201, m)
        actions = []
        for i in range(3):
            d = self.submit(det("mesc-%d" % i, "user:manual-esc"))[1]["results"][0]["decisions"]
            actions.append(d[0]["action"])
        self.assertEqual(actions, ["exclude_royalties", "exclude_royalties", "suspend"])

    def test_single_duplicate_and_escalation(self):
        s, r, _ = self.submit(det("esc-1", "user:esc"))
        self.assertEqual(s, 200, r)
        res = r["results"][0]
        self.assertEqual(res["status"], "accepted")
        self.assertEqual([(d["action"], d["state"], d["policy"]) for d in res["decisions"]],
                         [("exclude_royalties", "active", "bot-model-high")])
        # A replay returns the original decisions and changes nothing.
        seq = self.q.request("GET", "/readyz", auth=False)[1]["seq"]
        s, r2, _ = self.submit(det("esc-1", "user:esc"))
        self.assertEqual(r2["results"][0]["status"], "duplicate")
        self.assertEqual(r2["results"][0]["decisions"], res["decisions"])
        self.assertEqual(self.q.request("GET", "/readyz", auth=False)[1]["seq"], seq)
        # The second hit is recorded on the same mitigation (no stacking); the third
        # earns suspend (escalate: after 2).
        r = self.submit(det("esc-2", "user:esc"))[1]["results"][0]
        self.assertEqual(r["decisions"][0]["mitigation_id"], res["decisions"][0]["mitigation_id"])
        r = self.submit(det("esc-3", "user:esc"))[1]["results"][0]
        self.assertEqual(r["decisions"][0]["action"], "suspend")
        self.assertIn("escalated", r["decisions"][0]["reason"])
        self.assertEqual(self.check("user:esc")["verdict"], "deny")
        # Every decision records the policy and the set version.
        page = self.q.request("GET", "/v1/mitigations?entity=user:esc")[1]["mitigations"]
        # Each action lasts its own time: exclude_royalties the policy's 90d, the escalated
        # suspend its catalog default, 30d (it used to take the policy's 90d).
        days = {m["action"]: (datetime.datetime.fromisoformat(m["expires_at"].replace("Z", "+00:00"))
                              - datetime.datetime.fromisoformat(m["created_at"].replace("Z", "+00:00"))).days
                for m in page}
        self.assertEqual(days, {"exclude_royalties": 90, "suspend": 30}, page)
        self.assertTrue(all(m["policy"] == "bot-model-high" and m["policy_version"] >= 1 for m in page))
        self.assertTrue(all(m["source"] == "bot-model-v3" for m in page))
        # On-call sees what decided what, with bounded labels (no entity ids).
        metrics = self.q.request("GET", "/metrics", auth=False)[1]
        self.assertIn('quell_decisions_total{policy="bot-model-high",action="suspend",state="active"}',
                      metrics)
        self.assertRegex(metrics, r'quell_detections_total\{origin="api",status="duplicate"\} [1-9]')
        self.assertNotIn("user:esc", metrics)

    def test_batch_with_bad_items(self):
        body = {"detections": [
            det("b-1", "user:batch1"),
            {"id": "b-2"},
            det("b-3", "user:batch3", score=1.5),
            det("b-4", "User:bad"),
            det("b-5", "user:batch5", observed_at="2099-01-01T00:00:00Z"),
            det("b-6", "user:batch6", colour="red"),
            det("b-7", "user:batch7", type="Not A Type"),
            det("b-8", "user:batch8", type="artifical_streaming"),
            det("b-9", "user:batch9", source="rule:geo"),  # the real-time rules' own
        ]}
        s, r, _ = self.submit(body)
        self.assertEqual(s, 200)
        res = r["results"]
        self.assertEqual(len(res), 9)
        self.assertEqual([x["index"] for x in res], list(range(9)))
        self.assertEqual(res[0]["status"], "accepted")
        fields = {i: [d["field"] for d in res[i]["error"]["details"]] for i in range(1, 9)}
        self.assertIn("detections[1].source", fields[1])
        self.assertIn("detections[2].score", fields[2])
        self.assertIn("detections[3].entity", fields[3])
        self.assertIn("detections[4].observed_at", fields[4])
        self.assertIn("detections[5].colour", fields[5])
        self.assertIn("detections[6].type", fields[6])
        self.assertIn("detections[7].type", fields[7])  # unknown to the active set
        self.assertIn("unknown detection type", res[7]["error"]["message"])
        self.assertIn("detections[8].source", fields[8])
        self.assertTrue(all(res[i]["status"] == "rejected" for i in range(1, 9)))
        # An id is 1-256 bytes (SPEC): 256 is accepted (129-256 were refused, the message
        # saying 256), 257 is not.
        s, r, _ = self.submit({"detections": [det("i" * 256, "user:long-id"),
                                              det("j" * 257, "user:long-id2")]})
        self.assertEqual([x["status"] for x in r["results"]], ["accepted", "rejected"], r)
        # A single bad detection: 400, still in the results shape.
        s, r, _ = self.submit(det("bad-1", "user:x", score=-1))
        self.assertEqual(s, 400)
        self.assertEqual(r["results"][0]["status"], "rejected")

    def test_batch_limit_and_body_shape(self):
        s, e, _ = self.submit({"detections": [det("l-%d" % i, "user:l") for i in range(10001)]})
        self.assertEqual(s, 413, e)
        self.assertEqual(self.submit({"detections": []})[0], 400)
        self.assertEqual(self.submit([det("arr", "user:arr")])[0], 400)
        self.assertEqual(self.submit({"detections": [], "extra": 1})[0], 400)

    def test_ndjson_body_and_batch_parameter(self):
        # What `quell import --server` sends: one detection per line, the batch id once.
        lines = [json.dumps(det("nd-1", "user:nd1")),
                 "",                                           # blank: not an item
                 "{not json",                                  # item 1: rejected, parse error
                 json.dumps(det("nd-3", "user:nd3", score=2)),  # item 2: rejected, field error
                 json.dumps(det("nd-4", "user:nd4", batch="b_own")) + "\r"]
        ndjson = {"Content-Type": "application/x-ndjson; charset=utf-8"}
        s, r, _ = self.q.request("POST", "/v1/detections?batch=b_ndjson", "\n".join(lines),
                                 headers=ndjson)
        self.assertEqual(s, 200, r)
        res = r["results"]
        self.assertEqual([(x["index"], x["status"]) for x in res],
                         [(0, "accepted"), (1, "rejected"), (2, "rejected"), (3, "accepted")])
        self.assertIn("malformed JSON", res[1]["error"]["message"])
        self.assertEqual([d["field"] for d in res[2]["error"]["details"]], ["score"])
        # The batch parameter is recorded on every decision, over an item's own.
        for entity in ("user:nd1", "user:nd4"):
            page = self.q.request("GET", "/v1/mitigations?entity=" + entity)[1]["mitigations"]
            self.assertEqual([m["batch"] for m in page], ["b_ndjson"], entity)
        # A raw NUL is not the end of a line's JSON: the line is rejected, the next one kept
        # (what followed the NUL used to be dropped unseen).
        nul = json.dumps(det("nd-5", "user:nd5")) + "\0" + json.dumps(det("nd-6", "user:nd6"))
        s, r, _ = self.q.request("POST", "/v1/detections", nul + "\n" + json.dumps(
            det("nd-7", "user:nd7")), headers=ndjson)
        self.assertEqual([x["status"] for x in r["results"]], ["rejected", "accepted"], r)
        self.assertIn("NUL byte", r["results"][0]["error"]["message"])
        # The same lines again are duplicates.
        s, r, _ = self.q.request("POST", "/v1/detections", lines[0], headers=ndjson)
        self.assertEqual((s, r["results"][0]["status"]), (200, "duplicate"))
        # Refused whole: no lines, an empty or control-character batch, unknown parameters.
        self.assertEqual(self.q.request("POST", "/v1/detections", "\n \n", headers=ndjson)[0], 400)
        for target in ("/v1/detections?batch=", "/v1/detections?batch=a%01b",
                       "/v1/detections?batch=%FF", "/v1/detections?batch=a&batch=b",
                       "/v1/detections?colour=red"):
            s, e, _ = self.q.request("POST", target, lines[0], headers=ndjson)
            self.assertEqual(s, 400, target)
            self.assertTrue(e["error"]["details"][0]["field"].startswith("query."), e)
        s, e, _ = self.q.request("POST", "/v1/detections",
                                 "\n".join(json.dumps(det("ndl-%d" % i, "user:l")) for i in range(10001)),
                                 headers=ndjson)
        self.assertEqual(s, 413, e)

    def test_detector_key_bound_to_its_sources(self):
        key = self.q.create_key("detector", "bot-model-v3")
        s, r, _ = self.submit(det("k-1", "user:k1"), key=key)
        self.assertEqual(s, 200, r)
        s, e, _ = self.submit(det("k-2", "user:k2", source="someone-else"), key=key)
        self.assertEqual(s, 403)
        self.assertEqual(e["error"]["details"][0]["field"], "source")
        s, e, _ = self.submit({"detections": [det("k-3", "user:k3"),
                                              det("k-4", "user:k4", source="other")]}, key=key)
        self.assertEqual(s, 403)
        self.assertEqual(self.check("user:k3")["verdict"], "allow")  # nothing half-applied
        # A foreign item that is also invalid (a score out of range) is still foreign: it
        # was rejected alone, and the key's own items before it applied.
        bad = det("k-7", "user:k7", source="other")
        bad["score"] = 7
        s, e, _ = self.submit({"detections": [det("k-6", "user:k6"), bad]}, key=key)
        self.assertEqual(s, 403, e)
        self.assertEqual(e["error"]["details"][0]["field"], "detections[1].source")
        self.assertEqual(self.check("user:k6")["verdict"], "allow")
        # So is one whose "source" is given twice, its own first.
        twice = '{"detections": [%s, %s]}' % (
            json.dumps(det("k-8", "user:k8")),
            json.dumps(det("k-9", "user:k9"))[:-1] + ', "source": "other"}')
        s, e, _ = self.submit(twice, key=key)
        self.assertEqual(s, 403, e)
        self.assertEqual(self.check("user:k8")["verdict"], "allow")
        enforcer = self.q.create_key("enforcer")
        self.assertEqual(self.submit(det("k-5", "user:k5"), key=enforcer)[0], 403)

    def test_shadow_policy_is_recorded_never_enforced(self):
        r = self.submit(det("sh-1", "user:shadow", source="bot-model-v4", score=0.9))[1]["results"][0]
        states = {(d["policy"], d["state"]) for d in r["decisions"]}
        self.assertIn(("bot-model-v4-trial", "shadow"), states)
        v = self.check("user:shadow")
        self.assertEqual([m for m in v["mitigations"] if m["action"] == "exclude_royalties"
                          and m["id"] in [d["mitigation_id"] for d in r["decisions"]
                                          if d["state"] == "shadow"]], [])
        page = self.q.request("GET", "/v1/mitigations?entity=user:shadow&state=shadow")[1]
        self.assertEqual(len(page["mitigations"]), 1)
        # Shadow decisions escalate as enforcing ones would (escalate: after 2 -> suspend);
        # they used to stay exclude_royalties forever, their own hits never counted.
        actions = []
        for i in (2, 3):
            r = self.submit(det("sh-%d" % i, "user:shadow", source="bot-model-v4",
                                score=0.9))[1]["results"][0]
            actions += [(d["action"], d["state"]) for d in r["decisions"]
                        if d["policy"] == "bot-model-v4-trial"]
        self.assertEqual(actions, [("exclude_royalties", "shadow"), ("suspend", "shadow")])
        self.assertEqual(self.check("user:shadow")["verdict"], "allow")

    def test_delay_schedules_and_related_propagates(self):
        r = self.submit(det("pay-1", "payment:card-9", type="payment_fraud", source="payments-model",
                            score=0.99))[1]["results"][0]
        d = [x for x in r["decisions"] if x["policy"] == "payment-fraud-block"]
        self.assertEqual(d[0]["state"], "scheduled")
        self.assertEqual(self.check("payment:card-9")["verdict"], "allow")  # not yet
        # Held for review (a protected card), it keeps its delay: approved before its start,
        # it is scheduled for it (approval used to make it active at once, showing the
        # fraudster which transaction gave them away).
        s, _, _ = self.q.request("POST", "/v1/lists/employees/entries", {"add": ["payment:card-held"]})
        self.assertEqual(s, 200)
        r = self.submit(det("pay-2", "payment:card-held", type="payment_fraud",
                            source="payments-model", score=0.99))[1]["results"][0]
        held = [x for x in r["decisions"] if x["policy"] == "payment-fraud-block"][0]
        self.assertEqual(held["state"], "pending_approval")
        s, ok, _ = self.q.request("POST", "/v1/reviews/%s/decision" % held["mitigation_id"],
                                  {"approve": True}, key=self.q.create_key("reviewer"))
        self.assertEqual(s, 200, ok)
        self.assertEqual(ok["mitigation"]["state"], "scheduled", ok)
        self.assertGreater(ok["mitigation"]["starts_at"], now())
        self.assertEqual(self.check("payment:card-held")["verdict"], "allow")
        r = self.submit(det("farm-1", "user:farm-main", type="stream_farm", source="farm-model",
                            related=["device:f1", "device:f2", "ip:198.51.100.7", "user:other"]))[1]
        targets = {x["entity"] for x in r["results"][0]["decisions"] if x["policy"] == "stream-farm-network"}
        self.assertEqual(targets, {"user:farm-main", "device:f1", "device:f2", "ip:198.51.100.7"})

    def test_policy_publish_validation_and_dry_run(self):
        status, yaml, hdrs = self.q.request("GET", "/v1/policies", raw=True)
        self.assertEqual(status, 200)
        version = int(hdrs["x-quell-policy-version"])
        bad = yaml.replace("detection.score >= 0.9", "detection.scor >= 0.9", 1).replace(
            "mode: enforce", "mode: enforced", 1)
        s, e, _ = self.q.request("PUT", "/v1/policies", bad, headers={"Content-Type": "application/yaml"})
        self.assertEqual(s, 400, e)
        messages = " ".join(d["message"] for d in e["error"]["details"])
        self.assertIn("did you mean detection.score", messages)
        self.assertGreaterEqual(len(e["error"]["details"]), 2)  # every error, not the first
        self.assertTrue(all(":" in d["field"] for d in e["error"]["details"]))  # line:column
        self.assertEqual(self.q.request("GET", "/v1/policies", raw=True)[2]["x-quell-policy-version"],
                         str(version))  # untouched
        # Dry run against a candidate that lowers the threshold: no side effects.
        seq = self.q.request("GET", "/readyz", auth=False)[1]["seq"]
        candidate = yaml.replace('detection.score >= 0.9', 'detection.score >= 0.5', 1)
        s, t, _ = self.q.request("POST", "/v1/policies/test",
                                 {"policy_set": candidate, "detections": [det("t-1", "user:t1", score=0.6)]})
        self.assertEqual(s, 200, t)
        self.assertEqual([d["policy"] for d in t["results"][0]["decisions"]], ["bot-model-high"])
        # A protected entity's decision would wait for review, and says so (it read
        # "active"). The example set protects employees: a manual report on one.
        s, _, _ = self.q.request("POST", "/v1/lists/employees/entries", {"add": ["user:staff-t"]})
        self.assertEqual(s, 200)
        s, t2, _ = self.q.request("POST", "/v1/policies/test", {"detections": [
            det("t-2", "user:staff-t", type="harassment", source="manual", score=0.5)]})
        self.assertEqual(s, 200, t2)
        got = [(d["policy"], d["state"]) for d in t2["results"][0]["decisions"]]
        self.assertEqual(got, [("manual-report", "pending_approval")], t2)
        self.assertIn("protected", t2["results"][0]["decisions"][0]["held"])
        self.assertEqual(self.q.request("GET", "/readyz", auth=False)[1]["seq"], seq + 1)  # the list
        # A type the set does not declare is refused, as a real submission is (it used to
        # be decided by the catch-all policy).
        s, t3, _ = self.q.request("POST", "/v1/policies/test", {"detections": [
            det("t-3", "user:t3", type="typo_type", source="manual", score=0.5)]})
        self.assertEqual(s, 400, t3)
        self.assertEqual(t3["error"]["details"][0]["field"], "detections[0].type")
        self.assertIn("unknown detection type", t3["error"]["details"][0]["message"])
        # Publish it: a new version, used by the next decision.
        s, p, _ = self.q.request("PUT", "/v1/policies", candidate)
        self.assertEqual(s, 200, p)
        self.assertEqual(p["version"], version + 1)
        r = self.submit(det("pub-1", "user:pub", score=0.6))[1]["results"][0]
        self.assertEqual(r["decisions"][0]["policy"], "bot-model-high")
        m = self.q.request("GET", "/v1/mitigations/" + r["decisions"][0]["mitigation_id"])[1]
        self.assertEqual(m["policy_version"], version + 1)
        # Reviewers may read and test but not publish.
        reviewer = self.q.create_key("reviewer")
        self.assertEqual(self.q.request("PUT", "/v1/policies", candidate, key=reviewer)[0], 403)


class DetectionRestartTest(unittest.TestCase):
    def test_duplicate_after_restart(self):
        q = QuellServer(extra_args=["--config", os.path.join(EXAMPLES, "quell.yaml")])
        try:
            q.start()
            first = q.request("POST", "/v1/detections", det("r-1", "user:restart"))[1]["results"][0]
            self.assertEqual(q.stop(), 0)
            key = q.admin_key
            q.start(dev=False)
            q.admin_key = key
            again = q.request("POST", "/v1/detections", det("r-1", "user:restart"))[1]["results"][0]
            self.assertEqual(again["status"], "duplicate")
            self.assertEqual(again["decisions"], first["decisions"])
        finally:
            q.cleanup()



class ListNetworksTest(unittest.TestCase):
    """SPEC: a cidr: id matches every ip: inside it. A policy's in_list() matched a list's
    entries exactly on the server: a list of ranges never matched an address."""
    SET = """
actions:
  - {name: flag, verdict: allow, severity: low, ttl: 1h}
  - {name: challenge, verdict: challenge, severity: low, ttl: 1h}
lists:
  - {name: vpn, kind: watch}
policies:
  # Read live, on the request's thread.
  - {id: via-vpn, on: detection, when: 'in_list("vpn", entity)', action: flag}
  # Reads the ledger (active()): decided again inside the ledger transaction, where
  # in_list() asks the store.
  - id: via-vpn-high
    on: detection
    when: 'detection.score >= 0.9 && !active(entity, "challenge") && in_list("vpn", entity)'
    action: challenge
"""

    @classmethod
    def setUpClass(cls):
        cls.q = QuellServer().start()
        s, r, _ = cls.q.request("PUT", "/v1/policies", cls.SET,
                                headers={"Content-Type": "application/yaml"})
        assert s == 200, r
        s, r, _ = cls.q.request("PUT", "/v1/lists/vpn",
                                {"entries": ["cidr:203.0.113.0/24", "cidr:2001:db8::/32"]})
        assert s == 200, r

    @classmethod
    def tearDownClass(cls):
        cls.q.cleanup()

    def decided(self, id, entity, score):
        s, r, _ = self.q.request("POST", "/v1/detections",
                                 det(id, entity, type="proxy", source="net-model", score=score))
        self.assertEqual(s, 200, r)
        return sorted((d["policy"], d["entity"], d["state"]) for d in r["results"][0]["decisions"])

    def test_an_address_inside_a_listed_network_is_on_the_list(self):
        self.assertEqual(self.decided("n-1", "ip:203.0.113.9", 0.5),
                         [("via-vpn", "ip:203.0.113.9", "active")])
        self.assertEqual(self.decided("n-2", "ip:2001:DB8::7", 0.5),
                         [("via-vpn", "ip:2001:db8::7", "active")])
        self.assertEqual(self.decided("n-3", "ip:203.0.113.77", 0.95),
                         [("via-vpn", "ip:203.0.113.77", "active"),
                          ("via-vpn-high", "ip:203.0.113.77", "active")])
        self.assertEqual(self.check_verdict("ip:203.0.113.77"), "challenge")
        # A network inside a listed one is on the list; a wider one is not.
        self.assertEqual(self.decided("n-4", "cidr:203.0.113.128/25", 0.95),
                         [("via-vpn", "cidr:203.0.113.128/25", "active"),
                          ("via-vpn-high", "cidr:203.0.113.128/25", "active")])
        self.assertEqual(self.decided("n-5", "cidr:203.0.0.0/16", 0.95), [])

    def test_an_address_outside_every_listed_network_gets_nothing(self):
        self.assertEqual(self.decided("o-1", "ip:203.0.114.9", 0.5), [])
        self.assertEqual(self.decided("o-2", "ip:203.0.114.10", 0.95), [])
        self.assertEqual(self.decided("o-3", "ip:2001:db9::1", 0.95), [])
        self.assertEqual(self.check_verdict("ip:203.0.114.10"), "allow")

    def check_verdict(self, entity):
        s, r, _ = self.q.request("GET", "/v1/check?entity=" + entity)
        self.assertEqual(s, 200, r)
        return r["verdict"]


if __name__ == "__main__":
    unittest.main()
