"""Integration tests for backtesting (issue 3): POST /v1/policies/backtest and
`quell policy backtest` replay the stored detections of a window against a candidate
policy set, against the real binary with the example music-streaming set published."""
import datetime
import json
import os
import re
import tempfile
import unittest

from harness import QuellServer, run_cli

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def ts(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def det(id, entity, score, at, type="artificial_streaming", source="bot-model-v3"):
    return {"id": id, "source": source, "type": type, "entity": entity, "score": score,
            "observed_at": ts(at)}


class BacktestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.q = QuellServer(extra_args=["--config", os.path.join(EXAMPLES, "quell.yaml")]).start()
        base = NOW - datetime.timedelta(hours=1)
        cls.from_ = ts(base - datetime.timedelta(minutes=1))
        cls.to = ts(NOW)
        items = []
        # Outside the window (2 h ago): never replayed.
        items.append(det("bt-old", "user:bt-old", 0.95, NOW - datetime.timedelta(hours=2)))
        scores = [("hi", 0.95, 3), ("med", 0.8, 2), ("lo", 0.6, 4), ("vlo", 0.4, 1)]
        i = 0
        for name, score, n in scores:
            for k in range(n):
                i += 1
                items.append(det("bt-%s-%d" % (name, k), "user:bt-%s-%d" % (name, k), score,
                                 base + datetime.timedelta(seconds=i)))
        s, r, _ = cls.q.request("POST", "/v1/detections", {"detections": items})
        assert s == 200, r
        assert all(x["status"] == "accepted" for x in r["results"]), r
        cls.results = r["results"]
        s, cls.yaml, _ = cls.q.request("GET", "/v1/policies", raw=True)
        assert s == 200

    @classmethod
    def tearDownClass(cls):
        cls.q.cleanup()

    def backtest(self, policy_set=None, **kw):
        body = {"from": self.from_, "to": self.to}
        if policy_set is not None:
            body["policy_set"] = policy_set
        body.update(kw)
        return self.q.request("POST", "/v1/policies/backtest", body)

    @staticmethod
    def row(report, policy):
        rows = [p for p in report["policies"] if p["policy"] == policy]
        assert len(rows) == 1, (policy, report["policies"])
        return rows[0]

    def lowered(self):
        c = self.yaml.replace("detection.score >= 0.75 && detection.score < 0.9",
                              "detection.score >= 0.55 && detection.score < 0.9", 1)
        self.assertNotEqual(c, self.yaml)
        return c

    def removed(self):
        c = re.sub(r"\n  - id: bot-model-high\n.*?(?=\n  # 2\.)", "\n", self.yaml, count=1,
                   flags=re.S)
        self.assertNotIn("id: bot-model-high", c)
        return c

    def test_sanity_of_the_stored_decisions(self):
        policies = [[d["policy"] for d in r["decisions"] if d["state"] == "active"]
                    for r in self.results]
        self.assertEqual(policies[1:4], [["bot-model-high"]] * 3)
        self.assertEqual(policies[4:6], [["bot-model-medium"]] * 2)
        self.assertEqual(policies[6:], [[]] * 5)

    def test_active_set_changes_nothing(self):
        s, r, _ = self.backtest()
        self.assertEqual(s, 200, r)
        self.assertEqual(r["detections"], 10)  # bt-old is outside the window
        self.assertEqual(r["skipped"], 0)
        self.assertEqual(r["totals"]["newly"]["entities"], 0)
        self.assertEqual(r["totals"]["no_longer"]["entities"], 0)
        self.assertEqual(r["totals"]["unchanged"]["entities"], 5)
        self.assertEqual(self.row(r, "bot-model-high")["matched"], 3)
        self.assertEqual(self.row(r, "bot-model-medium")["unchanged"]["entities"], 2)

    def test_lower_threshold(self):
        seq = self.q.request("GET", "/readyz", auth=False)[1]["seq"]
        s, r, _ = self.backtest(self.lowered())
        self.assertEqual(s, 200, r)
        med = self.row(r, "bot-model-medium")
        self.assertEqual(med["mode"], "enforce")
        self.assertEqual(med["matched"], 6)
        self.assertEqual(med["newly"]["entities"], 4)
        self.assertEqual(med["newly"]["decisions"], 4)
        self.assertEqual(med["newly"]["protected_entities"], 0)
        self.assertEqual(sorted(med["newly"]["samples"]),
                         ["user:bt-lo-0", "user:bt-lo-1", "user:bt-lo-2", "user:bt-lo-3"])
        self.assertEqual(med["unchanged"]["entities"], 2)
        self.assertEqual(med["no_longer"]["entities"], 0)
        self.assertEqual(self.row(r, "bot-model-high")["unchanged"]["entities"], 3)
        self.assertEqual(r["totals"]["newly"]["entities"], 4)
        self.assertEqual(r["totals"]["no_longer"]["entities"], 0)
        self.assertEqual(r["version"], 0)  # an unpublished candidate
        # No side effects.
        self.assertEqual(self.q.request("GET", "/readyz", auth=False)[1]["seq"], seq)
        self.assertEqual(self.q.request("GET", "/v1/check?entity=user:bt-lo-0")[1]["verdict"],
                         "allow")

    def test_removed_policy(self):
        s, r, _ = self.backtest(self.removed(), samples=2)
        self.assertEqual(s, 200, r)
        gone = self.row(r, "bot-model-high")
        self.assertEqual(gone["mode"], "absent")
        self.assertEqual(gone["matched"], 0)
        self.assertEqual(gone["no_longer"]["entities"], 3)
        self.assertEqual(gone["no_longer"]["decisions"], 3)
        self.assertEqual(len(gone["no_longer"]["samples"]), 2)
        self.assertEqual(r["totals"]["no_longer"]["entities"], 3)
        self.assertEqual(r["totals"]["newly"]["entities"], 0)
        self.assertEqual(self.row(r, "bot-model-medium")["unchanged"]["entities"], 2)

    def test_cli_reads_the_data_directory_of_a_running_server(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(self.lowered())
        try:
            code, out, err = run_cli("policy", "backtest", f.name, "--from", self.from_,
                                     "--to", self.to, "--data", self.q.data, "--json")
            self.assertEqual(code, 0, err)
            r = json.loads(out)
            self.assertEqual(r["detections"], 10)
            self.assertEqual(self.row(r, "bot-model-medium")["newly"]["entities"], 4)
            self.assertIn("replayed 10 detections", err)
            code, out, err = run_cli("policy", "backtest", f.name, "--from", self.from_,
                                     "--to", self.to, "--data", self.q.data)
            self.assertEqual(code, 0, err)
            self.assertIn("bot-model-medium", out)
            self.assertRegex(out, r"TOTAL.*\s4 \(4\)")
            # Bad usage: exit 2.
            code, _, err = run_cli("policy", "backtest", f.name, "--data", self.q.data,
                                   check=False)
            self.assertEqual(code, 2, err)
            code, _, err = run_cli("policy", "backtest", f.name, "--from", self.to, "--to",
                                   self.from_, "--data", self.q.data, check=False)
            self.assertEqual(code, 2, err)
            # No store there: exit 1.
            with tempfile.TemporaryDirectory() as empty:
                code, _, err = run_cli("policy", "backtest", f.name, "--from", self.from_,
                                       "--to", self.to, "--data", empty, check=False)
                self.assertEqual(code, 1, err)
        finally:
            os.unlink(f.name)

    def test_bad_requests(self):
        s, e, _ = self.q.request("POST", "/v1/policies/backtest", {"from": self.from_})
        self.assertEqual(s, 400, e)
        self.assertIn("to", [d["field"] for d in e["error"]["details"]])
        s, e, _ = self.q.request("POST", "/v1/policies/backtest", {})
        self.assertEqual(s, 400, e)
        s, e, _ = self.backtest(**{"from": ts(NOW - datetime.timedelta(days=32))})
        self.assertEqual(s, 400, e)
        self.assertIn("31d", e["error"]["details"][0]["message"])
        s, e, _ = self.backtest(**{"from": self.to, "to": self.from_})
        self.assertEqual(s, 400, e)
        s, e, _ = self.backtest(**{"from": "yesterday"})
        self.assertEqual(s, 400, e)
        s, e, _ = self.backtest(self.yaml.replace("detection.score >= 0.9", "detection.scor >= 0.9", 1))
        self.assertEqual(s, 400, e)
        self.assertTrue(all(":" in d["field"] for d in e["error"]["details"]))
        s, e, _ = self.backtest(colour="red")
        self.assertEqual(s, 400, e)
        # Any key that may read may backtest; detector keys may not.
        viewer = self.q.create_key("viewer")
        self.assertEqual(self.q.request("POST", "/v1/policies/backtest",
                                        {"from": self.from_, "to": self.to}, key=viewer)[0], 200)
        detector = self.q.create_key("detector", "bot-model-v3")
        self.assertEqual(self.q.request("POST", "/v1/policies/backtest",
                                        {"from": self.from_, "to": self.to}, key=detector)[0], 403)


class RetentionConfigTest(unittest.TestCase):
    def test_retention_key_is_accepted_and_checked(self):
        with tempfile.TemporaryDirectory() as d:
            good = os.path.join(d, "good.yaml")
            with open(good, "w") as f:
                f.write("detections: {retention: 7d}\n")
            q = QuellServer(extra_args=["--config", good])
            try:
                q.start()
                self.assertEqual(q.request("GET", "/readyz", auth=False)[0], 200)
            finally:
                q.cleanup()
            bad = os.path.join(d, "bad.yaml")
            with open(bad, "w") as f:
                f.write("detections: {retention: forever}\n")
            code, _, err = run_cli("serve", "--config", bad, "--data", d, check=False)
            self.assertNotEqual(code, 0)
            self.assertIn("detections.retention", err)


if __name__ == "__main__":
    unittest.main()
