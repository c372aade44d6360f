"""Integration tests for the safeguards and human workflows (issue 5) against the real
binary: protected entities, breakers, reviews (two-reviewer rule, no self-approval),
appeals, rollback, immunity, pending expiry and explanations."""
import datetime
import json
import os
import sys
import tempfile
import threading
import time
import unittest

from harness import QuellServer, run_cli

POLICIES = """
actions:
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d}
  - {name: block, verdict: deny, severity: high, ttl: 7d}
  - {name: suspend, verdict: deny, severity: critical, ttl: 30d}
lists:
  - {name: vips, protected: true}
breakers:
  - {name: runaway, source: runaway-model, limit: %(limit)d, window: 10m}
policies:
  - id: bot
    on: detection
    when: detection.type == "bot"
    action: block
    related: true
  - id: takeover
    on: detection
    when: detection.type == "takeover"
    action: suspend
  - id: scraper
    on: detection
    when: detection.type == "scraper"
    action: block
  - id: slow
    on: detection
    when: detection.type == "slow"
    action: block
    delay: 5s
  - id: repeat
    on: detection
    when: detection.type == "repeat"
    action: block
    escalate: [{after: 1, action: suspend}]
"""


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def det(id, entity, type="bot", source="model-a", **kw):
    d = {"id": id, "source": source, "type": type, "entity": entity, "score": 0.99,
         "observed_at": now()}
    d.update(kw)
    return d


class Base(unittest.TestCase):
    LIMIT = 2000
    ENV = {}

    @classmethod
    def server_args(cls):
        return []

    @classmethod
    def setUpClass(cls):
        cls.q = QuellServer(env=cls.ENV, extra_args=cls.server_args()).start()
        s, body, _ = cls.q.request("PUT", "/v1/policies", POLICIES % {"limit": cls.LIMIT},
                                   headers={"Content-Type": "application/yaml"})
        assert s == 200, body
        cls.r1 = cls.q.create_key("reviewer")
        cls.r2 = cls.q.create_key("reviewer")

    @classmethod
    def tearDownClass(cls):
        cls.q.cleanup()

    def submit(self, *dets, key=None):
        s, r, _ = self.q.request("POST", "/v1/detections", {"detections": list(dets)}, key=key)
        self.assertEqual(s, 200, r)
        return r["results"]

    def protect(self, *entities):
        s, r, _ = self.q.request("POST", "/v1/lists/vips/entries", {"add": list(entities)})
        self.assertEqual(s, 200, r)

    def mitigations(self, **query):
        out, cursor = [], ""
        while True:
            qs = "&".join("%s=%s" % kv for kv in query.items())
            s, page, _ = self.q.request("GET", "/v1/mitigations?limit=1000&%s&cursor=%s" % (qs, cursor))
            self.assertEqual(s, 200, page)
            out += page["mitigations"]
            cursor = page["next_cursor"]
            if not cursor:
                return out

    def revoke(self, mitigation_id, reason, key=None):
        s, r, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % mitigation_id,
                                 {"reason": reason}, key=key)
        self.assertEqual(s, 200, r)
        return r

    def review(self, id, approve, key, note="looked at it"):
        return self.q.request("POST", "/v1/reviews/%s/decision" % id, {"approve": approve, "note": note},
                              key=key)


class SafeguardsTest(Base):
    def test_protected_direct_cidr_and_related_are_held(self):
        self.protect("user:vip-a", "ip:10.1.1.7")
        res = self.submit(det("p-1", "user:vip-a", related=["device:vip-a-phone"]),
                          det("p-2", "cidr:10.1.1.0/24"),
                          det("p-3", "user:not-vip"))
        states = [[(d["entity"], d["state"]) for d in r["decisions"]] for r in res]
        self.assertEqual(states[0], [("user:vip-a", "pending_approval"),
                                     ("device:vip-a-phone", "pending_approval")])
        self.assertIn("protected", res[0]["decisions"][0]["reason"])
        self.assertIn("propagated from a protected entity", res[0]["decisions"][1]["reason"])
        self.assertEqual(states[1], [("cidr:10.1.1.0/24", "pending_approval")])
        self.assertIn("covers ip:10.1.1.7", res[1]["decisions"][0]["reason"])
        self.assertEqual(states[2], [("user:not-vip", "active")])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=ip:10.1.1.7")[1]["verdict"], "allow")
        # The list routes show it; the metric counted it.
        s, l, _ = self.q.request("GET", "/v1/lists/vips")
        self.assertEqual(s, 200)
        self.assertTrue(l["protected"])
        self.assertIn("ip:10.1.1.7", l["entries"])
        # The policy set protects it: unprotecting it here is refused, not a 200 that
        # changes nothing.
        s, body, _ = self.q.request("PUT", "/v1/lists/vips", {"protected": False})
        self.assertEqual(s, 409, body)
        self.assertIn("protected by the active policy set", body["error"]["message"])
        metrics = self.q.request("GET", "/metrics", auth=False, raw=True)[1]
        held = [ln for ln in metrics.splitlines() if ln.startswith("quell_safeguard_held_protected_total")]
        self.assertTrue(held and float(held[0].split()[-1]) >= 3, held)

    def test_two_reviewers_for_critical(self):
        self.protect("user:vip-crit")
        d = self.submit(det("c-1", "user:vip-crit", type="takeover"))[0]["decisions"][0]
        self.assertEqual((d["action"], d["state"]), ("suspend", "pending_approval"))
        s, q, _ = self.q.request("GET", "/v1/reviews?state=open")
        self.assertEqual(s, 200)
        item = [r for r in q["reviews"] if r["id"] == d["mitigation_id"]][0]
        self.assertEqual(item["approvals_needed"], 2)
        self.assertEqual(item["evidence"]["policy"], "takeover")
        self.assertEqual(item["evidence"]["detections"][0]["id"], "c-1")
        s, r, _ = self.review(d["mitigation_id"], True, self.r1)
        self.assertEqual(s, 200, r)
        self.assertEqual((r["state"], r["approvals"]), ("open", 1))
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:vip-crit")[1]["verdict"], "allow")
        # A new hit on it keeps the first approval (it was dropped silently, and the first
        # reviewer's second approval then counted as a first).
        again = self.submit(det("c-2", "user:vip-crit", type="takeover"))[0]["decisions"][0]
        self.assertEqual(again["mitigation_id"], d["mitigation_id"])
        m = self.q.request("GET", "/v1/mitigations/" + d["mitigation_id"])[1]
        self.assertEqual(m["approvals"], [self.r1.split(".")[0]], m)  # data, not text
        self.assertIn("extended: policy takeover (v1) matched detection c-2", m["state_reason"])
        # The same reviewer twice is not two reviewers.
        s, r, _ = self.review(d["mitigation_id"], True, self.r1)
        self.assertEqual(s, 409, r)
        s, r, _ = self.review(d["mitigation_id"], True, self.r2)
        self.assertEqual(s, 200, r)
        self.assertEqual(r["mitigation"]["state"], "active")
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:vip-crit")[1]["verdict"], "deny")
        # Closed: a further decision is refused.
        self.assertEqual(self.review(d["mitigation_id"], False, self.r2)[0], 409)

    def test_self_approval_refused(self):
        # A manual action over a /8 (16M addresses) needs someone else's approval.
        s, m, _ = self.q.request("POST", "/v1/mitigations",
                                 {"entity": "cidr:11.0.0.0/8", "action": "block", "reason": "abuse"},
                                 key=self.r1)
        self.assertEqual(s, 201, m)
        self.assertEqual(m["state"], "pending_approval")
        s, r, _ = self.review(m["id"], True, self.r1)
        self.assertEqual(s, 403, r)
        self.assertEqual(self.q.request("GET", "/v1/check?entity=ip:11.2.3.4")[1]["verdict"], "allow")
        s, r, _ = self.review(m["id"], True, self.r2)
        self.assertEqual(s, 200, r)
        self.assertEqual(self.q.request("GET", "/v1/check?entity=ip:11.2.3.4")[1]["verdict"], "deny")
        # A single address is not a bulk action.
        s, m, _ = self.q.request("POST", "/v1/mitigations",
                                 {"entity": "ip:12.0.0.1", "action": "block", "reason": "abuse"}, key=self.r1)
        self.assertEqual(m["state"], "active")

    def test_a_request_a_pending_approval_absorbed_is_its_requesters_too(self):
        # r1 asks for an hour over a /8; r2 asks for the same block for a year, which the
        # pending approval takes in (and lengthens). Neither may approve it: a third must.
        body = {"entity": "cidr:13.0.0.0/8", "action": "block", "reason": "abuse"}
        s, m, _ = self.q.request("POST", "/v1/mitigations", dict(body, ttl="1h"), key=self.r1)
        self.assertEqual((s, m["state"]), (201, "pending_approval"), m)
        s, m2, _ = self.q.request("POST", "/v1/mitigations", dict(body, ttl="365d"), key=self.r2)
        self.assertEqual((s, m2["id"], m2["state"]), (200, m["id"], "pending_approval"), m2)
        for key in (self.r1, self.r2):
            s, r, _ = self.review(m["id"], True, key)
            self.assertEqual(s, 403, r)
            self.assertIn("their own request", r["error"]["message"])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=ip:13.2.3.4")[1]["verdict"], "allow")
        s, r, _ = self.review(m["id"], True, self.q.create_key("reviewer"))
        self.assertEqual(s, 200, r)
        self.assertEqual(self.q.request("GET", "/v1/check?entity=ip:13.2.3.4")[1]["verdict"], "deny")

    def test_rejection_gives_immunity(self):
        self.protect("user:vip-rej")
        d = self.submit(det("rj-1", "user:vip-rej"))[0]["decisions"][0]
        s, r, _ = self.review(d["mitigation_id"], False, self.r1, note="false positive")
        self.assertEqual(s, 200, r)
        self.assertEqual(r["mitigation"]["state"], "rejected")
        # Off the protected list, a new automatic decision still goes to review: a person said no.
        self.q.request("POST", "/v1/lists/vips/entries", {"remove": ["user:vip-rej"]})
        d2 = self.submit(det("rj-2", "user:vip-rej"))[0]["decisions"][0]
        self.assertEqual(d2["state"], "pending_approval")
        self.assertIn("immunity", d2["reason"])

    def test_revoking_a_mitigation_that_absorbed_an_approved_one_gives_its_policy_immunity(self):
        # bot blocks the entity; a scraper hit on it, held (protected) then approved, is
        # absorbed by that block. A person revokes the block: neither policy re-blocks.
        m = self.submit(det("mg-1", "user:merged"))[0]["decisions"][0]
        self.protect("user:merged")
        held = self.submit(det("mg-2", "user:merged", type="scraper"))[0]["decisions"][0]
        self.assertEqual(held["state"], "pending_approval")
        s, r, _ = self.review(held["mitigation_id"], True, self.r1)
        self.assertEqual(s, 200, r)
        got = self.q.request("GET", "/v1/mitigations/" + m["mitigation_id"])[1]
        self.assertEqual(got["detections"], ["mg-1", "mg-2"])
        self.assertEqual(got["detection_policies"], ["bot", "merged:scraper"])
        self.q.request("POST", "/v1/lists/vips/entries", {"remove": ["user:merged"]})
        self.revoke(m["mitigation_id"], "false positive", self.r1)
        for id, type in (("mg-3", "scraper"), ("mg-4", "bot")):
            d = self.submit(det(id, "user:merged", type=type))[0]["decisions"][0]
            self.assertEqual(d["state"], "pending_approval", (type, d))
            self.assertIn("immunity", d["reason"])

    def test_immunity_covers_networks(self):
        # A person clears one address from bot's block: bot's block of its /24 would block it
        # again (it used to be enforced at once: immunity was per exact entity).
        d = self.submit(det("im-1", "ip:198.51.100.7"))[0]["decisions"][0]
        self.revoke(d["mitigation_id"], "a university proxy", self.r1)
        wide = self.submit(det("im-2", "cidr:198.51.100.0/24"))[0]["decisions"][0]
        self.assertEqual(wide["state"], "pending_approval", wide)
        self.assertIn("on ip:198.51.100.7, which cidr:198.51.100.0/24 covers", wide["reason"])
        same = self.submit(det("im-1b", "ip:198.51.100.7"))[0]["decisions"][0]
        self.assertEqual(same["state"], "pending_approval", same)
        self.assertIn("/ block on this entity", same["reason"])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=ip:198.51.100.7")[1]["verdict"],
                         "allow")
        # A cleared network holds the addresses inside it; other networks and other
        # policies are not held.
        d = self.submit(det("im-3", "cidr:203.0.113.0/28"))[0]["decisions"][0]
        self.revoke(d["mitigation_id"], "carrier NAT", self.r1)
        inside = self.submit(det("im-4", "ip:203.0.113.9"))[0]["decisions"][0]
        self.assertEqual(inside["state"], "pending_approval", inside)
        self.assertIn("which ip:203.0.113.9 is inside", inside["reason"])
        for id, entity, type in (("im-5", "ip:203.0.113.99", "bot"),
                                 ("im-6", "cidr:198.51.101.0/24", "bot"),
                                 ("im-7", "cidr:198.51.100.0/25", "scraper")):
            d = self.submit(det(id, entity, type=type))[0]
            self.assertEqual(d["decisions"][0]["state"], "active", (entity, d))
        # After a restart too (immunity is read back from the ledger).
        self.q.stop()
        self.q.start()
        again = self.submit(det("im-9", "cidr:198.51.100.0/23"))[0]["decisions"][0]
        self.assertEqual(again["state"], "pending_approval", again)

    def test_an_entity_hit_on_every_detection_keeps_a_bounded_record(self):
        # Every hit rewrites the mitigation into the ledger: with every detection id listed,
        # an entity hit thousands of times made each write larger than the last.
        results = self.submit(*[det("hot-%d" % i, "user:hot") for i in range(130)])
        ids = {r["decisions"][0]["mitigation_id"] for r in results}
        self.assertEqual(len(ids), 1, ids)
        m = self.q.request("GET", "/v1/mitigations/" + ids.pop())[1]
        self.assertEqual(m["detections"], ["hot-%d" % i for i in range(100)])
        self.assertEqual(m["unlisted_detections"], 30)
        # Another policy's first hit is listed all the same (immunity names it).
        self.submit(det("hot-s", "user:hot", type="scraper"))
        self.q.stop()
        self.q.start()
        m = self.q.request("GET", "/v1/mitigations/" + m["id"])[1]
        self.assertEqual((len(m["detections"]), m["detections"][-1]), (101, "hot-s"))
        self.assertEqual(m["detection_policies"][-2:], ["bot", "scraper"])
        self.assertEqual(m["unlisted_detections"], 30)
        # docs/openapi.yaml describes every field the server returns.
        try:
            import yaml
        except ImportError:  # Debian's python3-yaml under another interpreter
            sys.path.append("/usr/lib/python3/dist-packages")
            import yaml
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        with open(os.path.join(root, "docs", "openapi.yaml")) as f:
            schema = yaml.safe_load(f)["components"]["schemas"]["Mitigation"]["properties"]
        self.assertLessEqual(set(m), set(schema))

    def past_its_start(self, mitigation_id):
        """The scheduled mitigation once it is no longer scheduled (or after 20 s: the 5s
        delay, then the scheduler's next look)."""
        deadline = time.time() + 20
        while True:
            m = self.q.request("GET", "/v1/mitigations/" + mitigation_id)[1]
            if m["state"] != "scheduled" or time.time() > deadline:
                return m
            time.sleep(0.1)

    def test_a_scheduled_decision_on_an_entity_protected_since_waits_for_a_person(self):
        d = self.submit(det("sl-1", "user:late-vip", type="slow"))[0]["decisions"][0]
        self.assertEqual(d["state"], "scheduled")
        self.protect("user:late-vip")
        m = self.past_its_start(d["mitigation_id"])
        self.assertEqual(m["state"], "pending_approval", m)
        self.assertIn("held at its scheduled start", m["state_reason"])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:late-vip")[1]["verdict"],
                         "allow")
        s, r, _ = self.review(d["mitigation_id"], True, self.r1)
        self.assertEqual((s, r["mitigation"]["state"]), (200, "active"), r)
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:late-vip")[1]["verdict"],
                         "deny")

    def test_a_scheduled_decision_on_an_entity_made_immune_since_waits_for_a_person(self):
        # Only protection was asked at the start: a reviewer's "no" to the same policy and
        # action on the entity, given after the delayed decision was made, did not stop it
        # from going active at its start.
        d = self.submit(det("si-1", "user:cleared", type="slow"))[0]["decisions"][0]
        self.assertEqual(d["state"], "scheduled")
        self.protect("user:cleared")
        held = self.submit(det("si-2", "user:cleared", type="slow"))[0]["decisions"][0]
        self.assertEqual(held["state"], "pending_approval", held)
        s, r, _ = self.review(held["mitigation_id"], False, self.r1, note="false positive")
        self.assertEqual((s, r["mitigation"]["state"]), (200, "rejected"), r)
        self.q.request("POST", "/v1/lists/vips/entries", {"remove": ["user:cleared"]})
        m = self.past_its_start(d["mitigation_id"])
        self.assertEqual(m["state"], "pending_approval", m)
        self.assertIn("held at its scheduled start: immunity until", m["state_reason"])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:cleared")[1]["verdict"],
                         "allow")

    def test_appeal_grant(self):
        d = self.submit(det("ap-1", "user:appellant"))[0]["decisions"][0]
        self.assertEqual(d["state"], "active")
        s, a, _ = self.q.request("POST", "/v1/appeals",
                                 {"mitigation_id": d["mitigation_id"], "statement": "I am a real fan"},
                                 key=self.r1)
        self.assertEqual(s, 201, a)
        self.assertEqual(a["state"], "open")
        # One open appeal per mitigation; the filer cannot decide it.
        self.assertEqual(self.q.request("POST", "/v1/appeals", {"mitigation_id": d["mitigation_id"],
                                                                "statement": "again"}, key=self.r1)[0], 409)
        self.assertEqual(self.q.request("POST", "/v1/appeals/%s/decision" % a["id"], {"grant": True},
                                        key=self.r1)[0], 403)
        s, g, _ = self.q.request("POST", "/v1/appeals/%s/decision" % a["id"],
                                 {"grant": True, "note": "listening history is human"}, key=self.r2)
        self.assertEqual(s, 200, g)
        self.assertEqual(g["state"], "granted")
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:appellant")[1]["verdict"], "allow")
        m = self.q.request("GET", "/v1/mitigations/" + d["mitigation_id"])[1]
        self.assertEqual(m["state"], "revoked")
        self.assertIn("reinstated", m["state_reason"])
        view = self.q.request("GET", "/v1/entities/user:appellant")[1]
        kinds = [t["kind"] for t in view["timeline"]]
        self.assertIn("review", kinds)
        self.assertTrue(any(t.get("payload", {}).get("reinstated") for t in view["timeline"]))
        # Immunity: the same policy's next automatic decision goes to review.
        d2 = self.submit(det("ap-2", "user:appellant"))[0]["decisions"][0]
        self.assertEqual(d2["state"], "pending_approval")
        self.assertIn("immunity", d2["reason"])

    def test_a_granted_appeal_covers_the_policies_whose_hits_are_on_it(self):
        # A manual block that a policy then hit: the grant made the entity immune to no
        # policy (the mitigation has none of its own) and the policy's next hit re-blocked
        # it at once; the hit was not even recorded as the policy's.
        s, m, _ = self.q.request("POST", "/v1/mitigations",
                                 {"entity": "user:man-ap", "action": "block", "reason": "analyst"},
                                 key=self.r1)
        self.assertEqual((s, m["state"]), (201, "active"), m)
        d = self.submit(det("ma-1", "user:man-ap"))[0]["decisions"][0]
        self.assertEqual(d["mitigation_id"], m["id"])
        m = self.q.request("GET", "/v1/mitigations/" + m["id"])[1]
        self.assertEqual(m["detection_policies"], ["bot"], m)
        s, a, _ = self.q.request("POST", "/v1/appeals",
                                 {"mitigation_id": m["id"], "statement": "a real listener"},
                                 key=self.r1)
        self.assertEqual(s, 201, a)
        s, g, _ = self.q.request("POST", "/v1/appeals/%s/decision" % a["id"], {"grant": True},
                                 key=self.r2)
        self.assertEqual((s, g["state"]), (200, "granted"), g)
        # Across a restart too (the start-up read skipped mitigations with no policy).
        self.q.stop()
        self.q.start()
        d2 = self.submit(det("ma-2", "user:man-ap"))[0]["decisions"][0]
        self.assertEqual(d2["state"], "pending_approval", d2)
        self.assertIn("immunity", d2["reason"])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:man-ap")[1]["verdict"],
                         "allow")

    def test_a_denied_appeal_is_kept_not_refiled_over(self):
        # The appeal id is the mitigation's: a second appeal after a denial used to reuse
        # it, and the decision, its author and note vanished from GET /v1/appeals/{id}.
        d = self.submit(det("apd-1", "user:appellant-2"))[0]["decisions"][0]
        s, a, _ = self.q.request("POST", "/v1/appeals",
                                 {"mitigation_id": d["mitigation_id"], "statement": "first"},
                                 key=self.r1)
        self.assertEqual(s, 201, a)
        s, denied, _ = self.q.request("POST", "/v1/appeals/%s/decision" % a["id"],
                                      {"grant": False, "note": "bot-like sessions"}, key=self.r2)
        self.assertEqual((s, denied["state"]), (200, "denied"), denied)
        s, again, _ = self.q.request("POST", "/v1/appeals", {"mitigation_id": d["mitigation_id"],
                                                             "statement": "second"}, key=self.r1)
        self.assertEqual(s, 409, again)
        self.assertIn("already decided (denied)", again["error"]["message"])
        kept = self.q.request("GET", "/v1/appeals/" + a["id"])[1]
        self.assertEqual((kept["state"], kept["statement"], kept["note"]),
                         ("denied", "first", "bot-like sessions"))

    def test_an_approved_decision_never_stacks_on_an_active_one(self):
        # An analyst blocks a protected entity by hand while a model's block on it waits for
        # approval. Approving the model's used to make a second active block, and revoking
        # the analyst's then left the entity blocked. The active one absorbs it now.
        self.protect("user:vip-stack")
        s, manual, _ = self.q.request("POST", "/v1/mitigations", {
            "entity": "user:vip-stack", "action": "block", "ttl": "1h", "reason": "case 12"})
        self.assertIn(s, (200, 201), manual)
        d = self.submit(det("stk-1", "user:vip-stack"))[0]["decisions"][0]
        self.assertEqual((d["action"], d["state"]), ("block", "pending_approval"))
        self.assertNotEqual(d["mitigation_id"], manual["id"])
        s, r, _ = self.review(d["mitigation_id"], True, self.r1)
        self.assertEqual(s, 200, r)
        self.assertEqual(r["mitigation"]["state"], "expired", r)
        self.assertIn("merged into " + manual["id"], r["mitigation"]["state_reason"])
        kept = self.q.request("GET", "/v1/mitigations/" + manual["id"])[1]
        self.assertEqual(kept["state"], "active")
        self.assertIn("stk-1", kept["detections"])  # the model's evidence, kept
        self.assertGreater(kept["expires_at"], manual["expires_at"])  # the 7d block's expiry
        blocks = [m for m in self.q.request("GET", "/v1/check?entity=user:vip-stack")[1]["mitigations"]
                  if m["action"] == "block"]
        self.assertEqual([m["id"] for m in blocks], [manual["id"]])
        self.revoke(manual["id"], "false positive")
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:vip-stack")[1]["verdict"], "allow")

    def test_a_long_timeline_pages_and_stays_reviewable(self):
        # 10,001 changes on one entity (one block, extended by every hit). The entity view
        # used to show the first 1,000 changes with no sign of more, and a review (or an
        # appeal) of a mitigation made after the first 10,000 failed: "no history".
        entity = "user:long-history"
        for b in range(10):
            res = self.submit(*[det("lh-%d-%d" % (b, i), entity) for i in range(1000)])
            self.assertEqual({r["status"] for r in res}, {"accepted"})
        s, view, _ = self.q.request("GET", "/v1/entities/" + entity)
        self.assertEqual(s, 200, view)
        self.assertEqual(len(view["timeline"]), 1000)
        seqs = [c["seq"] for c in view["timeline"]]
        self.assertEqual(view["timeline_next"], seqs[-1])
        s, rest, _ = self.q.request("GET", "/v1/entities/%s?after=%d" % (entity, seqs[-1]))
        self.assertEqual(s, 200, rest)
        self.assertGreater(rest["timeline"][0]["seq"], seqs[-1])
        self.assertEqual(self.q.request("GET", "/v1/entities/%s?after=x" % entity)[0], 400)
        # A decision held for approval now, reviewed by two people.
        self.protect(entity)
        d = self.submit(det("lh-takeover", entity, type="takeover"))[0]["decisions"][0]
        self.assertEqual((d["action"], d["state"]), ("suspend", "pending_approval"))
        s, r, _ = self.review(d["mitigation_id"], True, self.r1)
        self.assertEqual(s, 200, r)
        s, r, _ = self.review(d["mitigation_id"], True, self.r2)
        self.assertEqual((s, r["mitigation"]["state"]), (200, "active"), r)

    def test_concurrent_appeals_file_one(self):
        # Six filings at once used to give five 201s (the one-appeal check ran outside the
        # transaction): the last filer's name won, and an earlier filer could then decide
        # "their" appeal. Exactly one passes now.
        d = self.submit(det("apc-1", "user:appellant-3"))[0]["decisions"][0]
        codes = []

        def file(key):
            codes.append(self.q.request("POST", "/v1/appeals", {"mitigation_id": d["mitigation_id"],
                                                                "statement": "race"}, key=key)[0])

        threads = [threading.Thread(target=file, args=(k,)) for k in (self.r1, self.r2) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(sorted(codes), [201] + [409] * 5, codes)

    def test_two_decisions_on_one_appeal_at_once_one_wins(self):
        # A denial and a grant sent together were both answered 200: the appeal was read
        # before the transaction, and a denial does not change the mitigation. The second
        # is a 409 now, whichever comes first.
        for i in range(8):
            d = self.submit(det("apr-%d" % i, "user:appellant-r%d" % i))[0]["decisions"][0]
            s, a, _ = self.q.request("POST", "/v1/appeals",
                                     {"mitigation_id": d["mitigation_id"], "statement": "me"},
                                     key=self.r1)
            self.assertEqual(s, 201, a)
            codes = []
            barrier = threading.Barrier(2)

            def decide(grant, key):
                barrier.wait(10)
                codes.append(self.q.request("POST", "/v1/appeals/%s/decision" % a["id"],
                                            {"grant": grant}, key=key)[0])

            threads = [threading.Thread(target=decide, args=(False, None)),
                       threading.Thread(target=decide, args=(True, self.r2))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            self.assertEqual(sorted(codes), [200, 409], (i, codes))

    def test_a_grant_on_a_mitigation_no_longer_live_is_refused(self):
        d = self.submit(det("apx-1", "user:appellant-4"))[0]["decisions"][0]
        s, a, _ = self.q.request("POST", "/v1/appeals",
                                 {"mitigation_id": d["mitigation_id"], "statement": "fan"},
                                 key=self.r1)
        self.assertEqual(s, 201, a)
        self.revoke(d["mitigation_id"], "analyst: false positive")
        # It used to answer 200 "granted", revoking nothing and granting no immunity.
        s, e, _ = self.q.request("POST", "/v1/appeals/%s/decision" % a["id"], {"grant": True},
                                 key=self.r2)
        self.assertEqual(s, 409, e)
        self.assertIn("nothing to revoke", e["error"]["message"])
        self.assertEqual(self.q.request("GET", "/v1/appeals/" + a["id"])[1]["state"], "open")
        s, denied, _ = self.q.request("POST", "/v1/appeals/%s/decision" % a["id"], {"grant": False},
                                      key=self.r2)
        self.assertEqual((s, denied["state"]), (200, "denied"), denied)

    def test_explanations_in_entity_view(self):
        self.protect("user:vip-why")
        d = self.submit(det("why-1", "user:vip-why"))[0]["decisions"][0]
        self.review(d["mitigation_id"], True, self.r1)
        view = self.q.request("GET", "/v1/entities/user:vip-why")[1]
        causes = [t["cause"] for t in view["timeline"] if t["kind"] == "mitigation"]
        self.assertEqual(causes[0]["policy"], "bot")
        self.assertGreaterEqual(causes[0]["policy_version"], 1)
        self.assertEqual(causes[0]["source"], "model-a")
        self.assertEqual(causes[0]["detections"], ["why-1"])
        self.assertIn("protected", causes[0]["why"])
        self.assertEqual(causes[-1]["reviewer"], self.r1.split(".")[0])
        self.assertEqual(causes[-1]["state"], "active")
        self.assertEqual(view["lists"], [{"name": "vips", "protected": True}])
        self.assertIn("protected list vips", view["protected"])


class RunawayTest(Base):
    """A runaway detector: 100,000 detections in a few seconds, 1% against protected
    entities and CIDRs covering protected addresses."""
    LIMIT = 2000
    BATCH = 5000

    def test_runaway_detector(self):
        protected_users = ["user:star%d" % i for i in range(500)]
        protected_ips = ["ip:10.77.%d.%d" % (i // 200, i % 200 + 1) for i in range(500)]
        self.protect(*protected_users[:250])
        self.protect(*protected_users[250:], *protected_ips)
        dets = []
        for i in range(100000):
            k = i // 100
            if i % 100 != 0:
                entity = "user:fan%d" % i
            elif k % 2 == 0:
                entity = protected_users[k // 2]
            else:
                entity = "cidr:10.77.%d.0/24" % (k % 3)  # covers protected addresses
            dets.append(det("run-%d" % i, entity, source="runaway-model"))
        start = time.time()
        for b in range(0, len(dets), self.BATCH):
            for r in self.submit(*dets[b:b + self.BATCH]):
                self.assertEqual(r["status"], "accepted")
        elapsed = time.time() - start
        print("\n100000 detections in %.1fs" % elapsed)
        # No protected entity is mitigated: not directly, not through a covering network.
        for e in protected_users + protected_ips:
            self.assertEqual(self.q.request("GET", "/v1/check?entity=" + e)[1]["verdict"], "allow", e)
        self.assertEqual(self.mitigations(source="runaway-model", state="active", entity="cidr:10.77.0.0/24"), [])
        # The breaker opened no later than its limit plus one batch, and held the rest.
        active = self.mitigations(source="runaway-model", state="active")
        self.assertLessEqual(len(active), self.LIMIT + self.BATCH)
        self.assertGreater(len(active), 0)
        breakers = {b["name"]: b for b in self.q.request("GET", "/v1/breakers")[1]["breakers"]}
        self.assertEqual(breakers["runaway"]["state"], "open")
        pending = self.mitigations(source="runaway-model", state="pending_approval")
        # Nothing dropped: every entity has its decision (repeats on one entity extend it).
        self.assertEqual(len(active) + len(pending), len(set(d["entity"] for d in dets)))
        # One rollback call restores every affected entity.
        body = {"filter": {"source": "runaway-model"}, "reason": "model v9 was broken"}
        s, dry, _ = self.q.request("POST", "/v1/rollbacks", dict(body, dry_run=True))
        self.assertEqual(s, 200, dry)
        self.assertEqual(dry["matched"], len(active) + len(pending))
        self.assertEqual(dry["revoked"], 0)
        # ~99,500 entities is over the default bulk threshold (65,536): the rollback is a
        # request that another reviewer approves; the approval runs it.
        self.assertTrue(dry["needs_approval"])
        s, req, _ = self.q.request("POST", "/v1/rollbacks", body)
        self.assertEqual(s, 202, req)
        self.assertEqual(req["state"], "pending_approval")
        self.assertEqual(len(self.mitigations(source="runaway-model", state="active")), len(active))
        # `check` keeps answering while the rollback runs: a steady client (about 1,000/s here)
        # on its own connection.
        stop, lat, codes = threading.Event(), [], []

        def checker():
            conn = self.q.connection()
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                s, v, _ = self.q.request("GET", "/v1/check?entity=user:fan%d" % (i * 7919 % 100000 or 1),
                                         conn=conn)
                lat.append(time.perf_counter() - t0)
                codes.append(s)
                i += 1
                time.sleep(0.0005)  # a steady client, not one that takes a core from the server
            conn.close()

        t = threading.Thread(target=checker)
        t.start()
        start = time.time()
        s, dec, _ = self.review(req["id"], True, self.r1, note="model v9 confirmed broken")
        took = time.time() - start
        stop.set()
        t.join()
        lat.sort()
        print("rollback of %d mitigations in %.2fs; %d checks meanwhile, p50 %.2f ms, p99 %.2f ms, "
              "max %.2f ms" % (dec.get("rollback", {}).get("revoked", -1), took, len(lat),
                               1000 * lat[len(lat) // 2], 1000 * lat[len(lat) * 99 // 100],
                               1000 * lat[-1]))
        self.assertEqual(s, 200, dec)
        self.assertGreater(len(codes), 0)
        self.assertEqual(set(codes), {200})
        rb = dec["rollback"]
        self.assertEqual(rb["state"], "done")
        self.assertEqual(rb["revoked"], len(active) + len(pending))
        self.assertEqual(self.mitigations(source="runaway-model", state="active"), [])
        self.assertEqual(self.mitigations(source="runaway-model", state="pending_approval"), [])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=" + active[0]["entity"])[1]["verdict"], "allow")
        view = self.q.request("GET", "/v1/entities/" + active[0]["entity"])[1]
        self.assertIn("rollback", view["timeline"][-1]["mitigation"]["state_reason"])
        # Idempotent: nothing left to match.
        s, again, _ = self.q.request("POST", "/v1/rollbacks", body)
        self.assertEqual((again["matched"], again["revoked"]), (0, 0))


class RollbackApprovalTest(Base):
    """A rollback over more entities than safeguards.bulk_threshold (set to 3 in the YAML
    config file) waits for a second, different admin or reviewer."""
    CONFIG = "safeguards:\n  bulk_threshold: 3\n  pending_ttl: 1h\nwebhooks:\n  max_attempts: 5\n"

    @classmethod
    def server_args(cls):
        cls._cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        cls._cfg.write(cls.CONFIG)
        cls._cfg.close()
        return ["--config", cls._cfg.name]

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        os.unlink(cls._cfg.name)

    def mitigate(self, source, n):
        res = self.submit(*[det("%s-%d" % (source, i), "user:%s-%d" % (source, i), source=source)
                            for i in range(n)])
        self.assertEqual([r["decisions"][0]["state"] for r in res], ["active"] * n)
        return [r["decisions"][0]["entity"] for r in res]

    def verdict(self, entity):
        return self.q.request("GET", "/v1/check?entity=" + entity)[1]["verdict"]

    def test_over_threshold_waits_for_another_reviewer(self):
        entities = self.mitigate("model-big", 5)
        body = {"filter": {"source": "model-big"}, "reason": "bad model"}
        s, dry, _ = self.q.request("POST", "/v1/rollbacks", dict(body, dry_run=True))
        self.assertEqual((s, dry["matched"], dry["entities"], dry["needs_approval"]), (200, 5, 5, True))
        s, req, _ = self.q.request("POST", "/v1/rollbacks", body)
        self.assertEqual(s, 202, req)
        self.assertEqual((req["state"], req["revoked"], req["entities"]), ("pending_approval", 0, 5))
        rid = req["id"]
        self.assertEqual((req["request"]["id"], req["request"]["state"]), (rid, "pending_approval"))
        self.assertEqual(req["request"]["filter"], {"source": "model-big"})
        # Nothing is revoked while it waits; it is an open review and has its own resource.
        self.assertEqual(self.verdict(entities[0]), "deny")
        reviews = self.q.request("GET", "/v1/reviews?state=open")[1]["reviews"]
        mine = [r for r in reviews if r["id"] == rid]
        self.assertEqual(len(mine), 1, reviews)
        self.assertEqual(mine[0]["kind"], "rollback")
        self.assertEqual(mine[0]["evidence"]["matched"], 5)
        s, got, _ = self.q.request("GET", "/v1/rollbacks/" + rid)
        self.assertEqual((s, got["state"], got["requested_by"] != ""), (200, "pending_approval", True))
        # The requester (the admin key) cannot approve their own request.
        s, r, _ = self.review(rid, True, None)
        self.assertEqual(s, 403, r)
        self.assertEqual(self.verdict(entities[0]), "deny")
        # A pending request survives a restart (it is in the ledger).
        self.q.stop()
        self.q.start()
        s, got, _ = self.q.request("GET", "/v1/rollbacks/" + rid)
        self.assertEqual((s, got["state"]), (200, "pending_approval"))
        # Another reviewer approves: it runs, in the same transaction as the approval.
        s, dec, _ = self.review(rid, True, self.r1, note="confirmed")
        self.assertEqual(s, 200, dec)
        self.assertEqual((dec["rollback"]["state"], dec["rollback"]["revoked"]), ("done", 5))
        self.assertEqual(dec["rollback"]["note"], "confirmed")
        for e in entities:
            self.assertEqual(self.verdict(e), "allow", e)
        view = self.q.request("GET", "/v1/entities/" + entities[0])[1]
        reason = view["timeline"][-1]["mitigation"]["state_reason"]
        self.assertIn(rid, reason)
        self.assertIn("approved by", reason)
        # Decided: no second decision, and it left the queue.
        self.assertEqual(self.review(rid, True, self.r2)[0], 409)
        self.assertEqual(self.review(rid, False, self.r2)[0], 409)
        reviews = self.q.request("GET", "/v1/reviews?state=open")[1]["reviews"]
        self.assertEqual([r for r in reviews if r["id"] == rid], [])
        self.assertEqual(self.q.request("GET", "/v1/rollbacks/" + rid)[1]["state"], "done")

    def test_rejected_request_revokes_nothing(self):
        entities = self.mitigate("model-rej", 4)
        s, req, _ = self.q.request("POST", "/v1/rollbacks", {"filter": {"source": "model-rej"}})
        self.assertEqual(s, 202, req)
        s, dec, _ = self.review(req["id"], False, self.r2, note="the model was right")
        self.assertEqual(s, 200, dec)
        self.assertEqual((dec["rollback"]["state"], dec["rollback"]["revoked"]), ("rejected", 0))
        for e in entities:
            self.assertEqual(self.verdict(e), "deny", e)
        self.assertEqual(self.review(req["id"], True, self.r1)[0], 409)
        # Its requester too: decided is decided (it said 403, "their own request").
        s, body, _ = self.review(req["id"], True, self.q.admin_key)
        self.assertEqual(s, 409, body)
        listed = self.q.request("GET", "/v1/rollbacks?state=rejected")[1]["rollbacks"]
        self.assertIn(req["id"], [r["id"] for r in listed])
        # Filters that can match nothing are refused, not answered "done" or [].
        s, e, _ = self.q.request("GET", "/v1/rollbacks?state=bogus")
        self.assertEqual((s, e["error"]["details"][0]["field"]), (400, "query.state"), e)
        s, e, _ = self.q.request("POST", "/v1/rollbacks", {"filter": {
            "source": "model-rej", "since": "2026-12-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}})
        self.assertEqual((s, e["error"]["details"][0]["field"]), (400, "filter.until"), e)

    def test_at_threshold_runs_at_once(self):
        entities = self.mitigate("model-small", 3)
        s, rb, _ = self.q.request("POST", "/v1/rollbacks", {"filter": {"source": "model-small"}})
        self.assertEqual(s, 200, rb)
        self.assertEqual((rb["state"], rb["revoked"], rb["needs_approval"]), ("done", 3, False))
        self.assertEqual(self.verdict(entities[0]), "allow")
        # Filed like an approved request: who rolled back what is on record.
        s, got, _ = self.q.request("GET", "/v1/rollbacks/" + rb["id"])
        self.assertEqual(s, 200, got)
        self.assertEqual((got["state"], got["revoked"], got["matched"], got["filter"]),
                         ("done", 3, 3, {"source": "model-small"}), got)
        self.assertEqual(got["decided_by"], got["requested_by"])
        done = self.q.request("GET", "/v1/rollbacks?state=done")[1]["rollbacks"]
        self.assertIn(rb["id"], [r["id"] for r in done])
        self.assertEqual(self.review("rb_nope", True, self.r1)[0], 404)

    def test_kill9_during_an_approved_rollback_is_all_or_nothing(self):
        n = 20000
        for b in range(0, n, 5000):
            self.submit(*[det("k9-%d" % i, "user:k9-%d" % i, source="model-k9")
                          for i in range(b, b + 5000)])
        s, req, _ = self.q.request("POST", "/v1/rollbacks", {"filter": {"source": "model-k9"}})
        self.assertEqual(s, 202, req)
        # Approve, and kill -9 the server while the revocations are being written.
        conn = self.q.connection()
        conn.request("POST", "/v1/reviews/%s/decision" % req["id"], json.dumps({"approve": True}),
                     {"Authorization": "Bearer " + self.r1, "Content-Type": "application/json"})
        time.sleep(0.4)  # about when the one transaction is being written (either outcome is checked)
        self.q.kill9()
        conn.close()
        self.q.start()
        state = self.q.request("GET", "/v1/rollbacks/" + req["id"])[1]["state"]
        active = len(self.mitigations(source="model-k9", state="active"))
        revoked = len(self.mitigations(source="model-k9", state="revoked"))
        print("\nkill -9 during an approved rollback: request %s, %d active, %d revoked"
              % (state, active, revoked))
        if state == "done":
            self.assertEqual((active, revoked), (0, n))
        else:
            self.assertEqual(state, "pending_approval")
            self.assertEqual((active, revoked), (n, 0))
            # Still decidable after the restart, and then complete.
            s, dec, _ = self.review(req["id"], True, self.r1)
            self.assertEqual((s, dec["rollback"]["revoked"]), (200, n), dec)
        self.q.stop()
        code, out, _ = run_cli("audit", "verify", "--data", self.q.data)
        self.assertEqual(code, 0, out)
        self.q.start()

    def test_bad_config_values_stop_the_server(self):
        for text, key in (("safeguards: {bulk_threshold: -2}\n", "safeguards.bulk_threshold"),
                          ("safeguards: {pendng_ttl: 1h}\n", "safeguards.pendng_ttl"),
                          ("webhooks: {max_attempts: 0}\n", "webhooks.max_attempts"),
                          ("webhooks: {timeout: soon}\n", "webhooks.timeout")):
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "quell.yaml")
                with open(path, "w") as f:
                    f.write(text)
                rc, _, err = run_cli("serve", "--config", path, "--data", d, "--listen",
                                     "127.0.0.1:0", check=False)
                self.assertNotEqual(rc, 0, text)
                self.assertIn(key, err)


class ExpiryAndRestartTest(Base):
    LIMIT = 3
    ENV = {"QUELL_SAFEGUARDS_PENDING_TTL": "1s", "QUELL_SAFEGUARDS_SWEEP_INTERVAL": "200ms",
           "QUELL_SAFEGUARDS_BULK_THRESHOLD": "1"}

    def wait_state(self, mid, want, deadline=30):
        end = time.time() + deadline
        while time.time() < end:
            m = self.q.request("GET", "/v1/mitigations/" + mid)[1]
            if m["state"] == want:
                return m
            self.assertEqual(m["state"], "pending_approval")  # never silently active
            time.sleep(0.1)
        self.fail("%s never became %s" % (mid, want))

    def test_pending_expiry(self):
        self.protect("user:vip-exp")
        d = self.submit(det("ex-1", "user:vip-exp"))[0]["decisions"][0]
        self.assertEqual(d["state"], "pending_approval")
        m = self.wait_state(d["mitigation_id"], "expired")
        self.assertIn("pending approval expired", m["state_reason"])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:vip-exp")[1]["verdict"], "allow")
        self.assertEqual(self.review(d["mitigation_id"], True, self.r1)[0], 409)

    def test_undone_or_never_approved_decisions_are_not_prior_offences(self):
        # `repeat` escalates a second hit to suspend. A first decision that a person
        # rejected or revoked, or that was held and expired unapproved, was never a
        # confirmed offence: it used to count, and made the next hit a critical suspend.
        def first_and_second(entity, undo):
            d = self.submit(det(entity + "-1", entity, type="repeat"))[0]["decisions"][0]
            self.assertEqual(d["action"], "block")
            undo(d)
            return self.submit(det(entity + "-2", entity, type="repeat"))[0]["decisions"][0]

        def revoke(d):
            self.assertEqual(d["state"], "active")
            self.revoke(d["mitigation_id"], "false positive", self.r1)

        def reject(d):
            self.assertEqual(d["state"], "pending_approval")
            self.assertEqual(self.review(d["mitigation_id"], False, self.r1)[0], 200)

        def let_expire(d):
            self.assertEqual(d["state"], "pending_approval")
            self.wait_state(d["mitigation_id"], "expired")

        self.protect("user:esc-rej", "user:esc-exp")
        for entity, undo in (("user:esc-rev", revoke), ("user:esc-rej", reject),
                             ("user:esc-exp", let_expire)):
            second = first_and_second(entity, undo)
            self.assertEqual(second["action"], "block", (entity, second))
            self.assertNotIn("escalated", second["reason"])
        # An enforced first decision does count.
        second = first_and_second("user:esc-on", lambda d: self.assertEqual(d["state"], "active"))
        self.assertEqual(second["action"], "suspend", second)
        self.assertIn("escalated to suspend after 1 prior", second["reason"])

    def test_rollback_request_expires(self):
        res = self.submit(*[det("rx-%d" % i, "user:rx%d" % i, source="model-rx") for i in range(2)])
        self.assertEqual([r["decisions"][0]["state"] for r in res], ["active"] * 2)
        s, req, _ = self.q.request("POST", "/v1/rollbacks", {"filter": {"source": "model-rx"}})
        self.assertEqual(s, 202, req)
        time.sleep(1.5)
        self.assertEqual(self.q.request("GET", "/v1/rollbacks/" + req["id"])[1]["state"], "expired")
        self.assertEqual(self.review(req["id"], True, self.r1)[0], 409)
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:rx0")[1]["verdict"], "deny")

    def test_breaker_survives_restart_until_reset(self):
        res = self.submit(*[det("br-%d" % i, "user:br%d" % i, source="runaway-model") for i in range(6)])
        states = [r["decisions"][0]["state"] for r in res]
        self.assertEqual(states[:3], ["active"] * 3)
        self.assertEqual(states[3:], ["pending_approval"] * 3)
        self.assertIn("breaker runaway is open", res[3]["decisions"][0]["reason"])
        self.q.stop()
        self.q.start()
        b = {x["name"]: x for x in self.q.request("GET", "/v1/breakers")[1]["breakers"]}["runaway"]
        self.assertEqual(b["state"], "open")
        self.assertEqual(self.submit(det("br-6", "user:br6", source="runaway-model"))[0]["decisions"][0]["state"],
                         "pending_approval")
        self.assertEqual(self.q.request("POST", "/v1/breakers/runaway/reset", key=self.r1)[0], 403)
        s, b, _ = self.q.request("POST", "/v1/breakers/runaway/reset")
        self.assertEqual((s, b["state"]), (200, "closed"))
        self.assertEqual(self.submit(det("br-7", "user:br7", source="runaway-model"))[0]["decisions"][0]["state"],
                         "active")
        self.assertEqual(self.q.request("POST", "/v1/breakers/nope/reset")[0], 404)


class LateApprovalTest(Base):
    # The sweeper runs rarely here: between pending_ttl and the next sweep, a pending
    # decision is expired all the same and can be neither listed nor approved (it used to
    # be approvable, and then active).
    ENV = {"QUELL_SAFEGUARDS_PENDING_TTL": "1s", "QUELL_SAFEGUARDS_SWEEP_INTERVAL": "1h"}

    def test_pending_past_its_ttl_is_not_approved(self):
        self.protect("user:vip-late")
        d = self.submit(det("late-1", "user:vip-late"))[0]["decisions"][0]
        self.assertEqual(d["state"], "pending_approval")
        time.sleep(1.2)
        open_ids = [r["id"] for r in self.q.request("GET", "/v1/reviews?state=open")[1]["reviews"]]
        self.assertNotIn(d["mitigation_id"], open_ids)
        s, e, _ = self.review(d["mitigation_id"], True, self.r1)
        self.assertEqual(s, 409, e)
        self.assertIn("expired at", e["error"]["message"])
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:vip-late")[1]["verdict"], "allow")
        self.assertEqual(self.q.request("GET", "/v1/mitigations/" + d["mitigation_id"])[1]["state"],
                         "pending_approval")  # until the sweeper marks it expired


if __name__ == "__main__":
    unittest.main()
