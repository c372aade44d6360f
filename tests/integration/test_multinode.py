"""Several Quell nodes on one PostgreSQL (issue 8): three `quell serve --postgres`
processes on a throwaway cluster (the same helper the C++ PostgreSQL tests use,
quell_pg_test_cluster), concurrent writers on all of them, then every node's index
(`check`) and snapshot equal the database's active set; a write on node A is seen by
`check` on node C; kill -9 of one node under load loses no acknowledged write; the
expiry lease moves to a survivor when its holder is killed, which then expires;
PostgreSQL stopped and restarted: `check` keeps answering, writes get 503 + Retry-After,
then succeed, and every feed catches up. Webhooks: a subscription made on any node is
delivered by the "webhooks" lease holder only, each change once while every node lives,
and after kill -9 of the holder a survivor resumes from the shared cursor (at least
once). Redis shared by three nodes: counters add up across nodes, fail_open/fail_closed
while Redis is down, and counting resumes by itself on every node when it is back.

Propagation A -> C is printed (percentiles), never asserted. QUELL_PROPAGATION_WRITES
(default 200) and QUELL_PROPAGATION_RATE (writes/s of background load on all three
nodes, default 0) make it a benchmark, as QUELL_MULTINODE_WRITERS (per node, default 4)
and QUELL_MULTINODE_WRITES (per writer, default 60) do for the concurrent-writers test:
see docs/benchmarks.md, issue 8.
"""
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import subprocess
import threading
import time
import unittest

from harness import QUELL, QuellServer, run_cli
from test_events import RedisServer, config_file, now, rule_detections, ts
from test_webhooks import Receiver, wait_for

CLUSTER_BIN = os.environ.get("QUELL_PG_CLUSTER_BIN") or os.path.join(
    os.path.dirname(QUELL), "src", "ledger", "postgres", "quell_pg_test_cluster")

# Bounds for waiting on convergence: they stop a hung test, they are not timing checks.
CONVERGE_SECONDS = 120
HAPROXY_CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                           "haproxy", "haproxy.cfg")


class PgCluster:
    """A throwaway PostgreSQL 15 cluster, driven through quell_pg_test_cluster."""

    def __init__(self):
        self.proc = subprocess.Popen([CLUSTER_BIN], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("url "):
            self.proc.wait(30)
            raise AssertionError("quell_pg_test_cluster: %r" % line)
        self.first_url = line[4:]
        self._used_first = False

    def _command(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ok"):
            raise AssertionError("quell_pg_test_cluster %s: %r" % (cmd, line))
        return line[3:]

    def stop(self):
        self._command("stop")

    def restart(self):
        self._command("restart")

    def new_database(self):
        if not self._used_first:
            self._used_first = True
            return self.first_url
        return self._command("newdb")

    def close(self):
        self.proc.stdin.close()  # the tool stops the cluster and removes its files
        self.proc.wait(60)


def psql(url, sql):
    p = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", url,
                        "-c", sql], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("psql failed: %s" % p.stderr)
    return [l for l in p.stdout.splitlines() if l]


def db_active(url):
    """{id: entity} of every active mitigation."""
    rows = psql(url, "SELECT id || ' ' || entity FROM mitigations WHERE state = 'active'")
    return dict(r.split(" ", 1) for r in rows)


def db_last_seq(url):
    return int(psql(url, "SELECT seq FROM chain_head WHERE id = 1")[0])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node(QuellServer):
    def __init__(self, url, key, env=None, extra_args=(), data_dir=None):
        super().__init__(data_dir=data_dir, extra_args=["--postgres", url, *extra_args], env=env)
        self.key = key

    def start_node(self):
        self.start(dev=False)
        self.admin_key = self.key
        return self

    def index_seq(self):
        status, body, _ = self.request("GET", "/v1/check?entity=user:nobody")
        assert status == 200, body
        return body["seq"]

    def index_ids(self, entities):
        """The ids `check` returns for `entities` (100 per request): this node's index."""
        ids = set()
        conn = self.connection()
        try:
            for i in range(0, len(entities), 100):
                status, body, _ = self.request(
                    "POST", "/v1/check", {"entities": entities[i:i + 100]}, conn=conn)
                assert status == 200, body
                ids.update(m["id"] for m in body["mitigations"])
        finally:
            conn.close()
        return ids

    def snapshot_ids(self):
        status, text, _ = self.request("GET", "/v1/snapshot", raw=True)
        assert status == 200, text
        lines = [json.loads(l) for l in text.splitlines() if l]
        assert "seq" in lines[0] and "error" not in lines[-1], lines[-1]
        return {m["id"] for m in lines[1:]}


class Writers:
    """Threads creating mitigations (and revoking some, on another node) until stopped.
    Records what was acknowledged: created[entity] = id, revoked = {id}."""

    def __init__(self, nodes, per_node, limit=None, tag="w", rate=None):
        self.nodes = nodes
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.created = {}
        self.revoked = set()
        self.revoke_tried = set()
        self.errors_by_node = [0] * len(nodes)
        self.acks_by_node = [0] * len(nodes)
        self.threads = []
        for n in range(len(nodes)):
            for w in range(per_node):
                t = threading.Thread(target=self._run, args=(n, w, limit, tag, rate), daemon=True)
                self.threads.append(t)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self, stop=True):
        """Stops the writers (or with stop=False, waits for their `limit`)."""
        if stop:
            self.stop.set()
        for t in self.threads:
            t.join(600)

    def _post(self, node, conns, n, path, body):
        try:
            if conns.get(n) is None:
                conns[n] = node.connection()
            return node.request("POST", path, body, conn=conns[n])
        except Exception:
            if conns.get(n) is not None:
                conns[n].close()
            conns[n] = None
            return None, None, None

    def _run(self, n, w, limit, tag, rate):
        conns = {}
        try:
            self._write(n, w, limit, tag, rate, conns)
        finally:
            for c in conns.values():
                if c is not None:
                    c.close()

    def _write(self, n, w, limit, tag, rate, conns):
        node = self.nodes[n]
        other = (n + 1) % len(self.nodes)
        i = 0
        next_at = time.time()
        while not self.stop.is_set() and (limit is None or i < limit):
            if rate:
                next_at += 1.0 / rate
                time.sleep(max(0.0, next_at - time.time()))
            entity = "user:%s-n%d-w%d-%d" % (tag, n, w, i)
            i += 1
            status, body, _ = self._post(node, conns, n, "/v1/mitigations",
                                         {"entity": entity, "action": "block", "ttl": "1d",
                                          "reason": "multinode"})
            if status != 201:
                with self.lock:
                    self.errors_by_node[n] += 1
                if status is None:
                    time.sleep(0.05)
                continue
            with self.lock:
                self.created[entity] = body["id"]
                self.acks_by_node[n] += 1
            if i % 5 == 0:  # revoke one in five through the next node
                with self.lock:
                    self.revoke_tried.add(body["id"])
                status, _, _ = self._post(self.nodes[other], conns, other,
                                          "/v1/mitigations/%s/revoke" % body["id"],
                                          {"reason": "multinode"})
                if status == 200:
                    with self.lock:
                        self.revoked.add(body["id"])


class WithCluster(unittest.TestCase):
    """One throwaway PostgreSQL cluster per class (self.cluster)."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()


class ReadCommandsTest(WithCluster):
    """The commands that read what is there, pointed at a database without a ledger."""

    def test_they_refuse_a_database_without_a_ledger_and_create_nothing(self):
        # audit verify, keys list and keys revoke created Quell's twelve tables in a
        # mistyped (another application's) database and reported "ok: 0 changes".
        url = self.cluster.new_database()
        psql(url, "CREATE TABLE app_users (id int)")
        for args in (["audit", "verify"], ["keys", "list"], ["keys", "revoke", "k_x"]):
            code, out, err = run_cli(*args, "--postgres", url, check=False)
            self.assertEqual(code, 1, out + err)
            self.assertIn("no Quell ledger in this database", err)
        self.assertEqual(psql(url, "SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = 'public'"), ["app_users"])
        # Another tool's (or a failed first start's) schema_version without a version is
        # no ledger either.
        psql(url, "CREATE TABLE schema_version (version integer PRIMARY KEY, "
                  "applied_at bigint NOT NULL)")
        code, out, err = run_cli("audit", "verify", "--postgres", url, check=False)
        self.assertEqual(code, 1, out + err)
        self.assertIn("no Quell ledger in this database", err)
        psql(url, "DROP TABLE schema_version")
        # migrate makes one; then they read it.
        run_cli("migrate", "--postgres", url)
        code, out, err = run_cli("audit", "verify", "--postgres", url, check=False)
        self.assertEqual(code, 0, out + err)
        # The database named by a configuration file's postgres: (it was an unknown key).
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as cfg:
            cfg.write("postgres: '%s'\n" % url)
            cfg.flush()
            code, out, err = run_cli("keys", "create", "--role", "viewer", "--config", cfg.name,
                                     check=False)
            self.assertEqual(code, 0, err)
            code, out, err = run_cli("keys", "list", "--config", cfg.name, check=False)
            self.assertEqual(code, 0, err)
            self.assertIn("viewer", out)
            # With an explicit --data too, which ledger was meant is not guessed.
            code, out, err = run_cli("audit", "verify", "--config", cfg.name, "--data",
                                     "/tmp/some-backup", check=False)
            self.assertEqual(code, 2, out + err)
            self.assertIn("both name a ledger", err)
        self.assertEqual(psql(url, "SELECT count(*) FROM api_keys WHERE role = 'viewer'"), ["1"])


class PolicyBacktestTest(WithCluster):
    def test_the_cli_backtests_a_postgres_ledger_as_the_route_does(self):
        # `policy backtest` read only a data directory: a PostgreSQL deployment could
        # backtest only through a running node.
        url = self.cluster.new_database()
        run_cli("migrate", "--postgres", url)
        key = run_cli("keys", "create", "--role", "admin", "--postgres", url)[1].strip()
        node = Node(url, key)
        self.addCleanup(node.cleanup)
        node.start_node()
        at = now()
        items = [{"id": "pb-%d" % i, "source": "bot-model-v3", "type": "artificial_streaming",
                  "entity": "user:pb-%d" % (i % 4), "score": [0.95, 0.8, 0.6][i % 3],
                  "observed_at": ts(at - datetime.timedelta(seconds=60 - i))}
                 for i in range(9)]
        status, body, _ = node.request("POST", "/v1/detections", {"detections": items})
        self.assertEqual(status, 200, body)
        policies = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "examples", "policies", "music.yaml")
        with open(policies) as f:
            yaml = f.read()
        window = {"from": ts(at - datetime.timedelta(minutes=2)),
                  "to": ts(at + datetime.timedelta(seconds=1))}
        status, want, _ = node.request("POST", "/v1/policies/backtest",
                                       dict(window, policy_set=yaml))
        self.assertEqual(status, 200, want)
        self.assertEqual(want["detections"], 9)
        code, out, err = run_cli("policy", "backtest", policies, "--from", window["from"],
                                 "--to", window["to"], "--postgres", url, "--json",
                                 check=False)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), want)  # the CLI reported the candidate as v1
        # QUELL_POSTGRES names it too; with --data as well (flag or environment), which
        # ledger was meant is not guessed.
        code, out, err = run_cli("policy", "backtest", policies, "--from", window["from"],
                                 "--to", window["to"], "--json", check=False,
                                 env=dict(os.environ, QUELL_POSTGRES=url))
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), want)
        code, _, err = run_cli("policy", "backtest", policies, "--from", window["from"],
                               "--to", window["to"], "--postgres", url, "--data", "/tmp/x",
                               check=False)
        self.assertEqual(code, 2, err)
        self.assertIn("both name a ledger", err)
        code, _, err = run_cli("policy", "backtest", policies, "--from", window["from"],
                               "--to", window["to"], "--data", "/tmp/x", check=False,
                               env=dict(os.environ, QUELL_POSTGRES=url))
        self.assertEqual(code, 2, err)
        self.assertIn("--data and QUELL_POSTGRES both name a ledger", err)
        # A database without a ledger is refused, and left without one.
        other = self.cluster.new_database()
        code, _, err = run_cli("policy", "backtest", policies, "--from", window["from"],
                               "--to", window["to"], "--postgres", other, check=False)
        self.assertEqual(code, 1, err)
        self.assertIn("no Quell ledger in this database", err)
        self.assertEqual(psql(other, "SELECT count(*) FROM information_schema.tables "
                                     "WHERE table_schema = 'public'"), ["0"])


class ImportDryRunTest(WithCluster):
    def test_the_impact_preview_reads_a_postgres_ledger_and_writes_nothing(self):
        # `quell import --dry-run` read only a data directory: a PostgreSQL deployment had
        # no impact preview. And with QUELL_POSTGRES set, an import wrote ./var.
        url = self.cluster.new_database()
        run_cli("migrate", "--postgres", url)
        key = run_cli("keys", "create", "--role", "admin", "--postgres", url)[1].strip()
        config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                              "examples", "quell.yaml")
        node = Node(url, key, extra_args=["--config", config])
        self.addCleanup(node.cleanup)
        node.start_node()

        def det(i, entity):
            return {"id": "dr-%d" % i, "source": "bot-model-v3", "type": "artificial_streaming",
                    "entity": entity, "score": 0.97,
                    "observed_at": ts(now() - datetime.timedelta(minutes=5))}
        status, body, _ = node.request("POST", "/v1/detections", {"detections": [det(0, "user:dr-old")]})
        self.assertEqual(status, 200, body)
        self.assertEqual(len(db_active(url)), 1)
        tmp = tempfile.TemporaryDirectory(prefix="quell-pg-dry-")
        self.addCleanup(tmp.cleanup)
        rows = os.path.join(tmp.name, "rows.ndjson")
        with open(rows, "w") as f:
            f.write(json.dumps(det(0, "user:dr-old")) + "\n")  # stored already: a duplicate
            f.write(json.dumps(det(1, "user:dr-old")) + "\n")  # already mitigated
            for i in range(2, 7):
                f.write(json.dumps(det(i, "user:dr-new%d" % i)) + "\n")
        last = db_last_seq(url)

        def dry_run(*args, env=None, cwd=None):
            p = subprocess.run([QUELL, "import", rows, "--dry-run", *args], capture_output=True,
                               text=True, timeout=60, env=env, cwd=cwd)
            return p.returncode, p.stdout, p.stderr

        code, out, err = dry_run("--postgres", url, "--json")
        self.assertEqual(code, 0, err)
        report = json.loads(out)["dry_run"]
        self.assertEqual(report["seq"], last, report)
        self.assertEqual(report["policy_version"], 1, report)
        self.assertEqual((report["rows"], report["duplicates"], report["already"]), (7, 1, 1), report)
        self.assertEqual(report["new"]["by_action"], {"exclude_royalties": 5}, report)
        self.assertEqual(db_last_seq(url), last)
        # QUELL_POSTGRES names it as well, and the text report says so too.
        env = dict(os.environ, QUELL_POSTGRES=url)
        code, out, err = dry_run(env=env)
        self.assertEqual(code, 0, err)
        self.assertIn("would newly mitigate: 5", out)
        self.assertIn("already mitigated:    1", out)
        # --data with either names two ledgers.
        code, _, err = dry_run("--postgres", url, "--data", tmp.name)
        self.assertEqual((code, "--data and --postgres both name a ledger" in err), (2, True), err)
        code, _, err = dry_run("--data", tmp.name, env=env)
        self.assertEqual((code, "--data and QUELL_POSTGRES both name a ledger" in err), (2, True),
                         err)
        # An import is not written around the node: refused, and ./var not made.
        for args, env_ in ((["--postgres", url], None), ([], env)):
            p = subprocess.run([QUELL, "import", rows, *args], capture_output=True, text=True,
                               timeout=60, env=env_, cwd=tmp.name)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("through a node (--server URL --key KEY)", p.stderr)
            self.assertFalse(os.path.exists(os.path.join(tmp.name, "var")))
        self.assertEqual(db_last_seq(url), last)
        # A database without a ledger is refused, and left without one.
        other = self.cluster.new_database()
        code, out, err = dry_run("--postgres", other, "--json")
        self.assertEqual(code, 1, err)
        self.assertIn("no Quell ledger in this database", err)
        self.assertEqual(psql(other, "SELECT count(*) FROM information_schema.tables "
                                     "WHERE table_schema = 'public'"), ["0"])


class ThreeNodes(WithCluster):
    """Per test a fresh database, migrated, an admin key, and three started nodes on it
    (self.nodes), stopped at cleanup."""

    def setUp(self):
        self.url = self.cluster.new_database()
        run_cli("migrate", "--postgres", self.url)
        self.key = run_cli("keys", "create", "--role", "admin", "--postgres", self.url)[1].strip()
        self.nodes = [Node(self.url, self.key) for _ in range(3)]
        for n in self.nodes:
            self.addCleanup(n.cleanup)
            n.start_node()


class MultiNodeTest(ThreeNodes):

    def wait_converged(self, nodes):
        """Waits until every node's index is at the database's last seq; returns it."""
        last = db_last_seq(self.url)
        deadline = time.time() + CONVERGE_SECONDS
        for n in nodes:
            while n.index_seq() < last:
                self.assertLess(time.time(), deadline, "node on :%d stuck at seq %d < %d" % (
                    n.port, n.index_seq(), last))
                time.sleep(0.05)
        return last

    def assert_every_node_equals_database(self, nodes, writers):
        self.wait_converged(nodes)
        by_id = db_active(self.url)
        active = set(by_id)
        # Every entity written (acknowledged or not: a killed node may have committed
        # writes it never acknowledged) and every entity the database has active.
        entities = sorted(set(writers.created) | set(by_id.values()))
        for n in nodes:
            self.assertEqual(n.snapshot_ids(), active, "snapshot of :%d" % n.port)
            self.assertEqual(n.index_ids(entities), active, "index (check) of :%d" % n.port)
        return active

    def test_concurrent_writers_on_three_nodes_every_index_equals_the_database(self):
        per_node = int(os.environ.get("QUELL_MULTINODE_WRITERS", "4"))
        limit = int(os.environ.get("QUELL_MULTINODE_WRITES", "60"))  # per writer
        began = time.time()
        w = Writers(self.nodes, per_node=per_node, limit=limit).start()
        w.join(stop=False)
        took = time.time() - began
        print("\n%d creates (+%d revokes) acknowledged by 3 nodes in %.1f s: %.0f writes/s" % (
            len(w.created), len(w.revoked), took, (len(w.created) + len(w.revoked)) / took))
        self.assertEqual(sum(w.errors_by_node), 0)
        self.assertEqual(len(w.created), 3 * per_node * limit)
        self.assertGreater(len(w.revoked), 0)
        active = self.assert_every_node_equals_database(self.nodes, w)
        # Nothing acknowledged is lost, nothing revoked is enforced.
        self.assertEqual(active, set(w.created.values()) - w.revoked)
        # The chain holds every change once: seqs 1..last, no gap (the feed never skips).
        seqs = [int(s) for s in psql(self.url, "SELECT seq FROM changes ORDER BY seq")]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        code, out, _ = run_cli("audit", "verify", "--postgres", self.url)
        self.assertIn("ok:", out)

    def test_nodes_sharing_a_working_directory_both_serve(self):
        # On PostgreSQL the --data directory holds nothing of the ledger: a second node
        # started from the same directory (two units on one host, both with the default
        # ./var) was refused as "in use by another quell server or import".
        twin = Node(self.url, self.key, data_dir=self.nodes[0].data)
        self.addCleanup(twin.cleanup)  # its directory is node 0's: not removed
        twin.start_node()
        status, body, _ = twin.request("POST", "/v1/mitigations", {
            "entity": "user:twin", "action": "block", "ttl": "1h", "reason": "twin"})
        self.assertEqual(status, 201, body)
        self.wait_converged([self.nodes[0], twin])
        _, seen, _ = self.nodes[0].request("GET", "/v1/check?entity=user:twin")
        self.assertEqual([m["id"] for m in seen["mitigations"]], [body["id"]])

    def test_a_write_on_node_a_is_seen_by_check_on_node_c(self):
        a, c = self.nodes[0], self.nodes[2]
        count = int(os.environ.get("QUELL_PROPAGATION_WRITES", "200"))
        rate = float(os.environ.get("QUELL_PROPAGATION_RATE", "0"))
        background = None
        if rate > 0:  # load on all three nodes while we measure (8 writers per node)
            background = Writers(self.nodes, per_node=8, tag="bg", rate=rate / 24).start()
        delays = []
        began = time.time()
        conn_a, conn_c = a.connection(), c.connection()
        try:
            for i in range(count):
                entity = "user:prop-%d" % i
                status, body, _ = a.request("POST", "/v1/mitigations",
                                            {"entity": entity, "action": "block", "ttl": "1d",
                                             "reason": "propagation"}, conn=conn_a)
                self.assertEqual(status, 201, body)
                acked = time.time()
                # An acknowledged write is already in the writing node's own index.
                status, mine, _ = a.request("GET", "/v1/check?entity=" + entity, conn=conn_a)
                self.assertEqual([m["id"] for m in mine["mitigations"]], [body["id"]])
                deadline = acked + CONVERGE_SECONDS
                while True:
                    status, seen, _ = c.request("GET", "/v1/check?entity=" + entity, conn=conn_c)
                    self.assertEqual(status, 200, seen)
                    if any(m["id"] == body["id"] for m in seen["mitigations"]):
                        break
                    self.assertLess(time.time(), deadline, "%s never reached node C" % entity)
                    time.sleep(0.0005)
                delays.append(time.time() - acked)
        finally:
            conn_a.close()
            conn_c.close()
            if background:
                background.join()
        delays.sort()

        def pct(p):
            return delays[min(len(delays) - 1, int(p * len(delays)))] * 1000

        bg = ""
        if background:
            bg = ", achieved %.0f/s" % (sum(background.acks_by_node) / (time.time() - began))
        print("\npropagation A->C over %d writes (background %.0f/s requested%s): "
              "p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms" % (
                  count, rate, bg, pct(0.5), pct(0.9), pct(0.99), delays[-1] * 1000))

    def test_kill9_of_one_node_under_load_loses_no_acknowledged_write(self):
        w = Writers(self.nodes, per_node=3).start()
        time.sleep(1.0)  # load before the kill (what is measured is correctness, not time)
        victim = self.nodes[1]
        victim.kill9()
        acks_at_kill = list(w.acks_by_node)
        time.sleep(1.5)
        w.join()
        survivors = [self.nodes[0], self.nodes[2]]
        # The other two kept serving writes after the kill.
        self.assertGreater(w.acks_by_node[0], acks_at_kill[0])
        self.assertGreater(w.acks_by_node[2], acks_at_kill[2])
        active = self.assert_every_node_equals_database(survivors, w)
        # Every acknowledged create is in the database, and active unless revoked.
        stored = set(psql(self.url, "SELECT id FROM mitigations"))
        self.assertEqual(set(w.created.values()) - stored, set())
        self.assertEqual(set(w.created.values()) - w.revoke_tried - active, set())
        self.assertEqual(active & w.revoked, set())
        # The killed node comes back and catches up with what it missed.
        victim.start_node()
        self.assert_every_node_equals_database([victim], w)

    def test_policies_and_long_polls_on_node_c_follow_node_a(self):
        a, c = self.nodes[0], self.nodes[2]
        # A long poll on C, parked before A writes, is woken by A's write (C's feed wakes
        # its waiters): with wait=60 and a 30 s client timeout, a poll that is not woken
        # fails the test instead of returning at its deadline.
        after = c.index_seq()
        result = {}

        def poll():
            conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
            try:
                result["reply"] = c.request("GET", "/v1/changes?after=%d&wait=60" % after,
                                            conn=conn)
            except Exception as e:  # the timeout: reported below
                result["error"] = e
            finally:
                conn.close()

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.5)  # let the poll park (if it has not, it simply reads the write)
        status, body, _ = a.request("POST", "/v1/mitigations", {
            "entity": "user:long-poll", "action": "block", "ttl": "1d", "reason": "x"})
        self.assertEqual(status, 201, body)
        t.join(60)
        self.assertNotIn("error", result)
        status, changes, _ = result["reply"]
        self.assertEqual(status, 200, changes)
        self.assertEqual([ch["mitigation"]["id"] for ch in changes["changes"]], [body["id"]])

        # A policy set published on A becomes C's active set.
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "policies",
                               "music.yaml")) as f:
            yaml = f.read()
        status, published, _ = a.request("PUT", "/v1/policies", yaml,
                                          headers={"Content-Type": "application/yaml"})
        self.assertIn(status, (200, 201), published)
        version = str(published["version"])
        deadline = time.time() + CONVERGE_SECONDS
        while True:
            status, text, headers = c.request("GET", "/v1/policies", raw=True)
            self.assertEqual(status, 200, text)
            if headers.get("x-quell-policy-version") == version:
                break
            self.assertLess(time.time(), deadline, "C never activated v%s" % version)
            time.sleep(0.05)
        self.assertEqual(text, yaml)

    def test_expiry_runs_on_the_lease_holder_and_moves_when_it_dies(self):
        def holder_pid():
            rows = psql(self.url, "SELECT holder FROM leases WHERE name = 'expiry' "
                                  "AND expires_at > clock_timestamp()")
            return int(rows[0].split(":")[1]) if rows else None

        by_pid = {n.proc.pid: n for n in self.nodes}
        deadline = time.time() + CONVERGE_SECONDS
        while holder_pid() not in by_pid:
            self.assertLess(time.time(), deadline, "no node took the expiry lease")
            time.sleep(0.1)
        holder = by_pid[holder_pid()]
        holder.kill9()  # no release: the others wait for the row to expire (ttl 10 s)
        others = [n for n in self.nodes if n is not holder]
        # Written on a survivor after the kill: only a new holder can expire it.
        status, body, _ = others[0].request("POST", "/v1/mitigations", {
            "entity": "user:short-lived", "action": "block", "ttl": "1s", "reason": "lease"})
        self.assertEqual(status, 201, body)
        while holder_pid() not in {n.proc.pid for n in others}:
            self.assertLess(time.time(), deadline, "the lease never moved")
            time.sleep(0.1)
        while psql(self.url, "SELECT state FROM mitigations WHERE id = '%s'" % body["id"]) != [
                "expired"]:
            self.assertLess(time.time(), deadline, "the new holder never expired it")
            time.sleep(0.1)

    def lease_holder(self, nodes):
        """The node holding the 'expiry' lease (waits until one does)."""
        by_pid = {n.proc.pid: n for n in nodes}
        deadline = time.time() + CONVERGE_SECONDS
        while True:
            rows = psql(self.url, "SELECT holder FROM leases WHERE name = 'expiry' "
                                  "AND expires_at > clock_timestamp()")
            pid = int(rows[0].split(":")[1]) if rows else None
            if pid in by_pid:
                return by_pid[pid]
            self.assertLess(time.time(), deadline, "no node took the expiry lease")
            time.sleep(0.1)

    def lease_holder_of(self, name, nodes):
        """The node holding lease `name` (waits until one of `nodes` does)."""
        by_pid = {n.proc.pid: n for n in nodes}
        deadline = time.time() + CONVERGE_SECONDS
        while True:
            rows = psql(self.url, "SELECT holder FROM leases WHERE name = '%s' "
                                  "AND expires_at > clock_timestamp()" % name)
            pid = int(rows[0].split(":")[1]) if rows else None
            if pid in by_pid:
                return by_pid[pid]
            self.assertLess(time.time(), deadline, "no node took the %s lease" % name)
            time.sleep(0.1)

    def test_webhooks_are_delivered_once_by_the_lease_holder_and_resume_after_it_dies(self):
        for n in self.nodes:
            n.stop()  # SIGTERM: they release their leases
        env = {"QUELL_WEBHOOK_POLL": "200ms", "QUELL_WEBHOOK_BACKOFF_INITIAL": "50ms",
               "QUELL_WEBHOOK_BACKOFF_MAX": "300ms", "QUELL_WEBHOOK_TIMEOUT": "2s"}
        nodes = [Node(self.url, self.key, env=env) for _ in range(3)]
        for n in nodes:
            self.addCleanup(n.cleanup)
            n.start_node()
        a, b, c = nodes
        rx = Receiver().start()
        self.addCleanup(rx.stop)
        status, sub, _ = a.request("POST", "/v1/webhooks", {"url": rx.url})
        self.assertEqual(status, 201, sub)
        def listed_ids(n):
            status, listed, _ = n.request("GET", "/v1/webhooks")
            self.assertEqual(status, 200, listed)
            return [w["id"] for w in listed["webhooks"]]

        for n in nodes:  # one shared subscription, seen through every node's API (each
            # node re-reads the shared state every poll)
            wait_for(lambda: listed_ids(n) == [sub["id"]], CONVERGE_SECONDS,
                     "the subscription listed on :%d" % n.port)

        def write(node, i, tag):
            status, body, _ = node.request("POST", "/v1/mitigations", {
                "entity": "user:wh-%s-%d" % (tag, i), "action": "block", "ttl": "1d",
                "reason": "webhooks"})
            return status

        def expected():  # every mitigation change after the subscription's start
            return {int(x) for x in psql(self.url, "SELECT seq FROM changes WHERE kind = 1 "
                                                   "AND seq > %d" % sub["cursor"])}

        def seqs():
            return [e["seq"] for e in rx.accepted()]

        def check_entries():
            for e in rx.entries():
                mac = hmac.new(sub["secret"].encode(), e["body"], hashlib.sha256).hexdigest()
                self.assertEqual(e["headers"]["X-Quell-Signature"], "sha256=" + mac)
                self.assertEqual(int(e["headers"]["X-Quell-Seq"]), e["seq"])
                self.assertEqual(json.loads(e["body"])["subscription"], sub["id"])

        # Writes through B and C (not the node the subscription was made on).
        for i in range(40):
            self.assertEqual(write(b if i % 2 else c, i, "live"), 201)
        want = expected()
        self.assertEqual(len(want), 40)
        wait_for(lambda: want <= set(seqs()), CONVERGE_SECONDS, "every change delivered")
        holder = self.lease_holder_of("webhooks", nodes)
        got = seqs()
        self.assertEqual(sorted(got), sorted(want), "exactly once per seq while all nodes live")
        self.assertEqual(got, sorted(got), "in seq order")
        check_entries()

        def delivered_by(n):
            status, text, _ = n.request("GET", "/metrics", auth=False, raw=True)
            self.assertEqual(status, 200)
            for line in text.splitlines():
                if line.startswith('quell_webhook_deliveries_total{result="ok"}'):
                    return float(line.split()[-1])
            return 0.0

        for n in nodes:  # only the holder delivers
            self.assertEqual(delivered_by(n), 40.0 if n is holder else 0.0, n.port)

        # The holder dies (no release) while writes continue on the survivors.
        survivors = [n for n in nodes if n is not holder]
        stop = threading.Event()
        statuses = []

        def load():
            i = 0
            while not stop.is_set():
                statuses.append(write(survivors[i % 2], i, "load"))
                i += 1
                time.sleep(0.02)

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(0.5)  # changes in flight when the holder dies
            holder.kill9()
            killed_at = time.time()
            new_holder = self.lease_holder_of("webhooks", survivors)
            handover = time.time() - killed_at
            time.sleep(0.5)  # the new holder delivers under load too
        finally:
            stop.set()
            t.join(60)
        for i in range(10):  # and after it
            self.assertEqual(write(survivors[i % 2], i, "after"), 201)
        self.assertEqual(set(statuses), {201})
        want = expected()
        wait_for(lambda: want <= set(seqs()), CONVERGE_SECONDS, "every change delivered after "
                 "the holder died: missing %s" % sorted(want - set(seqs()))[:10])
        got = seqs()
        self.assertEqual(set(got), want)
        # At least once: only a change in flight when the holder died can come twice (one
        # worker, one change in flight per subscription).
        dups = sorted({s for s in got if got.count(s) > 1})
        self.assertLessEqual(len(dups), 1, dups)
        self.assertEqual(sorted(set(got)), [s for i, s in enumerate(got) if s not in got[:i]])
        check_entries()
        self.assertGreater(delivered_by(new_holder), 0.0)
        print("\nwebhooks: %d changes, holder :%d killed, :%d took over after %.1f s, "
              "duplicates %s" % (len(want), holder.port, new_holder.port, handover, dups))

    @unittest.skipUnless(shutil.which("redis-server"), "redis-server is not installed")
    def test_redis_shared_by_three_nodes_fails_open_or_closed_and_recovers(self):
        for n in self.nodes:
            n.stop()
        redis = RedisServer().start()
        self.addCleanup(redis.cleanup)
        tmp = tempfile.TemporaryDirectory(prefix="quell-mn-redis-")
        self.addCleanup(tmp.cleanup)
        os.makedirs(os.path.join(tmp.name, "closed"))
        open_cfg = config_file(tmp.name, {"on_error": "fail_open"})
        closed_cfg = config_file(os.path.join(tmp.name, "closed"), {"on_error": "fail_closed"})
        redis_url = "redis://127.0.0.1:%d" % redis.port
        # A and B fail open, C fails closed; all three count in the same Redis.
        nodes = [Node(self.url, self.key, extra_args=["--config", cfg, "--redis", redis_url])
                 for cfg in (open_cfg, open_cfg, closed_cfg)]
        for n in nodes:
            self.addCleanup(n.cleanup)
            n.start_node()
        a, b, c = nodes

        def post(node, events):
            return node.request("POST", "/v1/events", {"events": events})

        def failed_login(user):
            return {"type": "login_failed", "entity": user, "at": ts(now())}

        def shared_count_fires(user, first, second):
            # brute-force-account fires at 10 failed logins: 6 + 6 only add up if shared.
            status, r, _ = post(first, [failed_login(user) for _ in range(6)])
            self.assertEqual(status, 200, r)
            self.assertFalse(any(rule_detections(x) for x in r["results"]), r)
            status, r, _ = post(second, [failed_login(user) for _ in range(6)])
            self.assertEqual(status, 200, r)
            self.assertTrue(any(rule_detections(x) for x in r["results"]), r)

        shared_count_fires("user:mn-redis-1", a, b)

        # Events keep flowing through the three nodes while Redis stops.
        stop = threading.Event()
        replies = {n.port: [] for n in nodes}

        def flow(node):
            conn = node.connection()
            try:
                while not stop.is_set():
                    status, _, _ = node.request("POST", "/v1/events", {"events": [
                        {"type": "play", "entity": "user:mn-flow", "at": ts(now()),
                         "attrs": {"ip": "ip:10.7.7.7", "track": "track:t1"}}]}, conn=conn)
                    replies[node.port].append(status)
                    time.sleep(0.02)
            finally:
                conn.close()

        threads = [threading.Thread(target=flow, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)
            redis.stop()
            for n in (a, b):  # fail_open: accepted, not counted, and said so
                status, r, _ = post(n, [failed_login("user:mn-redis-2")])
                self.assertEqual(status, 200, r)
                self.assertEqual(r["results"][0]["status"], "accepted", r)
                self.assertTrue(r["results"][0]["outcomes"].get("unavailable"), r)
                status, text, _ = n.request("GET", "/metrics", auth=False, raw=True)
                fo = [l for l in text.splitlines()
                      if l.startswith("quell_velocity_fail_open_total")]
                self.assertTrue(fo and float(fo[0].split()[-1]) >= 1, fo)
            status, r, headers = post(c, [failed_login("user:mn-redis-2")])  # fail_closed
            self.assertEqual(status, 503, r)
            self.assertIn("retry-after", headers)
            for n in nodes:  # Redis is not part of readiness: check and writes still work
                status, body, _ = n.request("GET", "/readyz", auth=False)
                self.assertEqual(status, 200, body)
            time.sleep(0.3)
            redis.start()  # same port, empty
            for n in nodes:  # every node counts again by itself
                deadline = time.time() + 30
                while True:
                    status, r, _ = post(n, [failed_login("user:mn-redis-3")])
                    if status == 200 and r["results"][0]["outcomes"].get("counted") == 1:
                        break
                    self.assertLess(time.time(), deadline, (n.port, status, r))
                    time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        # The flow saw only the configured answers: 200 on A and B, 200 or 503 on C.
        self.assertEqual(set(replies[a.port]) | set(replies[b.port]), {200})
        self.assertIn(503, replies[c.port])
        self.assertLessEqual(set(replies[c.port]), {200, 503})
        # Counters are shared again after the outage.
        shared_count_fires("user:mn-redis-4", b, a)
        shared_count_fires("user:mn-redis-5", a, c)

    def test_the_safeguard_sweeper_runs_on_the_lease_holder_only(self):
        for n in self.nodes:
            n.cleanup()
        env = {"QUELL_SAFEGUARDS_PENDING_TTL": "1s", "QUELL_SAFEGUARDS_SWEEP_INTERVAL": "100ms",
               "QUELL_SAFEGUARDS_BULK_THRESHOLD": "1"}
        nodes = [Node(self.url, self.key, env=env) for _ in range(3)]
        for n in nodes:
            self.addCleanup(n.cleanup)
            n.start_node()
        holder = self.lease_holder(nodes)
        other = next(n for n in nodes if n is not holder)
        policies = ("actions:\n  - {name: block, verdict: deny, severity: high, ttl: 7d}\n"
                    "lists:\n  - {name: vips, protected: true}\n"
                    "policies:\n  - id: bot\n    on: detection\n"
                    "    when: detection.type == \"bot\"\n    action: block\n")
        status, body, _ = other.request("PUT", "/v1/policies", policies,
                                        headers={"Content-Type": "application/yaml"})
        self.assertEqual(status, 200, body)
        status, body, _ = other.request("POST", "/v1/lists/vips/entries", {"add": ["user:vip"]})
        self.assertEqual(status, 200, body)
        # A decision on a protected entity waits for approval, and expires after 1 s.
        status, body, _ = other.request("POST", "/v1/detections", {"detections": [{
            "id": "d-sweep", "source": "model", "type": "bot", "entity": "user:vip",
            "score": 0.99, "observed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]})
        self.assertEqual(status, 200, body)
        decision = body["results"][0]["decisions"][0]
        self.assertEqual(decision["state"], "pending_approval", decision)
        deadline = time.time() + CONVERGE_SECONDS
        while other.request("GET", "/v1/mitigations/" + decision["mitigation_id"])[1][
                "state"] != "expired":
            self.assertLess(time.time(), deadline, "the pending mitigation never expired")
            time.sleep(0.1)
        time.sleep(0.5)  # a second sweeper, if one ran, had several more passes

        def expired_count(n):
            status, text, _ = n.request("GET", "/metrics", auth=False, raw=True)
            self.assertEqual(status, 200)
            for line in text.splitlines():
                if line.startswith("quell_pending_expired_total "):
                    return float(line.split()[1])
            self.fail("no quell_pending_expired_total on :%d" % n.port)

        self.assertEqual(expired_count(holder), 1)
        for n in nodes:
            if n is not holder:
                self.assertEqual(expired_count(n), 0, "a node without the lease swept")

    @unittest.skipUnless(shutil.which("haproxy"), "haproxy is not installed (scripts/setup)")
    def test_deploy_haproxy_config_is_valid_and_balances_the_three_nodes(self):
        for cfg in (HAPROXY_CFG, os.path.join(os.path.dirname(HAPROXY_CFG), "..", "patroni",
                                              "haproxy-postgres.cfg")):
            check = subprocess.run(["haproxy", "-c", "-f", cfg], capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, cfg + ": " + check.stdout + check.stderr)
        # The shipped file with this test's addresses: a free port, the three nodes.
        with open(HAPROXY_CFG) as f:
            cfg = f.read()
        port = free_port()
        cfg = cfg.replace("bind :8080", "bind 127.0.0.1:%d" % port)
        cfg = cfg.replace("bind 127.0.0.1:8404", "bind 127.0.0.1:%d" % free_port())
        for i, n in enumerate(self.nodes):
            cfg = re.sub(r"server node%d \S+" % (i + 1), "server node%d 127.0.0.1:%d" % (
                i + 1, n.port), cfg)
        with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
            f.write(cfg)
        self.addCleanup(os.unlink, f.name)
        proc = subprocess.Popen(["haproxy", "-db", "-f", f.name], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.kill(), proc.wait()))

        def call(method, path, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request(method, path, json.dumps(body) if body is not None else None,
                             {"Authorization": "Bearer " + self.key,
                              "Content-Type": "application/json"})
                r = conn.getresponse()
                return r.status, r.read()
            except OSError as e:
                return None, str(e)
            finally:
                conn.close()

        deadline = time.time() + CONVERGE_SECONDS
        while call("GET", "/readyz")[0] != 200:  # haproxy up, checks passed
            self.assertLess(time.time(), deadline, "haproxy never answered /readyz with 200")
            time.sleep(0.2)
        ids = []
        for i in range(6):
            status, body = call("POST", "/v1/mitigations", {
                "entity": "user:via-haproxy%d" % i, "action": "block", "ttl": "1d",
                "reason": "x"})
            self.assertEqual(status, 201, body)
            ids.append(json.loads(body)["id"])
        self.wait_converged(self.nodes)
        self.nodes[0].kill9()  # out of rotation once its checks fail (inter 1s, fall 2)
        ok = 0
        while ok < 10:  # ten checks in a row answered by the survivors
            status, body = call("GET", "/v1/check?entity=user:via-haproxy0")
            if status == 200 and json.loads(body)["mitigations"][0]["id"] == ids[0]:
                ok += 1
            else:
                ok = 0
                self.assertLess(time.time(), deadline, "haproxy kept the dead node: %r" % body)
                time.sleep(0.2)

    def test_postgres_restart_checks_keep_answering_writes_503_then_catch_up(self):
        a, c = self.nodes[0], self.nodes[2]
        status, before, _ = a.request("POST", "/v1/mitigations", {
            "entity": "user:before-outage", "action": "block", "ttl": "1d", "reason": "x"})
        self.assertEqual(status, 201, before)
        self.wait_converged(self.nodes)
        # A revoked key, once met by node a (its reload then knows it is revoked).
        revoked = run_cli("keys", "create", "--role", "enforcer", "--postgres", self.url)[1].strip()
        run_cli("keys", "revoke", revoked.split(".")[0], "--postgres", self.url)
        deadline = time.time() + CONVERGE_SECONDS  # revocations are seen within 200 ms
        while a.request("GET", "/v1/check?entity=user:x", key=revoked)[0] != 401:
            self.assertLess(time.time(), deadline, "the revoked key kept working")
            time.sleep(0.05)
        self.cluster.stop()
        try:
            for n in self.nodes:  # check is answered from memory
                status, body, _ = n.request("GET", "/v1/check?entity=user:before-outage")
                self.assertEqual(status, 200, body)
                self.assertEqual([m["id"] for m in body["mitigations"]], [before["id"]])
            # A key id this node has not loaded (one made a moment before the outage, or
            # none at all: the same answer, whatever the key) cannot be checked: 503,
            # retry. It was a 401, telling the owner of a valid new key that it is wrong.
            status, body, headers = a.request("GET", "/v1/check?entity=user:x",
                                              key="k_01M8P0000000000000000000XX.secret")
            self.assertEqual(status, 503, body)
            self.assertIn("retry-after", headers)
            # A revoked one is refused from memory: 401 still (a 503 told it apart from
            # a live key with a wrong secret, which is 401).
            status, body, _ = a.request("GET", "/v1/check?entity=user:x", key=revoked)
            self.assertEqual(status, 401, body)
            # A snapshot that cannot start is a 503 (it was a 200 whose only line was an
            # error: an empty snapshot to a client that looks at the status).
            for view in ("full", "enforcement"):
                status, body, headers = a.request("GET", "/v1/snapshot?view=" + view)
                self.assertEqual(status, 503, body)
                self.assertIn("retry-after", headers)
            status, body, headers = c.request("POST", "/v1/mitigations", {
                "entity": "user:during-outage", "action": "block", "ttl": "1d", "reason": "x"})
            self.assertEqual(status, 503, body)
            self.assertIn("retry-after", headers)
            for n in self.nodes:  # not ready: HAProxy takes the node out of rotation
                status, body, _ = n.request("GET", "/readyz", auth=False)
                self.assertEqual(status, 503, body)
        finally:
            self.cluster.restart()
        deadline = time.time() + CONVERGE_SECONDS
        while c.request("GET", "/readyz", auth=False)[0] != 200:
            self.assertLess(time.time(), deadline, "never ready again")
            time.sleep(0.1)
        # Ready: the first write goes through. Its connection, idle through the restart,
        # was closed by the server; it failed once (503) before being opened again.
        status, after, _ = c.request("POST", "/v1/mitigations", {
            "entity": "user:after-outage", "action": "block", "ttl": "1d", "reason": "x"})
        self.assertEqual(status, 201, after)
        self.wait_converged(self.nodes)  # every feed reconnected and caught up
        for n in self.nodes:
            self.assertEqual(n.index_ids(["user:after-outage"]), {after["id"]})
            self.assertEqual(n.index_ids(["user:during-outage"]), set())
            while True:  # the store answers, the feed runs: ready again
                status, body, _ = n.request("GET", "/readyz", auth=False)
                if status == 200:
                    break
                self.assertLess(time.time(), deadline, "not ready again: %r" % body)
                time.sleep(0.1)
            self.assertEqual(body["status"], "ready")

    def test_a_stopped_change_feed_makes_readyz_degraded_and_check_keeps_answering(self):
        a = self.nodes[0]
        status, m, _ = a.request("POST", "/v1/mitigations", {
            "entity": "user:before-gap", "action": "block", "ttl": "1d", "reason": "x"})
        self.assertEqual(status, 201, m)
        last = self.wait_converged(self.nodes)
        for n in self.nodes:
            status, body, _ = n.request("GET", "/readyz", auth=False)
            self.assertEqual(status, 200, body)
        # A change after a hole in the seqs (never written by Quell): every feed stops with
        # data loss rather than skip it.
        psql(self.url, "INSERT INTO changes (seq, at, kind, actor, subject, entity, payload, "
                       "prev_hash, hash) VALUES (%d, 0, 0, 'x', 'x', 'user:x', '{}', 'x', 'x'); "
                       "NOTIFY quell_changes" % (last + 2))
        deadline = time.time() + CONVERGE_SECONDS
        for n in self.nodes:
            while True:
                status, body, _ = n.request("GET", "/readyz", auth=False)
                if status == 503:
                    break
                self.assertEqual(status, 200, body)
                self.assertLess(time.time(), deadline, "readyz stayed 200 with a stopped feed")
                time.sleep(0.1)
            text = json.dumps(body)
            self.assertIn("degraded: change feed", text)
            self.assertIn("expected seq %d" % (last + 1), text)
            status, body, _ = n.request("GET", "/v1/check?entity=user:before-gap")
            self.assertEqual(status, 200, body)
            self.assertEqual([x["id"] for x in body["mitigations"]], [m["id"]])


if __name__ == "__main__":
    unittest.main()
