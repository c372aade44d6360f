"""gRPC (Enforcement.Check, Enforcement.Watch, Detections.Submit) against the real
`quell serve --grpc-listen`, from an independent client: Python's grpcio with stubs
generated at test time from proto/quell/v1 by grpc_tools.protoc. Also the C++ mirror
(quell::client::Client through quell_mirror_tool) against the real server across a
restart: it must equal the server's snapshot, with no gap and no duplicate.
"""
import importlib
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness
from harness import QuellServer, free_port

try:
    import grpc  # noqa: F401
except ImportError:  # Debian's python3-grpcio, when another interpreter runs the tests
    sys.path.append("/usr/lib/python3/dist-packages")
try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest("python3-grpcio / python3-grpc-tools not installed: %s" % e)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
PROTO_DIR = os.path.join(ROOT, "proto")
MIRROR_TOOL = os.environ.get("QUELL_MIRROR_TOOL") or os.path.join(
    os.path.dirname(harness.QUELL), "quell_mirror_tool")

_gen = tempfile.TemporaryDirectory(prefix="quell-grpc-stubs-")


def _generate_stubs():
    protos = [os.path.join(PROTO_DIR, "quell", "v1", n) for n in ("enforcement.proto",
                                                                   "detections.proto")]
    includes = ["-I" + PROTO_DIR]
    if os.path.isdir("/usr/include/google/protobuf"):
        includes.append("-I/usr/include")  # well-known types (timestamp, struct)
    rc = protoc.main(["grpc_tools.protoc", *includes, "--python_out=" + _gen.name,
                      "--grpc_python_out=" + _gen.name, *protos])
    if rc != 0:
        raise AssertionError("grpc_tools.protoc failed with %d" % rc)
    sys.path.insert(0, _gen.name)
    return (importlib.import_module("quell.v1.enforcement_pb2"),
            importlib.import_module("quell.v1.enforcement_pb2_grpc"),
            importlib.import_module("quell.v1.detections_pb2"),
            importlib.import_module("quell.v1.detections_pb2_grpc"))


pb, pb_grpc, det_pb, det_grpc = _generate_stubs()


class GrpcTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.grpc_port = free_port()
        cls.q = QuellServer(extra_args=["--grpc-listen", "127.0.0.1:%d" % cls.grpc_port]).start()
        cls.enforcer = cls.q.create_key("enforcer")
        cls.detector = cls.q.create_key("detector", "d1")
        cls.channel = grpc.insecure_channel("127.0.0.1:%d" % cls.grpc_port)
        grpc.channel_ready_future(cls.channel).result(timeout=30)
        cls.stub = pb_grpc.EnforcementStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.q.stop()
        cls.q.cleanup()

    def md(self, key=None):
        return (("authorization", "Bearer " + (key or self.enforcer)),)

    def create(self, entity, action="block"):
        status, m, _ = self.q.request("POST", "/v1/mitigations",
                                      {"entity": entity, "action": action, "ttl": "1h",
                                       "reason": "grpc test"})
        self.assertIn(status, (200, 201), m)
        return m

    def revoke(self, mid):
        status, m, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % mid, {"reason": "t"})
        self.assertEqual(status, 200, m)
        return m

    def test_check_matches_http(self):
        m = self.create("user:grpc-check-1", "challenge")
        self.create("cidr:10.77.0.0/16", "block")
        r = self.stub.Check(pb.CheckRequest(entities=["user:grpc-check-1"]), metadata=self.md(),
                            timeout=10)
        self.assertEqual(r.verdict, pb.VERDICT_CHALLENGE)
        self.assertEqual([x.id for x in r.mitigations], [m["id"]])
        self.assertEqual(r.mitigations[0].action, "challenge")
        self.assertGreaterEqual(r.seq, m["seq"])
        r = self.stub.Check(pb.CheckRequest(entities=["user:grpc-check-1", "ip:10.77.3.4"]),
                            metadata=self.md(), timeout=10)
        self.assertEqual(r.verdict, pb.VERDICT_DENY)
        self.assertEqual(r.mitigations[1].entity, "cidr:10.77.0.0/16")
        # Same answer as the HTTP route.
        _, h, _ = self.q.request("GET", "/v1/check?entity=user:grpc-check-1&entity=ip:10.77.3.4")
        self.assertEqual(h["verdict"], "deny")
        self.assertEqual([x["id"] for x in h["mitigations"]], [x.id for x in r.mitigations])
        self.assertEqual([x["entity"] for x in h["mitigations"]], [x.entity for x in r.mitigations])
        # Nothing applies: allow.
        r = self.stub.Check(pb.CheckRequest(entities=["user:nobody"]), metadata=self.md(),
                            timeout=10)
        self.assertEqual(r.verdict, pb.VERDICT_ALLOW)
        self.assertEqual(len(r.mitigations), 0)

    def test_check_errors(self):
        cases = [
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer k_nope.nope"),), grpc.StatusCode.UNAUTHENTICATED),
            (self.md(self.detector), grpc.StatusCode.PERMISSION_DENIED),
        ]
        for md, code in cases:
            with self.assertRaises(grpc.RpcError) as e:
                self.stub.Check(pb.CheckRequest(entities=["user:a"]), metadata=md, timeout=10)
            self.assertEqual(e.exception.code(), code)
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.Check(pb.CheckRequest(entities=["user:a", "not an entity"]),
                            metadata=self.md(), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("entities[1]", e.exception.details())

    def test_unreadable_requests_do_not_write_the_servers_log(self):
        # A CheckRequest whose entity is not UTF-8, sent as raw bytes: protobuf's parser
        # logged a line to the server's stderr for each one, so any client could flood
        # the log (and the disk under it). The client's INVALID_ARGUMENT is the report.
        raw = self.channel.unary_unary("/quell.v1.Enforcement/Check",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        before = os.path.getsize(self.q.log_path)
        for _ in range(20):
            with self.assertRaises(grpc.RpcError) as e:
                raw(b"\x0a\x06user:\xff", metadata=self.md(), timeout=10)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("not a CheckRequest message", e.exception.details())
        # protobuf wrote its line before the parse returned, so before the answer.
        with open(self.q.log_path, "rb") as log:
            log.seek(before)
            added = log.read().decode(errors="replace")
        self.assertNotIn("UTF-8", added)

    def _stream_count(self, code):
        metrics = self.q.request("GET", "/metrics", auth=False)[1]
        m = re.search(r'quell_grpc_requests_total\{method="quell.v1.Enforcement/CheckStream",'
                      r'code="%s"\} (\d+)' % code, metrics)
        return int(m.group(1)) if m else 0

    def test_a_check_stream_the_client_breaks_counts_as_cancelled(self):
        ok, cancelled = self._stream_count("OK"), self._stream_count("CANCELLED")
        more = threading.Event()

        def requests():  # one request, then the stream stays open until it is cut
            yield pb.CheckRequest(entities=["user:grpc-stream"])
            more.wait(30)

        stream = self.stub.CheckStream(requests(), metadata=self.md(), timeout=30)
        self.assertEqual(next(stream).verdict, pb.VERDICT_ALLOW)
        stream.cancel()  # as a bouncer killed mid-stream
        more.set()
        deadline = time.time() + 10  # counted once the server's call is done
        while self._stream_count("CANCELLED") == cancelled and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self._stream_count("CANCELLED"), cancelled + 1)
        self.assertEqual(self._stream_count("OK"), ok)
        # One that half-closes ends OK.
        answers = list(self.stub.CheckStream(iter([pb.CheckRequest(entities=["user:a"])]),
                                             metadata=self.md(), timeout=30))
        self.assertEqual(len(answers), 1)
        deadline = time.time() + 10
        while self._stream_count("OK") == ok and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self._stream_count("OK"), ok + 1)

    def test_watch_replays_then_streams(self):
        _, page, _ = self.q.request("GET", "/v1/changes?after=0&limit=10000")
        start = page["next"]
        a = self.create("user:grpc-watch-a")
        stream = self.stub.Watch(pb.WatchRequest(after_seq=start), metadata=self.md(), timeout=30)
        first = next(stream)
        self.assertEqual(first.seq, a["seq"])
        self.assertEqual(first.op, pb.Change.OP_UPSERT)
        self.assertEqual(first.mitigation.id, a["id"])
        self.assertEqual(first.mitigation.entity, "user:grpc-watch-a")
        self.assertEqual(first.mitigation.state, "active")
        # Live changes, in order, as the HTTP feed has them.
        b = self.create("user:grpc-watch-b")
        self.revoke(a["id"])
        got = [next(stream), next(stream)]
        stream.cancel()
        self.assertEqual([c.mitigation.id for c in got], [b["id"], a["id"]])
        self.assertEqual([c.op for c in got], [pb.Change.OP_UPSERT, pb.Change.OP_DELETE])
        _, feed, _ = self.q.request("GET", "/v1/changes?after=%d&limit=3" % start)
        self.assertEqual([(c["seq"], c["op"], c["mitigation"]["id"]) for c in feed["changes"]],
                         [(c.seq, "upsert" if c.op == pb.Change.OP_UPSERT else "delete",
                           c.mitigation.id) for c in [first] + got])

    def test_watch_deadline_and_auth(self):
        head = self.q.request("GET", "/readyz", auth=False)[1]["seq"]
        stream = self.stub.Watch(pb.WatchRequest(after_seq=head), metadata=self.md(),
                                 timeout=0.5)
        with self.assertRaises(grpc.RpcError) as e:
            list(stream)
        self.assertEqual(e.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        # A cursor past the last change is from another ledger: refused at once, not waited on.
        with self.assertRaises(grpc.RpcError) as e:
            list(self.stub.Watch(pb.WatchRequest(after_seq=head + 10 ** 6), metadata=self.md(),
                                 timeout=30))
        self.assertEqual(e.exception.code(), grpc.StatusCode.OUT_OF_RANGE)
        self.assertIn("after_seq=%d is past the ledger's last change" % (head + 10 ** 6),
                      e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            list(self.stub.Watch(pb.WatchRequest(), timeout=10))
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        with self.assertRaises(grpc.RpcError) as e:
            list(self.stub.Watch(pb.WatchRequest(after_seq=-1), metadata=self.md(), timeout=10))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_submit_needs_a_key_that_may_submit(self):
        stub = det_grpc.DetectionsStub(self.channel)
        item = det_pb.Detection(id="1", source="d1", type="t", entity="user:a", score=0.5)
        for md, code in [((), grpc.StatusCode.UNAUTHENTICATED),
                         (self.md(), grpc.StatusCode.PERMISSION_DENIED)]:  # an enforcer key
            with self.assertRaises(grpc.RpcError) as e:
                stub.Submit(iter([item]), metadata=md, timeout=10)
            self.assertEqual(e.exception.code(), code)


EXAMPLES = os.path.join(ROOT, "examples")


def _detection(id, entity, source="bot-model-v3", score=0.97, **kw):
    d = det_pb.Detection(id=id, source=source, type="artificial_streaming", entity=entity,
                         score=score, **kw)
    d.observed_at.GetCurrentTime()
    return d


class GrpcSubmitTest(unittest.TestCase):
    """Detections.Submit with the example policy set: the same decisions, errors and
    idempotency as POST /v1/detections, enforced as soon as answered."""

    @classmethod
    def setUpClass(cls):
        cls.grpc_port = free_port()
        cls.q = QuellServer(extra_args=["--config", os.path.join(EXAMPLES, "quell.yaml"),
                                        "--grpc-listen", "127.0.0.1:%d" % cls.grpc_port]).start()
        cls.detector = cls.q.create_key("detector", "bot-model-v3")
        cls.enforcer = cls.q.create_key("enforcer")
        cls.channel = grpc.insecure_channel("127.0.0.1:%d" % cls.grpc_port)
        grpc.channel_ready_future(cls.channel).result(timeout=30)
        cls.det = det_grpc.DetectionsStub(cls.channel)
        cls.enf = pb_grpc.EnforcementStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.q.stop()
        cls.q.cleanup()

    def submit(self, items, key=None):
        return self.det.Submit(iter(items), timeout=30,
                               metadata=(("authorization", "Bearer " + (key or self.detector)),))

    def test_submit_then_check_sees_the_mitigation(self):
        d = _detection("gs-1", "user:grpc-bot")
        d.evidence.update({"plays": 1200, "model": "v3"})
        r = self.submit([d])
        self.assertEqual(len(r.results), 1)
        res = r.results[0]
        self.assertEqual(res.status, det_pb.DetectionResult.STATUS_ACCEPTED, res.error)
        self.assertEqual([(x.action, x.state, x.policy, x.entity) for x in res.decisions],
                         [("exclude_royalties", "active", "bot-model-high", "user:grpc-bot")])
        mid = res.decisions[0].mitigation_id
        # Enforced as soon as answered: gRPC Check (payout surface) and HTTP agree.
        c = self.enf.Check(pb.CheckRequest(entities=["user:grpc-bot"], surface="payout"),
                           metadata=(("authorization", "Bearer " + self.enforcer),), timeout=10)
        self.assertEqual([m.id for m in c.mitigations], [mid])
        self.assertEqual(c.mitigations[0].action, "exclude_royalties")
        _, page, _ = self.q.request("GET", "/v1/mitigations?entity=user:grpc-bot")
        self.assertEqual([m["id"] for m in page["mitigations"]], [mid])
        self.assertEqual(page["mitigations"][0]["source"], "bot-model-v3")
        # A resend is a duplicate with the original decisions; nothing changes.
        seq = self.q.request("GET", "/readyz", auth=False)[1]["seq"]
        r2 = self.submit([d])
        self.assertEqual(r2.results[0].status, det_pb.DetectionResult.STATUS_DUPLICATE)
        self.assertEqual([x.mitigation_id for x in r2.results[0].decisions], [mid])
        self.assertEqual(self.q.request("GET", "/readyz", auth=False)[1]["seq"], seq)
        # The same id over HTTP is the same detection.
        s, h, _ = self.q.request("POST", "/v1/detections", {
            "id": "gs-1", "source": "bot-model-v3", "type": "artificial_streaming",
            "entity": "user:grpc-bot", "score": 0.97, "observed_at": "2020-01-01T00:00:00Z"})
        self.assertEqual(h["results"][0]["status"], "duplicate")
        metrics = self.q.request("GET", "/metrics", auth=False)[1]
        self.assertRegex(metrics, r'quell_detections_total\{origin="api",status="duplicate"\} [1-9]')

    def test_bad_items_get_the_http_errors(self):
        bad_score = _detection("gb-2", "user:gb2", score=1.5)
        bad_type = _detection("gb-3", "user:gb3")
        bad_type.type = "artifical_streaming"
        no_time = det_pb.Detection(id="gb-4", source="bot-model-v3", type="artificial_streaming",
                                   entity="user:gb4", score=0.97)
        r = self.submit([_detection("gb-1", "user:gb1"), bad_score, bad_type, no_time])
        self.assertEqual([x.status for x in r.results],
                         [det_pb.DetectionResult.STATUS_ACCEPTED] +
                         [det_pb.DetectionResult.STATUS_REJECTED] * 3)
        self.assertEqual(r.results[1].error, "score: must be between 0 and 1")
        self.assertIn("type: unknown detection type", r.results[2].error)
        self.assertTrue(r.results[3].error.startswith("observed_at: "), r.results[3].error)
        # Word for word what HTTP answers for the same item.
        s, h, _ = self.q.request("POST", "/v1/detections", {
            "id": "gb-2h", "source": "bot-model-v3", "type": "artificial_streaming",
            "entity": "user:gb2", "score": 1.5, "observed_at": "2020-01-01T00:00:00Z"})
        self.assertEqual(s, 400)
        e = h["results"][0]["error"]
        self.assertEqual(r.results[1].error,
                         "; ".join("%s: %s" % (x["field"], x["message"]) for x in e["details"]))
        # Only the good item was applied.
        c = self.enf.Check(pb.CheckRequest(entities=["user:gb1", "user:gb2", "user:gb3"],
                                           surface="payout"),
                           metadata=(("authorization", "Bearer " + self.enforcer),), timeout=10)
        self.assertEqual([m.entity for m in c.mitigations], ["user:gb1"])

    def test_foreign_source_refuses_the_stream(self):
        seq = self.q.request("GET", "/readyz", auth=False)[1]["seq"]
        with self.assertRaises(grpc.RpcError) as e:
            self.submit([_detection("gf-1", "user:gf1"),
                         _detection("gf-2", "user:gf2", source="someone-else")])
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("someone-else", e.exception.details())
        self.assertEqual(self.q.request("GET", "/readyz", auth=False)[1]["seq"], seq)


class Mirror:
    """quell_mirror_tool: a quell::client::Client driven over stdin."""

    def __init__(self, url, key):
        self.proc = subprocess.Popen([MIRROR_TOOL, "--url", url, "--key", key],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if line == "":
                raise AssertionError("quell_mirror_tool exited")
            line = line.rstrip("\n")
            if line == ".":
                return lines
            lines.append(line)

    def stats(self):
        return dict(kv.split("=", 1) for kv in self.ask("stats")[0].split())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@unittest.skipUnless(os.path.exists(MIRROR_TOOL), "quell_mirror_tool not built")
class MirrorTest(unittest.TestCase):
    def setUp(self):
        self.port = free_port()
        self.q = QuellServer()
        self._start()
        self.key = self.q.create_key("enforcer")

    def tearDown(self):
        self.q.stop()
        self.q.cleanup()

    def _start(self):
        # The same port across restarts: the mirror reconnects to its configured URL.
        saved = harness.free_port
        harness.free_port = lambda: self.port
        try:
            self.q.start()
        finally:
            harness.free_port = saved

    def workload(self, rng, live, n):
        for i in range(n):
            if live and rng.random() < 0.35:
                mid = live.pop(rng.randrange(len(live)))
                status, _, _ = self.q.request("POST", "/v1/mitigations/%s/revoke" % mid,
                                              {"reason": "random"})
                self.assertEqual(status, 200)
            else:
                kind = rng.choice(["user:u%d" % rng.randrange(60), "ip:10.0.%d.%d" % (
                    rng.randrange(4), rng.randrange(256)), "cidr:10.%d.0.0/16" % rng.randrange(8)])
                status, m, _ = self.q.request("POST", "/v1/mitigations", {
                    "entity": kind, "action": rng.choice(["block", "challenge", "throttle", "flag"]),
                    "ttl": "%dh" % rng.randrange(1, 48), "reason": "random"})
                self.assertIn(status, (200, 201), m)
                if m["id"] not in live:  # the same entity and action extend the live one
                    live.append(m["id"])

    def server_view(self):
        status, text, _ = self.q.request("GET", "/v1/snapshot")
        self.assertEqual(status, 200)
        lines = text.strip().split("\n")
        seq = int(lines[0].split(":")[1].rstrip("}"))
        import json
        items = []
        for line in lines[1:]:
            m = json.loads(line)
            items.append("%s %s %s" % (m["id"], m["entity"], m["action"]))
        return seq, sorted(items)

    def mirror_view(self, mirror):
        return sorted(" ".join(l.split(" ")[:3]) for l in mirror.ask("dump"))

    def test_mirror_equals_server_across_a_restart(self):
        rng = random.Random(int(os.environ.get("QUELL_TEST_SEED", "6")))
        live = []
        self.workload(rng, live, 40)  # before the mirror starts: in its snapshot
        mirror = Mirror("http://127.0.0.1:%d" % self.port, self.key)
        try:
            self.assertEqual(mirror.ask("synced 30"), ["ok"])
            self.workload(rng, live, 80)  # followed live
            self.q.stop()                 # the mirror loses its long-poll and backs off
            time.sleep(0.3)
            self._start()
            self.workload(rng, live, 80)  # after the restart
            seq, server = self.server_view()
            self.assertEqual(mirror.ask("wait %d 30" % seq), ["ok"])
            self.assertEqual(self.mirror_view(mirror), server)
            stats = mirror.stats()
            self.assertEqual(stats["stale_changes"], "0")   # no duplicate, no reordering
            self.assertEqual(stats["snapshots"], "1")       # resumed from its seq, no reload
            self.assertGreaterEqual(int(stats["reconnects"]), 1)
            self.assertEqual(int(stats["size"]), len(server))
            # Checks answered by the mirror agree with the server's.
            for entity in ["user:u%d" % i for i in range(60)] + ["ip:10.3.7.9", "ip:10.0.1.1"]:
                _, h, _ = self.q.request("GET", "/v1/check?entity=" + entity, key=self.key)
                self.assertEqual(mirror.ask("check " + entity), [h["verdict"]], entity)
        finally:
            mirror.close()


if __name__ == "__main__":
    unittest.main()
