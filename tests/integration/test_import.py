"""Integration tests for `quell import` (issue 7) against the real binary: through a
running server (batch ids on mitigations, idempotent re-import, kill -9 of the import and
of the server mid-file then --resume, compared with an uninterrupted import into a second
server, rows the server rejects, a rollback of one import by its batch id), directly into a data directory (lock, dry run that writes nothing), and bad input
(truncated gzip, wrong column count, invalid UTF-8, a 10 MB line, wrong Avro schema,
empty file)."""
import contextlib
import datetime
import gzip
import http.server
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import QUELL, QuellServer, run_cli

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
CONFIG = os.path.join(EXAMPLES, "quell.yaml")


def ts(minutes_ago=0):
    t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes_ago)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def row(i, users=997):
    # Every 4th row is a high-confidence bot verdict (bot-model-high: exclude_royalties,
    # escalating to suspend on the 3rd hit); the others score lower.
    score = 0.97 if i % 4 == 0 else 0.3 + (i % 5) / 10.0
    return {"id": "r%d" % i, "source": "bot-model-v3", "type": "artificial_streaming",
            "entity": "user:u%d" % (i % users), "score": score, "observed_at": ts(60),
            "evidence": {"n": i}}


def write_ndjson(path, n, bad_every=0):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps(row(i)) + "\n")
            if bad_every and i % bad_every == bad_every - 1:
                f.write('{"id": "broken\n')


@contextlib.contextmanager
def example_server():
    """A server of its own with the example configuration, cleaned up after the block."""
    q = QuellServer(extra_args=["--config", CONFIG]).start()
    try:
        yield q
    finally:
        q.cleanup()


def import_cmd(*args, check=False, timeout=300):
    p = subprocess.run([QUELL, "import", *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def mitigations(q):
    """Every mitigation as (entity, action, state, policy, batch), sorted."""
    out, cursor = [], ""
    while True:
        path = "/v1/mitigations?limit=500" + ("&cursor=" + cursor if cursor else "")
        s, r, _ = q.request("GET", path)
        assert s == 200, r
        out += [(m["entity"], m["action"], m["state"], m.get("policy", ""), m.get("batch", ""))
                for m in r["mitigations"]]
        cursor = r.get("next_cursor") or ""
        if not cursor:
            return sorted(out)


def without_batch(ms):
    return sorted(m[:4] for m in ms)


def seq(q):
    s, r, _ = q.request("GET", "/v1/check?entity=user:nobody")
    assert s == 200, r
    return r["seq"]


@contextlib.contextmanager
def fake_server(answer):
    """A stand-in HTTP server on a free port: `answer(body)` gives each POST's (status,
    reply bytes), sent as JSON. Yields the port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            status, reply = answer(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever)
    t.start()
    try:
        yield srv.server_port
    finally:
        srv.shutdown()
        t.join()
        srv.server_close()


class FixedPortServer(QuellServer):
    """Restarts on the same port, so a running import finds it again."""

    def start(self, dev=True):
        if self.port is None:
            return super().start(dev)
        port = self.port
        orig = harness.free_port
        harness.free_port = lambda: port
        try:
            return super().start(dev)
        finally:
            harness.free_port = orig


def avro_long(n):
    n = (n << 1) ^ (n >> 63)
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def avro_bytes(b):
    return avro_long(len(b)) + b


def write_avro(path, schema, records, blocks=1, block_sizes=None, block_syncs=None):
    """A minimal Avro object container writer (null codec) for records of strings/doubles/
    longs, in `blocks` blocks, or in blocks of `block_sizes` records each (0: an empty
    block, which the spec allows). `block_syncs` maps a block's index to the marker that
    ends it instead of the file's (a corrupt block)."""
    sync = os.urandom(16)
    meta = avro_long(2) + avro_bytes(b"avro.schema") + avro_bytes(json.dumps(schema).encode()) + \
        avro_bytes(b"avro.codec") + avro_bytes(b"null") + avro_long(0)
    if block_sizes is None:
        per_block = -(-len(records) // blocks) if records else 0
        block_sizes = [len(records[s:s + per_block]) for s in range(0, len(records), per_block or 1)]
    assert sum(block_sizes) == len(records)
    with open(path, "wb") as f:
        f.write(b"Obj\x01" + meta + sync)
        start = 0
        for i, n in enumerate(block_sizes):
            part = records[start:start + n]
            start += n
            body = avro_body(schema, part)
            end = (block_syncs or {}).get(i, sync)
            f.write(avro_long(len(part)) + avro_long(len(body)) + body + end)


def avro_body(schema, records):
    body = b""
    for rec in records:
        for f in schema["fields"]:
            v = rec[f["name"]]
            t = f["type"]
            if isinstance(t, dict) and t["type"] != "array":  # a primitive with a logicalType
                t = t["type"]
            if t == "double":
                body += struct.pack("<d", v)
            elif t == "long":
                body += avro_long(v)
            elif t == "string":
                body += avro_bytes(v.encode())
            elif isinstance(t, list):  # ["null", "string"]
                body += avro_long(0) if v is None else avro_long(1) + avro_bytes(v.encode())
            elif isinstance(t, dict):  # array of strings
                if v:
                    body += avro_long(len(v)) + b"".join(avro_bytes(x.encode()) for x in v)
                body += avro_long(0)
    return body


AVRO_SCHEMA = json.load(open(os.path.join(EXAMPLES, "import", "detection.avsc")))


class ServerImportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="quell-import-")
        cls.file = os.path.join(cls.tmp.name, "day.ndjson.gz")
        with gzip.open(cls.file, "wt") as f:
            for i in range(30000):
                f.write(json.dumps(row(i)) + "\n")
        cls.reference = QuellServer(extra_args=["--config", CONFIG]).start()
        # One batch in flight: the example policy set has a suspend-rate breaker (100 per
        # 10 minutes), so WHICH users end up active rather than pending_approval depends on
        # the order detections reach the ledger. With several batches in flight on separate
        # connections that order is not fixed, and two imports of the same file may differ.
        code, out, err = import_cmd(cls.file, "--server", "http://127.0.0.1:%d" % cls.reference.port,
                                    "--key", cls.reference.admin_key, "--json", "--in-flight", "1",
                                    "--rejects", os.path.join(cls.tmp.name, "ref.rejects"))
        assert code == 0, err
        cls.reference_summary = json.loads(out)
        cls.reference_state = mitigations(cls.reference)

    @classmethod
    def tearDownClass(cls):
        cls.reference.cleanup()
        cls.tmp.cleanup()

    def test_quell_server_and_quell_key_name_the_server(self):
        # QUELL_KEY was read and QUELL_SERVER (which `quell check` reads) was not: with
        # both exported, an import went to ./var. --data keeps a run local.
        f = os.path.join(self.tmp.name, "env.ndjson")
        with open(f, "w") as out:
            out.write(json.dumps(dict(row(0), id="env-1", entity="user:env")) + "\n")
        with example_server() as q:  # not the reference, whose state other tests compare
            env = dict(os.environ, QUELL_SERVER="http://127.0.0.1:%d" % q.port,
                       QUELL_KEY=q.admin_key)
            p = subprocess.run([QUELL, "import", f, "--json", "--progress", "off",
                                "--rejects", f + ".rej", "--checkpoint", f + ".cp"],
                               env=env, capture_output=True, text=True, timeout=60,
                               cwd=self.tmp.name)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(json.loads(p.stdout)["accepted"], 1, p.stdout)
            self.assertIn(("user:env", "exclude_royalties"), [m[:2] for m in mitigations(q)])
        p = subprocess.run([QUELL, "import", f, "--data", os.path.join(self.tmp.name, "none"),
                            "--progress", "off"], env=env, capture_output=True, text=True,
                           timeout=60, cwd=self.tmp.name)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("no ledger in", p.stderr)
        # Without a key, the message names the variable (no --server was typed).
        env.pop("QUELL_KEY")
        p = subprocess.run([QUELL, "import", f], env=env, capture_output=True, text=True,
                           timeout=60, cwd=self.tmp.name)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("QUELL_SERVER names a server: give --key KEY", p.stderr)

    def test_a_csv_row_is_timed_by_the_server_clock_when_it_arrives(self):
        # The second row reaches the server 7 s after the import started, 5m03s ahead of
        # the start: within the server's 5 minutes when it arrives. Decoded locally (CSV),
        # it was checked against the importer's start instead and rejected "ahead of the
        # server clock", while the same row as NDJSON was accepted.
        q = QuellServer(extra_args=["--config", CONFIG]).start()
        try:
            start = datetime.datetime.now(datetime.timezone.utc)
            ahead = (start + datetime.timedelta(minutes=5, seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
            p = subprocess.Popen([QUELL, "import", "-", "--format", "csv", "--server",
                                  "http://127.0.0.1:%d" % q.port, "--key", q.admin_key,
                                  "--json", "--progress", "off", "--batch-rows", "1",
                                  "--rejects", os.path.join(self.tmp.name, "clock.rejects")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            p.stdin.write("id,source,type,entity,score,observed_at\n")
            p.stdin.write("k1,bot-model-v3,artificial_streaming,user:k1,0.5,%s\n" % ts())
            p.stdin.flush()
            time.sleep(7)
            p.stdin.write("k2,bot-model-v3,artificial_streaming,user:k2,0.5,%s\n" % ahead)
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
            s = json.loads(out)
            self.assertEqual((s["read"], s["accepted"], s["rejected"]), (2, 2, 0), s)
        finally:
            q.cleanup()

    def test_summary_batch_and_idempotent_reimport(self):
        s = self.reference_summary
        self.assertEqual(s["read"], 30000)
        self.assertEqual(s["accepted"], 30000)
        self.assertEqual(s["rejected"], 0)
        self.assertTrue(s["batch"].startswith("b_"))
        self.assertGreater(s["decisions"].get("active", 0), 0)
        # Every mitigation the import caused carries its batch.
        self.assertTrue(self.reference_state)
        self.assertEqual({m[4] for m in self.reference_state}, {s["batch"]})
        before = seq(self.reference)
        code, out, err = import_cmd(self.file, "--server", "http://127.0.0.1:%d" % self.reference.port,
                                    "--key", self.reference.admin_key, "--json",
                                    "--rejects", os.path.join(self.tmp.name, "again.rejects"))
        self.assertEqual(code, 0, err)
        again = json.loads(out)
        self.assertEqual(again["duplicate"], 30000)
        self.assertEqual(again["accepted"], 0)
        self.assertEqual(seq(self.reference), before)  # nothing changed
        self.assertEqual(mitigations(self.reference), self.reference_state)

    def interrupted_then_resumed(self, interrupt, extra=()):
        q = FixedPortServer(extra_args=["--config", CONFIG]).start()
        try:
            key = q.create_key("detector", "bot-model-v3")
            rejects = os.path.join(q.data, "rejects.ndjson")
            # Its own checkpoint (the default is next to the file the other tests import).
            checkpoint = os.path.join(q.data, "import.quell-checkpoint")
            args = [QUELL, "import", self.file, "--server", "http://127.0.0.1:%d" % q.port, "--key", key,
                    "--rejects", rejects, "--checkpoint", checkpoint, "--batch-rows", "500",
                    "--progress", "lines", "--json", "--in-flight", "1", *extra]
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # The whole import may take less than its checkpoint interval (500 ms). Once it
            # has started (its first checkpoint, at offset 0, exists) the server is paused
            # for longer than that, so the first reply after it resumes writes a checkpoint
            # with rows in it while most of the file is still to be sent.
            deadline = time.time() + 60
            while not os.path.exists(checkpoint) and p.poll() is None and time.time() < deadline:
                time.sleep(0.002)
            q.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.7)
            q.proc.send_signal(signal.SIGCONT)
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    with open(checkpoint) as f:
                        if json.load(f)["offset"] > 0:
                            break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.01)
            interrupt(p, q)
            out, err = p.communicate(timeout=120)
            return q, p.returncode, out, err, args
        except BaseException:
            q.cleanup()
            raise

    def test_kill9_import_then_resume_equals_uninterrupted(self):
        def kill_import(p, q):
            p.send_signal(signal.SIGKILL)
        q, code, _, _, args = self.interrupted_then_resumed(kill_import)
        try:
            self.assertEqual(code, -signal.SIGKILL)  # killed mid-file
            self.assertNotEqual(mitigations(q), [])
            code, out, err = import_cmd(*args[2:], "--resume")
            self.assertEqual(code, 0, err)
            summary = json.loads(out)
            self.assertEqual(summary["read"], 30000)
            self.assertEqual(summary["accepted"] + summary["duplicate"], 30000)
            state = mitigations(q)
            self.assertEqual(without_batch(state), without_batch(self.reference_state))
            self.assertEqual({m[4] for m in state}, {summary["batch"]})  # one batch across the resume
            self.assertFalse(os.path.exists(os.path.join(q.data, "import.quell-checkpoint")))
            # The chain, and the mitigations table the index loads, agree (a running server).
            code, out, err = run_cli("audit", "verify", "--data", q.data, check=False)
            self.assertEqual(code, 0, out + err)
            self.assertIn("the mitigations table, the policy sets and the lists agree with it", out)
        finally:
            q.cleanup()

    def test_ctrl_c_then_resume(self):
        def ctrl_c(p, q):
            p.send_signal(signal.SIGINT)
        q, code, out, err, args = self.interrupted_then_resumed(ctrl_c)
        try:
            if code == 0:
                self.skipTest("the import finished before the signal")
            self.assertEqual(code, 1, err)
            self.assertIn("--resume", err)
            code, out, err = import_cmd(*args[2:], "--resume")
            self.assertEqual(code, 0, err)
            self.assertEqual(without_batch(mitigations(q)), without_batch(self.reference_state))
        finally:
            q.cleanup()

    def test_ctrl_c_while_the_server_is_down_interrupts(self):
        # Ctrl-C while a batch was being retried against a dead server waited out the whole
        # --retry-for (here 10 minutes; 60 s by default) and then failed "the server did not
        # take a batch" instead of stopping as interrupted.
        def down_then_ctrl_c(p, q):
            q.kill9()
            time.sleep(0.5)  # the next batch meets the dead server and retries
            p.send_signal(signal.SIGINT)
        q, code, out, err, args = self.interrupted_then_resumed(down_then_ctrl_c,
                                                                ["--retry-for", "10m"])
        try:
            if code == 0:
                self.skipTest("the import finished before the server stopped")
            self.assertEqual(code, 1, err)
            self.assertIn("interrupted: continue with --resume", err)
            q.start()
            code, out, err = import_cmd(*args[2:], "--resume")
            self.assertEqual(code, 0, err)
            self.assertEqual(without_batch(mitigations(q)), without_batch(self.reference_state))
        finally:
            q.cleanup()

    def test_ctrl_c_while_the_server_hangs_interrupts(self):
        # A server that took a batch and never answers (here: stopped) held the import:
        # Ctrl-C did nothing and no timeout ended the request (a hunt's ran 6m40s, until
        # the listener died). The batch in flight now gets HttpConnection::kCancelGrace.
        def hang_then_ctrl_c(p, q):
            q.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.5)  # the next batch is sent and waits
            p.send_signal(signal.SIGINT)
        q, code, out, err, args = self.interrupted_then_resumed(hang_then_ctrl_c,
                                                                ["--retry-for", "10m"])
        try:
            q.proc.send_signal(signal.SIGCONT)
            if code == 0:
                self.skipTest("the import finished before the server stopped")
            self.assertEqual(code, 1, err)
            self.assertIn("interrupted: continue with --resume", err)
            code, out, err = import_cmd(*args[2:], "--resume")
            self.assertEqual(code, 0, err)
            self.assertEqual(without_batch(mitigations(q)), without_batch(self.reference_state))
        finally:
            q.proc.send_signal(signal.SIGCONT)
            q.cleanup()

    def test_a_second_run_on_the_same_checkpoint_is_refused(self):
        # Two runs (a --resume started twice) both wrote the one checkpoint and rejects file.
        def second_run_while_the_first_waits(p, q):
            q.proc.send_signal(signal.SIGSTOP)  # the first run waits on its batch
            try:
                args = [a for a in p.args[2:]]
                code, out, err = import_cmd(*args, "--resume")
                self.assertEqual(code, 1, err)
                self.assertIn("another quell import is using the checkpoint", err)
            finally:
                q.proc.send_signal(signal.SIGCONT)
        q, code, out, err, _ = self.interrupted_then_resumed(second_run_while_the_first_waits)
        try:
            self.assertEqual(code, 0, err)  # the first run was not disturbed
            self.assertEqual(without_batch(mitigations(q)), without_batch(self.reference_state))
        finally:
            q.cleanup()

    def test_server_restart_mid_import(self):
        def restart_server(p, q):
            q.kill9()
            time.sleep(0.5)
            q.start()
        q, code, out, err, _ = self.interrupted_then_resumed(restart_server)
        try:
            self.assertEqual(code, 0, err)  # the import retried until the server was back
            summary = json.loads(out)
            self.assertEqual(summary["accepted"] + summary["duplicate"], 30000)
            self.assertEqual(without_batch(mitigations(q)), without_batch(self.reference_state))
        finally:
            q.cleanup()

    def test_rows_the_server_rejects_go_to_the_rejects_file(self):
        # Through a server, NDJSON lines are sent as read and the server validates them:
        # its per-row reasons must reach the rejects file with the rows' line numbers, and
        # CSV rows (decoded, then encoded) must carry the batch like the NDJSON ones.
        with example_server() as q:
            f = os.path.join(self.tmp.name, "mixed.ndjson")
            with open(f, "wb") as out:
                out.write((json.dumps(dict(row(0), id="m1", entity="user:mixed1")) + "\n").encode())
                out.write(b'{"id": "m2", "score": \n')                                   # line 2
                out.write((json.dumps(dict(row(0), id="m3", score=2, entity="User:x")) + "\n").encode())
                out.write(b" \r\n")                                                   # blank
                out.write(b'{"id": "m5\xff"}\n')                                         # line 5
                out.write((json.dumps(dict(row(0), id="m6", type="no_such_type")) + "\n").encode())
                # Over 64 KiB as written, valid once compact: decoded here, accepted.
                padded = json.dumps(dict(row(0), id="m7", entity="user:mixed3")).replace(",", "," + " " * 9000)
                out.write((padded + "\n").encode())
                # Evidence over the server's 16 KiB: sent as read, rejected by the server.
                out.write((json.dumps(dict(row(0), id="m8", evidence={"x": "y" * 17000})) + "\n").encode())
                # Over 64 KiB and not JSON: decoded here, so rejected in this client's words.
                out.write(b'{"id": "m9", "pad": "' + b"p" * 70000 + b'"\n')
            c = os.path.join(self.tmp.name, "more.csv")
            with open(c, "w") as out:
                out.write("id,source,type,entity,score,observed_at\n")
                out.write("c1,bot-model-v3,artificial_streaming,user:mixed2,0.97,%s\n" % ts(5))
            rejects = os.path.join(self.tmp.name, "mixed.rejects")
            code, out, err = import_cmd(f, c, "--server", "http://127.0.0.1:%d" % q.port,
                                        "--key", q.admin_key, "--json", "--rejects", rejects)
            self.assertEqual(code, 0, err)
            s = json.loads(out)
            self.assertEqual((s["read"], s["accepted"], s["rejected"]), (9, 3, 6))
            with open(rejects) as r:
                got = [json.loads(l) for l in r]
            self.assertEqual([(r["file"], r["line"]) for r in got],
                             [(f, 2), (f, 3), (f, 5), (f, 6), (f, 8), (f, 9)])
            self.assertIn("malformed JSON", got[0]["error"])
            self.assertIn("score: must be", got[1]["error"])  # every field error, as --data words them
            self.assertIn("entity: ", got[1]["error"])
            self.assertIn("invalid UTF-8", got[2]["error"])
            self.assertIn("unknown detection type", got[3]["error"])
            self.assertIn("evidence", got[4]["error"])
            self.assertIn("invalid JSON at byte", got[5]["error"])  # not the server's wording
            self.assertIn('"id": "m3"', got[1]["row"])  # the row as it was in the file
            self.assertEqual({m[4] for m in mitigations(q)}, {s["batch"]})
            self.assertEqual({m[0] for m in mitigations(q)},
                             {"user:mixed1", "user:mixed2", "user:mixed3"})

    def test_batches_are_cut_by_bytes_too(self):
        # 600 rows of ~15 KiB evidence are 9 MB: one batch of --batch-rows (1,000) would be
        # over the server's 8 MiB body limit (413); cut at 4 MiB, every row goes in.
        with example_server() as q:
            f = os.path.join(self.tmp.name, "wide.ndjson")
            with open(f, "w") as out:
                for i in range(600):
                    out.write(json.dumps(dict(row(i), id="w%d" % i, evidence={"x": "y" * 15000})) + "\n")
            self.assertGreater(os.path.getsize(f), 8 << 20)
            code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % q.port,
                                        "--key", q.admin_key, "--json")
            self.assertEqual(code, 0, err)
            self.assertEqual(json.loads(out)["accepted"], 600)

    def test_a_server_that_takes_small_bodies_gets_the_batch_in_halves(self):
        # http.max_body_bytes 8000: a 1,000-row batch (~60 KB) is refused with 413, so the
        # client sends it in halves until each fits; the one row over 8000 bytes alone is
        # rejected with its line, and every other row goes in, in order.
        config = os.path.join(self.tmp.name, "small-bodies.yaml")
        with open(CONFIG) as src, open(config, "w") as out:
            text = src.read().replace("max_body_bytes: 8388608", "max_body_bytes: 8000")
            out.write(text.replace("policies/music.yaml", os.path.join(EXAMPLES, "policies", "music.yaml")))
        q = QuellServer(extra_args=["--config", config]).start()
        try:
            f = os.path.join(self.tmp.name, "for-small-bodies.ndjson")
            with open(f, "w") as out:
                for i in range(300):
                    out.write(json.dumps(dict(row(i), id="s%d" % i)) + "\n")
                    if i == 150:  # line 152
                        out.write(json.dumps(dict(row(i), id="huge", evidence={"x": "y" * 9000})) + "\n")
            rejects = os.path.join(self.tmp.name, "small-bodies.rejects")
            code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % q.port, "--key", q.admin_key,
                                        "--json", "--rejects", rejects)
            self.assertEqual(code, 0, err)
            s = json.loads(out)
            self.assertEqual((s["read"], s["accepted"], s["rejected"]), (301, 300, 1))
            with open(rejects) as r:
                got = [json.loads(l) for l in r]
            self.assertEqual([g["line"] for g in got], [152])
            self.assertIn("does not take a row this long", got[0]["error"])
            self.assertIn('"huge"', got[0]["row"])
            self.assertEqual(len(mitigations(q)), len({row(i)["entity"] for i in range(0, 300, 4)}))
        finally:
            q.cleanup()

    def test_after_a_batch_gives_up_no_other_is_sent(self):
        # A batch that gave up after --retry-for was followed by the next one, which had
        # waited for its slot: it was sent and retried for a whole --retry-for of its own
        # (the run took twice as long as asked). A server that takes the probe, then is
        # busy (503) for good; the first row of every batch it is sent is recorded.
        firsts = set()

        def busy(body):
            if body == b"{}\n{}\n":  # the probe: two rejected items
                return 400, json.dumps({"results": [
                    {"index": i, "status": "rejected",
                     "error": {"code": "invalid_argument", "message": "id: missing"}}
                    for i in range(2)]}).encode()
            firsts.add(json.loads(body.split(b"\n", 1)[0])["id"])
            return 503, b'{"error":{"code":"unavailable","message":"busy"}}'

        with fake_server(busy) as port:
            f = os.path.join(self.tmp.name, "three-batches.ndjson")
            write_ndjson(f, 30)
            code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % port,
                                        "--key", "k_x.y", "--retry-for", "1s", "--in-flight", "1",
                                        "--batch-rows", "10")
            self.assertEqual(code, 1, err)
            self.assertIn("did not take a batch within 1s", err)
            self.assertEqual(firsts, {"r0"})
            # Waiting on the busy server, the progress lines go on (nothing was said for
            # the whole --retry-for: it looked like a hang).
            firsts.clear()
            os.unlink(f + ".quell-checkpoint")  # the failed run's (it stopped at row 0)
            code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % port,
                                        "--key", "k_x.y", "--retry-for", "6s", "--in-flight", "1",
                                        "--batch-rows", "10", "--progress", "lines")
            self.assertEqual(code, 1, err)
            self.assertRegex(err, r"quell import: \d+ rows  \d+ rows/s")

    def test_a_server_that_does_not_take_ndjson_is_refused_before_any_row(self):
        # A server from before NDJSON bodies reads the probe as one JSON document and fails
        # to parse it; without the refusal a one-row batch would go in without its batch id.
        # A busy server (503) is asked again until --retry-for, then reported as busy.
        replies = {"status": 400}

        def old(body):
            replies["posts"] = replies.get("posts", 0) + 1
            return (replies["status"],
                    b'{"error":{"code":"invalid_argument","message":"malformed JSON at byte 3"}}')

        with fake_server(old) as port:
            f = os.path.join(self.tmp.name, "one.ndjson")
            write_ndjson(f, 1)
            code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % port,
                                        "--key", "k_x.y")
            self.assertEqual(code, 1)
            self.assertIn("does not take NDJSON detection batches", err)
            self.assertFalse(os.path.exists(f + ".quell-checkpoint"))
            replies.update(status=503, posts=0)
            code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % port,
                                        "--key", "k_x.y", "--retry-for", "1s")
            self.assertEqual(code, 1)
            self.assertIn("did not take a request within 1s", err)
            self.assertGreater(replies["posts"], 1)

    def test_rollback_of_one_import_batch(self):
        # Two imports on disjoint users: undoing the first by its batch id leaves the
        # second exactly as it was.
        with example_server() as q:
            batches = []
            for name, users in (("first", "a"), ("second", "b")):
                f = os.path.join(self.tmp.name, name + ".ndjson")
                with open(f, "w") as out:
                    for i in range(200):
                        out.write(json.dumps(dict(row(i), id="%s%d" % (name, i),
                                                  entity="user:%s%d" % (users, i % 40))) + "\n")
                code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % q.port,
                                            "--key", q.admin_key, "--json")
                self.assertEqual(code, 0, err)
                batches.append(json.loads(out)["batch"])
            before = mitigations(q)
            mine = [m for m in before if m[4] == batches[0]]
            theirs = [m for m in before if m[4] == batches[1]]
            self.assertTrue(mine and theirs)
            live = [m for m in mine if m[2] in ("active", "scheduled", "pending_approval", "shadow")]
            # user:a0 had five high-score hits: suspended (deny) until the rollback.
            self.assertEqual(q.request("GET", "/v1/check?entity=user:a0")[1]["verdict"], "deny")
            self.assertEqual(q.request("GET", "/v1/check?entity=user:b0")[1]["verdict"], "deny")
            s, r, _ = q.request("POST", "/v1/rollbacks",
                                {"filter": {"batch": batches[0]}, "reason": "bad export"})
            self.assertEqual(s, 200, r)
            self.assertEqual((r["state"], r["revoked"]), ("done", len(live)))
            after = mitigations(q)
            self.assertEqual([m for m in after if m[4] == batches[1]], theirs)
            self.assertEqual({m[2] for m in after if m[4] == batches[0]} - {"revoked", "expired"},
                             set())
            self.assertEqual(q.request("GET", "/v1/check?entity=user:a0")[1]["verdict"], "allow")
            self.assertEqual(q.request("GET", "/v1/check?entity=user:b0")[1]["verdict"], "deny")

    def test_rollback_of_a_batch_undoes_its_extensions(self):
        # A person excluded user:z's royalties for a day; an import's two hits on user:z
        # extended that to the policy's 90 days. Rolling the import back leaves the
        # person's decision in force with its own expiry (it was left at 90 days), and the
        # import's hits no longer count: the next import's hit does not escalate (two prior
        # hits of bot-model-high make the third a suspension).
        with example_server() as q:
            s, manual, _ = q.request("POST", "/v1/mitigations",
                                     {"entity": "user:z", "action": "exclude_royalties",
                                      "ttl": "24h", "reason": "support ticket"})
            self.assertEqual(s, 201, manual)
            f = os.path.join(self.tmp.name, "z.ndjson")
            with open(f, "w") as out:
                out.write(json.dumps(dict(row(0), id="z0", entity="user:z")) + "\n")
                out.write(json.dumps(dict(row(4), id="z1", entity="user:z")) + "\n")
                out.write(json.dumps(dict(row(8), id="y0", entity="user:y")) + "\n")
            code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % q.port,
                                        "--key", q.admin_key, "--json")
            self.assertEqual(code, 0, err)
            batch = json.loads(out)["batch"]
            path = "/v1/mitigations/" + manual["id"]
            extended = q.request("GET", path)[1]
            self.assertGreater(extended["expires_at"], manual["expires_at"])
            self.assertEqual([e["batch"] for e in extended["batch_expiries"]], ["", batch])
            s, dry, _ = q.request("POST", "/v1/rollbacks",
                                  {"filter": {"batch": batch}, "dry_run": True})
            self.assertEqual((s, dry["matched"], dry["extensions"]), (200, 2, 1), dry)
            s, r, _ = q.request("POST", "/v1/rollbacks",
                                {"filter": {"batch": batch}, "reason": "bad export"})
            self.assertEqual(s, 200, r)
            self.assertEqual((r["matched"], r["revoked"], r["restored"]), (2, 1, 1), r)
            after = q.request("GET", path)[1]
            self.assertEqual((after["state"], after["expires_at"]),
                             ("active", manual["expires_at"]), after)
            self.assertNotIn("batch_expiries", after)
            self.assertIn("took back the hits of batch " + batch, after["state_reason"])
            self.assertEqual(after["detection_policies"], ["rolled_back:bot-model-high"] * 2)
            self.assertEqual(q.request("GET", "/v1/rollbacks/" + r["id"])[1]["restored"], 1)
            # Still enforced, with the person's expiry: the index took the change.
            verdict = q.request("GET", "/v1/check?entity=user:z")[1]
            self.assertEqual([(m["id"], m["expires_at"]) for m in verdict["mitigations"]],
                             [(manual["id"], manual["expires_at"])], verdict)
            # Nothing of the batch is left to undo.
            s, again, _ = q.request("POST", "/v1/rollbacks", {"filter": {"batch": batch}})
            self.assertEqual((s, again["matched"]), (200, 0), again)
            f2 = os.path.join(self.tmp.name, "z2.ndjson")
            with open(f2, "w") as out:
                out.write(json.dumps(dict(row(12), id="z2", entity="user:z")) + "\n")
            code, out, err = import_cmd(f2, "--server", "http://127.0.0.1:%d" % q.port,
                                        "--key", q.admin_key)
            self.assertEqual(code, 0, err)
            self.assertEqual([m for m in mitigations(q) if m[0] == "user:z"],
                             [("user:z", "exclude_royalties", "active", "", "")])

    def test_through_a_server_a_file_under_var_is_fine(self):
        # The data-directory guard for --rejects looked at the default ./var with --server,
        # which writes no directory: `quell import var/day.ndjson --server ...` was refused.
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "var"))
            write_ndjson(os.path.join(d, "var", "few.ndjson"), 10)
            p = subprocess.run([QUELL, "import", "var/few.ndjson", "--server",
                                "http://127.0.0.1:%d" % self.reference.port, "--key",
                                self.reference.admin_key, "--progress", "off"],
                               cwd=d, capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)

    def test_wrong_key_and_direct_import_refused_while_server_runs(self):
        code, _, err = import_cmd(self.file, "--server", "http://127.0.0.1:%d" % self.reference.port,
                                  "--key", "k_nope.nope")
        self.assertEqual(code, 1)
        self.assertIn("refused the key", err)
        code, _, err = import_cmd(self.file, "--data", self.reference.data)
        self.assertEqual(code, 1)
        self.assertIn("a quell server owns", err)
        # A key for another source: the batch is refused. The summary said "read 0 rows"
        # of rows it had sent, and the reason came once per row.
        s, key, _ = self.reference.request("POST", "/v1/keys",
                                           {"role": "detector", "sources": ["other-model"]})
        self.assertEqual(s, 201, key)
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "three.ndjson")
            write_ndjson(f, 3)
            code, out, err = import_cmd(f, "--server", "http://127.0.0.1:%d" % self.reference.port,
                                        "--key", key["key"], "--progress", "off")
            self.assertEqual(code, 1, err)
            self.assertIn("not acknowledged: 3 more rows read", out + err)
            self.assertEqual(err.count("this key may not submit as source"), 1, err)
            # One row of another source among the key's own: the stop names its line (it
            # named none, leaving the user to search the file), and nothing was applied.
            s, own, _ = self.reference.request("POST", "/v1/keys",
                                               {"role": "detector", "sources": ["bot-model-v3"]})
            self.assertEqual(s, 201, own)
            mixed = os.path.join(d, "mixed.ndjson")
            with open(mixed, "w") as out:
                out.write("\n".join(json.dumps(dict(row(i), id="mixed-%d" % i)) for i in range(2)) + "\n\n")
                out.write(json.dumps(dict(row(2), id="mixed-2", source="other-model")) + "\n")
            before = seq(self.reference)
            code, out, err = import_cmd(mixed, "--server", "http://127.0.0.1:%d" % self.reference.port,
                                        "--key", own["key"], "--progress", "off")
            self.assertEqual(code, 1, err)
            self.assertIn("mixed.ndjson line 4: the server refused a batch: HTTP 403", err)
            self.assertIn('this key may not submit as source \"other-model\"', err)
            self.assertEqual(seq(self.reference), before)
        # A malformed --server is bad usage (it was exit 1, and "TLS is not supported" for
        # ftp://), before any file is read.
        for url in ("ftp://x", "http://h:notaport", "127.0.0.1:9", "http://user:pw@127.0.0.1:9",
                    "http://127.0.0.1:9?x=1", "http://127.0.0.1:9/q?x=1"):
            code, _, err = import_cmd(self.file, "--server", url, "--key", "k_x.y")
            self.assertEqual(code, 2, err)
            self.assertNotIn("TLS", err)
            self.assertNotIn("--server: --server", err)  # the flag was named twice
            self.assertNotIn("pw", err)  # nor was a password in the URL echoed
        # Neither left a checkpoint, nor the lock file that goes with it.
        self.assertFalse(os.path.exists(self.file + ".quell-checkpoint"))
        self.assertFalse(os.path.exists(self.file + ".quell-checkpoint.lock"))

    def test_dry_run_against_a_running_server_writes_nothing(self):
        f = os.path.join(self.tmp.name, "preview.ndjson")
        with open(f, "w") as out:
            for i in range(300):
                out.write(json.dumps(dict(row(i), id="p%d" % i, entity="user:new%d" % (i % 50))) + "\n")
            out.write(json.dumps(dict(row(0), id="p-old")) + "\n")  # user:u0: already mitigated
        before = seq(self.reference)
        code, out, err = import_cmd(f, "--data", self.reference.data, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        d = json.loads(out)["dry_run"]
        self.assertEqual(d["seq"], before)
        self.assertGreater(d["new"]["by_action"].get("exclude_royalties", 0), 0)
        # user:u0's suspension is active, and the reference import left suspend-rate open:
        # its hit would wait for approval beside it (it was "already mitigated").
        rate = [b for b in d["breakers"] if b["name"] == "suspend-rate"][0]
        self.assertTrue(rate["open_now"], d)
        self.assertGreaterEqual(rate["would_hold"], 1, d)
        self.assertEqual(seq(self.reference), before)
        code, out, err = import_cmd(f, "--data", self.reference.data, "--dry-run")
        self.assertIn("would newly mitigate", out)
        self.assertIn("breakers that would open", out)


class DirectImportTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="quell-import-direct-")
        self.data = os.path.join(self.tmp.name, "var")
        os.makedirs(self.data)
        # Publish the example set by starting a server once, then stop it.
        q = QuellServer(data_dir=self.data, extra_args=["--config", CONFIG]).start()
        q.stop()

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def piped(self, data, *args):
        """`quell import -` into self.data with `data` on standard input."""
        p = subprocess.run([QUELL, "import", "-", "--data", self.data, "--progress", "off", *args],
                           input=data, cwd=self.tmp.name, capture_output=True, timeout=120)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def test_csv_from_stdin_and_rejects(self):
        csv = "id,source,type,entity,score,observed_at,evidence,related\n"
        csv += 'c1,bot-model-v3,artificial_streaming,user:c1,0.97,%s,"{""k"":1}",device:d1|ip:10.0.0.1\n' % ts(5)
        csv += "c2,bot-model-v3,artificial_streaming,user:c2,0.97,%s\n" % ts(5)  # wrong column count
        csv += "c3,bot-model-v3,artificial_streaming,user:c\xe93,0.97,%s,,\n" % ts(5)
        csv += "c4,bot-model-v3,no_such_type,user:c4,0.97,%s,,\n" % ts(5)  # as the server rejects it
        p = subprocess.run([QUELL, "import", "-", "--format", "csv", "--data", self.data, "--json",
                            "--rejects", self.path("r.ndjson")],
                           input=csv.encode("latin-1"), capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        s = json.loads(p.stdout)
        self.assertEqual((s["read"], s["accepted"], s["rejected"]), (4, 1, 3))
        with open(self.path("r.ndjson")) as f:
            rejects = [json.loads(l) for l in f]
        self.assertEqual([r["line"] for r in rejects], [3, 4, 5])
        self.assertIn("wrong column count", rejects[0]["error"])
        self.assertIn("invalid UTF-8", rejects[1]["error"])
        self.assertIn('type: unknown detection type "no_such_type"; policy set v1 declares: ',
                      rejects[2]["error"])
        self.assertEqual(json.loads(rejects[2]["row"])["id"], "c4")  # the decoded row, as JSON

    def test_bad_inputs(self):
        good = self.path("good.ndjson")
        write_ndjson(good, 5000)
        # Truncated gzip: the rows before the damage are imported, the run stops (exit 1)
        # with the checkpoint at the last good row.
        with open(good, "rb") as f:
            data = gzip.compress(f.read())
        trunc = self.path("trunc.ndjson.gz")
        with open(trunc, "wb") as f:
            f.write(data[: len(data) * 2 // 3])
        code, out, err = import_cmd(trunc, "--data", self.data, "--json")
        self.assertEqual(code, 1)
        self.assertIn("truncated gzip", err)
        s = json.loads(out)
        from_truncated = s["accepted"]
        self.assertGreater(from_truncated, 0)
        self.assertGreater(s["bytes"], 0)  # what was read before the damage (was 0)
        self.assertTrue(os.path.exists(trunc + ".quell-checkpoint"))
        # A 10 MB line is rejected; the rows around it are imported.
        big = self.path("big.ndjson")
        with open(big, "w") as f:
            f.write(json.dumps(dict(row(1), id="b1")) + "\n")
            f.write('{"id":"' + "x" * (10 << 20) + '"}\n')
            f.write(json.dumps(dict(row(2), id="b2")) + "\n")
        code, out, err = import_cmd(big, "--data", self.data, "--json")
        self.assertEqual(code, 0, err)
        s = json.loads(out)
        self.assertEqual((s["accepted"], s["rejected"]), (2, 1))
        with open(big + ".rejects.ndjson") as f:
            rej = json.loads(f.readline())
        self.assertEqual(rej["line"], 2)
        self.assertIn("longer than the limit", rej["error"])
        # Refused before writing anything: empty file, wrong Avro schema, unknown CSV column.
        empty = self.path("empty.ndjson")
        open(empty, "w").close()
        bad_avro = self.path("bad.avro")
        write_avro(bad_avro, {"type": "record", "name": "X", "fields": [
            {"name": "id", "type": "string"}, {"name": "score", "type": "string"}]},
            [{"id": "a", "score": "high"}])
        bad_csv = self.path("bad.csv")
        with open(bad_csv, "w") as f:
            f.write("id,source,colour\n")
        for f, message in [(empty, "is empty"), (bad_avro, "Avro schema does not fit"),
                           (bad_csv, "unknown column")]:
            code, out, err = import_cmd(good, f, "--data", self.data)
            self.assertEqual(code, 1, err)
            self.assertIn(message, err)
        # The refused runs imported nothing of good.ndjson (only the rows the truncated
        # copy delivered before the damage are known).
        code, out, err = import_cmd(good, "--data", self.data, "--json")
        s = json.loads(out)
        self.assertEqual((s["accepted"], s["duplicate"]), (5000 - from_truncated, from_truncated), err)

    def test_an_input_given_as_rejects_file_is_refused_not_deleted(self):
        # A fresh run empties the rejects file: given an input's path (here through another
        # spelling of it), it used to unlink the input, rows imported, file gone.
        f = self.path("keep.ndjson")
        write_ndjson(f, 20)
        size = os.path.getsize(f)
        spelled = os.path.join(os.path.dirname(f), ".", "keep.ndjson")
        code, out, err = import_cmd(f, "--data", self.data, "--rejects", spelled)
        self.assertEqual(code, 2, err)  # bad usage, as a bad flag is
        self.assertIn("is the input", err)
        self.assertEqual(os.path.getsize(f), size)
        code, out, err = import_cmd(f, "--data", self.data, "--rejects", self.tmp.name)
        self.assertEqual(code, 2, err)
        self.assertIn("is a directory", err)

    def test_a_data_directory_without_a_ledger_or_policies(self):
        f = self.path("few.ndjson")
        write_ndjson(f, 20)
        # Mistyped: it was created, every row stored without decisions (exit 0).
        missing = self.path("no-such-var")
        code, _, err = import_cmd(f, "--data", missing)
        self.assertEqual(code, 1, err)
        self.assertIn("no ledger in " + missing, err)
        self.assertFalse(os.path.exists(missing))
        # A ledger with no policy set: imported, and said.
        bare = self.path("bare")
        run_cli("keys", "create", "--role", "admin", "--data", bare)
        code, out, err = import_cmd(f, "--data", bare, "--json")
        self.assertEqual(code, 0, err)
        self.assertIn("has no published policy set", err)

    def test_paths_that_would_destroy_each_other_or_the_ledger_are_refused(self):
        f = self.path("small.ndjson")
        write_ndjson(f, 50, bad_every=10)
        db = os.path.join(self.data, "quell.db")
        size = os.path.getsize(db)
        # --rejects onto the ledger's database wrote NDJSON over it (exit 0). Such paths are
        # bad usage (exit 2), as a bad flag is.
        code, _, err = import_cmd(f, "--data", self.data, "--rejects", db)
        self.assertEqual(code, 2, err)
        self.assertIn("inside the data directory", err)
        self.assertEqual(os.path.getsize(db), size)
        # --rejects and --checkpoint one file: the rejects were gone at the end (exit 0).
        same = self.path("same.ndjson")
        code, _, err = import_cmd(f, "--data", self.data, "--rejects", same, "--checkpoint", same)
        self.assertEqual(code, 2, err)
        self.assertIn("are the same file", err)
        # Through a symbolic link to the data directory, either way round (was exit 0).
        link = self.path("var-link")
        os.symlink(self.data, link)
        for data, rejects in ((self.data, os.path.join(link, "x.rej")),
                              (link, os.path.join(self.data, "x.rej"))):
            code, _, err = import_cmd(f, "--data", data, "--rejects", rejects)
            self.assertEqual(code, 2, err)
            self.assertIn("inside the data directory", err)
        self.assertEqual(os.path.getsize(db), size)


    def test_resume_in_another_directory_is_not_another_file_of_that_name(self):
        # The checkpoint kept inputs as typed: `day.ndjson.gz` resumed from another working
        # directory continued that directory's file of the same name and size.
        a, b = self.path("a"), self.path("b")
        os.makedirs(a)
        os.makedirs(b)
        plain = self.path("day.ndjson")
        write_ndjson(plain, 2000)
        with open(plain, "rb") as f:
            data = gzip.compress(f.read())
        for d in (a, b):  # cut short: the run stops there and leaves its checkpoint
            with open(os.path.join(d, "day.ndjson.gz"), "wb") as f:
                f.write(data[: len(data) // 2])
        ck, rej = self.path("day.ck"), self.path("day.rejects")
        args = [QUELL, "import", "day.ndjson.gz", "--data", self.data, "--checkpoint", ck,
                "--rejects", rej, "--progress", "off"]
        p = subprocess.run(args, cwd=a, capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("truncated gzip", p.stderr)
        p = subprocess.run(args + ["--resume"], cwd=b, capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("is for other files", p.stderr)
        p = subprocess.run(args + ["--resume"], cwd=a, capture_output=True, text=True, timeout=120)
        self.assertIn("resuming batch", p.stderr)  # its own file: past the checks

    def test_resume_from_stdin_needs_the_same_bytes(self):
        # Standard input has no name nor size: a resume checked only that it reached the
        # checkpoint's offset, so another export piped in lost the rows it skipped.
        plain = self.path("piped.ndjson")
        write_ndjson(plain, 3000)
        with open(plain, "rb") as f:
            whole = f.read()
        cut = gzip.compress(whole)
        cut = cut[: len(cut) * 2 // 3]  # a truncated stream stops the run with a checkpoint
        other = b"".join(sorted(whole.splitlines(keepends=True), reverse=True))  # same rows

        code, _, err = self.piped(cut)
        self.assertEqual(code, 1, err)
        self.assertIn("truncated gzip", err)
        self.assertTrue(os.path.exists(self.path("quell-import.quell-checkpoint")))
        code, _, err = self.piped(other, "--resume")
        self.assertEqual(code, 1, err)
        self.assertIn("differ from those the checkpoint was made on", err)
        # A plain rerun without --resume finds the checkpoint too (and names where it went).
        code, _, err = self.piped(whole)
        self.assertEqual(code, 1, err)
        self.assertIn("a checkpoint of an unfinished import", err)
        self.assertIn("into data dir " + self.data, err)
        code, out, err = self.piped(whole, "--resume")
        self.assertEqual(code, 0, err)
        # The rows before the checkpoint were the first run's: the rate is of this run's.
        m = re.search(r"read 3,000 rows \(([0-9,]+) this run, ", out)
        self.assertTrue(m, out)
        self.assertLess(int(m.group(1).replace(",", "")), 3000)
        m = re.search(r"accepted ([0-9,]+), duplicate ([0-9,]+), rejected 0", out)
        self.assertTrue(m, out)
        self.assertEqual(sum(int(g.replace(",", "")) for g in m.groups()), 3000, out)

    def test_avro_resume_from_stdin_needs_the_same_records(self):
        # Avro resumes by record count: piped in, another file's first records were
        # skipped unread (its bytes were not checked), and those rows were lost.
        f = self.path("piped.avro")
        recs = [{"id": "p%d" % i, "source": "bot-model-v3", "type": "artificial_streaming",
                 "entity": "user:p%d" % i, "score": 0.97, "observed_at": ts(3),
                 "evidence": None, "related": []} for i in range(128)]
        write_avro(f, AVRO_SCHEMA, recs, blocks=2)
        with open(f, "rb") as src:
            whole = src.read()
        sync = whole[-16:]
        cut = whole[:whole.index(sync, whole.index(sync) + 16) + 17]  # into the second block
        write_avro(f, AVRO_SCHEMA, recs[64:] + recs[:64], blocks=2)  # same rows, other order
        with open(f, "rb") as src:
            other = src.read()

        code, out, err = self.piped(cut)
        self.assertEqual(code, 1, err)
        self.assertIn("corrupt Avro data after record 64", err)
        code, _, err = self.piped(other, "--resume")
        self.assertEqual(code, 1, err)
        self.assertIn("its first 64 records differ (by source and id) from those the checkpoint "
                      "was made on", err)
        code, out, err = self.piped(whole, "--resume")
        self.assertEqual(code, 0, err)
        self.assertIn("read 128 rows (64 this run, ", out)
        self.assertIn("accepted 128, duplicate 0, rejected 0", out)
        self.assertIn("decisions: active 128", out)

    def test_resume_never_pads_a_shortened_rejects_file(self):
        # A run stopped by a truncated gzip stream leaves a checkpoint that records how long
        # the rejects file was. If that file is cut since, --resume keeps it as it is (with
        # a note) instead of extending it to the recorded length with NUL bytes.
        plain = self.path("some-bad.ndjson")
        write_ndjson(plain, 4000, bad_every=100)
        with open(plain, "rb") as f:
            data = gzip.compress(f.read())
        trunc = self.path("some-bad.ndjson.gz")
        with open(trunc, "wb") as f:
            f.write(data[: len(data) * 2 // 3])
        rejects = self.path("some-bad.rejects")
        code, _, err = import_cmd(trunc, "--data", self.data, "--rejects", rejects)
        self.assertEqual(code, 1, err)
        self.assertGreater(os.path.getsize(rejects), 0)
        with open(rejects, "r+b") as f:
            f.truncate(10)
        code, _, err = import_cmd(trunc, "--data", self.data, "--rejects", rejects, "--resume")
        self.assertEqual(code, 1, err)  # the same damage stops it again
        self.assertIn("is shorter than the checkpoint records", err)
        with open(rejects, "rb") as f:
            self.assertNotIn(b"\0", f.read())
        # Gone altogether: the same note (it said nothing, and the rows rejected before
        # the interruption were in no file the run named).
        os.unlink(rejects)
        code, _, err = import_cmd(trunc, "--data", self.data, "--rejects", rejects, "--resume")
        self.assertEqual(code, 1, err)
        self.assertIn("is shorter than the checkpoint records (0 < ", err)
        # Another rejects file for the same checkpoint: refused, naming the one to use.
        checkpoint = trunc + ".quell-checkpoint"
        other = self.path("other.rejects")
        code, _, err = import_cmd(trunc, "--data", self.data, "--rejects", other,
                                  "--checkpoint", checkpoint, "--resume")
        self.assertEqual(code, 1, err)
        self.assertIn("the checkpoint's rejects file is " + rejects, err)
        self.assertFalse(os.path.exists(other))

    def test_avro_file(self):
        f = self.path("d.avro")
        recs = [{"id": "a%d" % i, "source": "bot-model-v3", "type": "artificial_streaming",
                 "entity": "user:a%d" % i, "score": 0.97, "observed_at": ts(3),
                 "evidence": '{"k": %d}' % i if i % 2 else None, "related": ["device:x%d" % i]}
                for i in range(100)]
        write_avro(f, AVRO_SCHEMA, recs)
        code, out, err = import_cmd(f, "--data", self.data, "--json")
        self.assertEqual(code, 0, err)
        s = json.loads(out)
        self.assertEqual((s["read"], s["accepted"]), (100, 100))
        self.assertEqual(s["decisions"].get("active"), 100)
        # Cut short (a transfer that stopped). One byte into the second block's record count
        # (64 records: two bytes), which libavro reads as the end of the file: the first
        # block's rows are imported and the run stops, where it used to end with exit 0.
        # Inside the only block: refused. Before, a refusal closed libavro's FILE twice: a
        # double free, which the ASan pass of scripts/test reports (the Release binary's
        # allocator let it pass silently).
        def cut(path, name, n):
            with open(path, "rb") as src, open(self.path(name), "wb") as dst:
                dst.write(src.read()[:n])
            return self.path(name)
        more = [dict(r, id="c%d" % i) for i, r in enumerate(recs + recs[:28])]
        write_avro(f, AVRO_SCHEMA, more, blocks=2)
        with open(f, "rb") as src:
            whole = src.read()
        sync = whole[-16:]
        first_block_end = whole.index(sync, whole.index(sync) + 16) + 16
        code, out, err = import_cmd(cut(f, "cut.avro", first_block_end + 1), "--data", self.data,
                                    "--json")
        self.assertEqual(code, 1, err)
        self.assertIn("cut.avro: corrupt Avro data after record 64: the data ends inside a block",
                      err)
        s = json.loads(out)
        self.assertEqual(s["accepted"], 64)
        self.assertGreater(s["bytes"], 0)
        write_avro(f, AVRO_SCHEMA, recs[:10])
        code, out, err = import_cmd(cut(f, "one.avro", os.path.getsize(f) - 40), "--data", self.data)
        self.assertEqual(code, 1, err)
        self.assertIn("one.avro: not a readable Avro container", err)

    def avro_records(self, prefix, n, **fields):
        base = {"source": "bot-model-v3", "type": "artificial_streaming", "score": 0.97,
                "observed_at": ts(3), "evidence": None, "related": []}
        base.update(fields)
        return [dict(base, id="%s%d" % (prefix, i), entity="user:%s%d" % (prefix, i))
                for i in range(n)]

    def test_avro_observed_at_long_units(self):
        # A long observed_at is microseconds (plain, as documented, or timestamp-micros) or
        # milliseconds (timestamp-millis: how Apache Beam writes datetimes). Milliseconds
        # were read as microseconds: every row stored in January 1970, with exit 0. The
        # record that fails (score 9) shows in the rejects file the time it was read as.
        def schema(observed_type):
            s = json.loads(json.dumps(AVRO_SCHEMA))
            [f for f in s["fields"] if f["name"] == "observed_at"][0]["type"] = observed_type
            return s
        now_ms = int(time.time() * 1000) - 3 * 60 * 1000
        known_ms = 1714557600250  # 2024-05-01T10:00:00.250Z
        for name, observed_type, scale in [
                ("millis", {"type": "long", "logicalType": "timestamp-millis"}, 1),
                ("micros", {"type": "long", "logicalType": "timestamp-micros"}, 1000),
                ("plain", "long", 1000)]:
            recs = self.avro_records(name, 10, observed_at=now_ms * scale)
            recs.append(dict(recs[0], id=name + "-bad", score=9, observed_at=known_ms * scale))
            f = self.path(name + ".avro")
            write_avro(f, schema(observed_type), recs)
            code, out, err = import_cmd(f, "--data", self.data, "--json")
            self.assertEqual(code, 0, err)
            s = json.loads(out)
            self.assertEqual((s["read"], s["accepted"], s["rejected"]), (11, 10, 1), name)
            self.assertEqual(s["decisions"].get("active"), 10, name)
            with open(f + ".rejects.ndjson") as r:
                rejected = json.loads(json.loads(r.readline())["row"])
            self.assertTrue(rejected["observed_at"].startswith("2024-05-01T10:00:00.25"),
                            (name, rejected))
        # Any other logical type could be any other unit: refused, naming it.
        for observed_type in [{"type": "long", "logicalType": "local-timestamp-millis"},
                              {"type": "long", "logicalType": "timestamp-nanos"},
                              {"type": "string", "logicalType": "timestamp-millis"}]:
            f = self.path("other.avro")
            value = ts(3) if observed_type["type"] == "string" else now_ms
            write_avro(f, schema(observed_type), self.avro_records("o", 2, observed_at=value))
            code, _, err = import_cmd(f, "--data", self.data)
            self.assertEqual(code, 1, err)
            self.assertIn("the Avro schema does not fit", err)
            self.assertIn('"observed_at" has logicalType "%s"' % observed_type["logicalType"], err)

    def test_avro_nul_bytes_are_row_errors(self):
        # A raw NUL in an Avro string is a row error naming the field, as a NUL in an NDJSON
        # or CSV row is. It was not checked: an observed_at "...Z\0junk" was imported as the
        # time before the NUL, and other fields failed later for other reasons ("evidence:
        # not valid JSON") or not at all.
        recs = self.avro_records("n", 7)
        recs[1]["evidence"] = '{"k": 1, "x\x00": 2}'
        recs[2]["observed_at"] = ts(3) + "\x00junk"
        recs[3]["related"] = ["device:d1", "device:\x00d2"]
        recs[4]["entity"] = "user:n4\x00x"
        recs[5]["id"] = "\x00"
        f = self.path("nul.avro")
        write_avro(f, AVRO_SCHEMA, recs)
        code, out, err = import_cmd(f, "--data", self.data, "--json")
        self.assertEqual(code, 0, err)
        s = json.loads(out)
        self.assertEqual((s["read"], s["accepted"], s["rejected"]), (7, 2, 5), s)
        with open(f + ".rejects.ndjson") as r:
            rejects = [json.loads(l) for l in r]
        self.assertEqual([r["line"] for r in rejects], [2, 3, 4, 5, 6])
        for r, (field, at) in zip(rejects, [("evidence", 12), ("observed_at", 21),
                                            ("related", 8), ("entity", 8), ("id", 1)]):
            self.assertEqual(r["error"], 'field "%s": NUL byte at byte %d' % (field, at), r)
            self.assertIn("\\u0000", r["row"])  # the whole record, the NUL escaped in its JSON

    def test_avro_empty_blocks_are_skipped(self):
        # A block of 0 records is legal Avro. libavro read the block before it once more
        # as one record (counted a duplicate), then ended: the records after the empty block
        # were dropped with exit 0 (a large file stopped with an error instead), and a file
        # starting with one was refused as empty.
        for name, sizes in [("mid", [5, 0, 5]), ("end", [5, 5, 0]), ("first", [0, 5, 5]),
                            ("many", [0, 3, 0, 0, 4, 0, 3, 0]), ("big", [3000, 0, 3000])]:
            f = self.path(name + ".avro")
            write_avro(f, AVRO_SCHEMA, self.avro_records(name, sum(sizes)), block_sizes=sizes)
            code, out, err = import_cmd(f, "--data", self.data, "--json")
            self.assertEqual(code, 0, (name, err))
            s = json.loads(out)
            self.assertEqual((s["read"], s["accepted"], s["duplicate"], s["rejected"]),
                             (sum(sizes), sum(sizes), 0, 0), name)
        # An empty block not ended by the file's sync marker is corrupt, and one cut short
        # is a cut: the run stops after the records before it.
        f = self.path("bad-sync.avro")
        write_avro(f, AVRO_SCHEMA, self.avro_records("bs", 10), block_sizes=[5, 0, 5],
                   block_syncs={1: b"\xee" * 16})
        code, out, err = import_cmd(f, "--data", self.data, "--json")
        self.assertEqual(code, 1, err)
        self.assertIn("bad-sync.avro: corrupt Avro data after record 5: a block of 0 records "
                      "does not end with the file's sync marker", err)
        self.assertEqual(json.loads(out)["accepted"], 5)
        f = self.path("cut.avro")
        write_avro(f, AVRO_SCHEMA, self.avro_records("ct", 5), block_sizes=[5, 0])
        with open(f, "r+b") as w:
            w.truncate(os.path.getsize(f) - 8)  # inside the empty block's sync marker
        code, out, err = import_cmd(f, "--data", self.data, "--json")
        self.assertEqual(code, 1, err)
        self.assertIn("cut.avro: corrupt Avro data after record 5: the data ends inside a block",
                      err)
        self.assertEqual(json.loads(out)["accepted"], 5)

    def test_a_second_import_counts_the_first_in_the_breakers_window(self):
        # Each import (and each resume after Ctrl-C or kill -9) builds its safeguards anew:
        # their breaker windows started empty, so two imports minutes apart let 2 x 100
        # suspensions through the example set's suspend-rate breaker (100 per 10 minutes).
        def hits(users, name):
            with open(self.path(name), "w") as f:
                for u in users:  # the third hit on a user escalates to suspend
                    for j in range(3):
                        d = row(0)
                        d.update(id="b%d-%d" % (u, j), entity="user:b%d" % u)
                        f.write(json.dumps(d) + "\n")
            return self.path(name)
        runs = []
        for users, name in ((range(0, 60), "first.ndjson"), (range(60, 120), "second.ndjson")):
            code, out, err = import_cmd(hits(users, name), "--data", self.data, "--json")
            self.assertEqual(code, 0, err)
            runs.append(json.loads(out)["decisions"])
        self.assertEqual(runs[0], {"active": 180})
        # 100 suspensions in all pass; the second run's last 20 wait for a reviewer.
        self.assertEqual(runs[1], {"active": 160, "pending_approval": 20})
        # The impact preview sees the breaker as the import will: open, it holds the next
        # file's 30 suspensions (the preview said "closed +30 vs limit 100", counting
        # neither the state nor the window's 100, and listed them as new).
        third = hits(range(120, 150), "third.ndjson")
        code, out, err = import_cmd(third, "--data", self.data, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        d = json.loads(out)["dry_run"]
        self.assertEqual(d["new"]["by_action"], {"exclude_royalties": 30}, d)
        self.assertEqual(d["held"], {"total": 30, "by_breaker": {"suspend-rate": 30}}, d)
        rate = [b for b in d["breakers"] if b["name"] == "suspend-rate"][0]
        self.assertEqual((rate["open_now"], rate["count_now"], rate["would_hold"]), (True, 100, 30))
        code, out, err = import_cmd(third, "--data", self.data, "--dry-run")
        self.assertIn("held for approval by breakers: 30 (suspend-rate 30)", out)
        self.assertIn("open   suspend-rate (action suspend): open now", out)
        code, out, err = import_cmd(third, "--data", self.data, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["decisions"], {"active": 60, "pending_approval": 30})
        # Another hit on users whose suspension is active extends it, which an open breaker
        # holds as well: the preview said "already mitigated".
        fourth = self.path("fourth.ndjson")
        with open(fourth, "w") as f:
            for u in range(10):
                d = row(0)
                d.update(id="b%d-again" % u, entity="user:b%d" % u)
                f.write(json.dumps(d) + "\n")
        code, out, err = import_cmd(fourth, "--data", self.data, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        d = json.loads(out)["dry_run"]
        self.assertEqual((d["already"], d["held"]["total"], d["new"]["total"]), (0, 10, 0), d)
        code, out, err = import_cmd(fourth, "--data", self.data, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["decisions"], {"pending_approval": 10})
        # A hit on a user whose suspension waits for approval joins it: held too.
        fifth = self.path("fifth.ndjson")
        with open(fifth, "w") as f:
            d = row(0)
            d.update(id="b110-again", entity="user:b110")
            f.write(json.dumps(d) + "\n")
        code, out, err = import_cmd(fifth, "--data", self.data, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        d = json.loads(out)["dry_run"]
        self.assertEqual((d["held"]["total"], d["new"]["total"], d["already"]), (1, 0, 0), d)
        code, out, err = import_cmd(fifth, "--data", self.data, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["decisions"], {"pending_approval": 1})

    def test_the_preview_decides_as_the_import_does(self):
        # Found by a differential hunt (preview against the import of the same file into a
        # copy of the directory): shadow decisions were counted once per entity and action
        # (the import records each, escalated); a stored mitigation past its expiry (its
        # `expired` change not written while no server ran) was "already" mitigated, where
        # the import creates anew; a delayed policy's hit on its stored scheduled mitigation
        # was new, where the import extends it.
        q = QuellServer(data_dir=self.data, extra_args=["--config", CONFIG]).start(dev=False)
        try:
            q.admin_key = run_cli("keys", "create", "--role", "admin", "--data", self.data)[1].strip()
            status, body, _ = q.request("POST", "/v1/mitigations", {
                "entity": "user:gone", "action": "exclude_royalties", "ttl": "1s", "reason": "test"})
            self.assertEqual(status, 201, body)
            pay = dict(row(0), id="pay-0", type="payment_fraud", entity="payment:card1")
            status, body, _ = q.request("POST", "/v1/detections", {"detections": [pay]})
            self.assertEqual(status, 200, body)
        finally:
            q.cleanup()
        time.sleep(1.5)  # past user:gone's expiry, with no server to write it
        f = self.path("mixed.ndjson")
        with open(f, "w") as out:
            for i in range(5):  # the v4 model's trial, in shadow: escalates on the 3rd
                out.write(json.dumps(dict(row(0), id="v4-%d" % i, source="bot-model-v4",
                                          entity="user:trial", score=0.9)) + "\n")
            out.write(json.dumps(dict(row(0), id="gone-1", entity="user:gone")) + "\n")
            out.write(json.dumps(dict(pay, id="pay-1")) + "\n")
        copy = self.path("copy")
        shutil.copytree(self.data, copy)
        code, out, err = import_cmd(f, "--data", copy, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        d = json.loads(out)["dry_run"]
        code, out, err = import_cmd(f, "--data", self.data, "--json")
        self.assertEqual(code, 0, err)
        decisions = json.loads(out)["decisions"]
        self.assertEqual(d["shadow"], decisions.get("shadow"), (d, decisions))
        self.assertEqual(d["shadow"], 5, d)
        self.assertEqual(d["new"]["by_action"], {"exclude_royalties": 1}, d)  # user:gone, anew
        self.assertEqual(d["already"], 1, d)  # payment:card1's scheduled block, extended
        self.assertEqual(d["new"]["by_action"].get("block"), None, d)

    def test_without_a_server_the_configuration_safeguards_hold(self):
        # `quell import --data` decided with the default safeguards whatever the server's
        # configuration said: it read neither --config nor QUELL_CONFIG. With an immunity of
        # 2s configured, a revoked user was still immune to the import for 30 days (its
        # hit waited for approval), and a bad QUELL_SAFEGUARDS_* value was ignored.
        with open(CONFIG) as f:
            text = f.read()
        text = text.replace("data: ./var", "data: " + self.data)
        text = text.replace("policies: policies/music.yaml",
                            "policies: " + os.path.join(EXAMPLES, "policies", "music.yaml"))
        text = re.sub(r"immunity: 30d", "immunity: 2s", text)
        cfg = self.path("quell.yaml")
        with open(cfg, "w") as f:
            f.write(text)
        q = QuellServer(data_dir=self.data, extra_args=["--config", cfg]).start(dev=False)
        try:
            q.admin_key = run_cli("keys", "create", "--role", "admin", "--data", self.data)[1].strip()
            status, body, _ = q.request("POST", "/v1/detections",
                                        {"detections": [dict(row(0), id="imm-0", entity="user:imm")]})
            self.assertEqual(status, 200, body)
            m = body["results"][0]["decisions"][0]["mitigation_id"]
            status, body, _ = q.request("POST", "/v1/mitigations/%s/revoke" % m,
                                        {"reason": "false positive"})
            self.assertEqual(status, 200, body)
        finally:
            q.cleanup()
        time.sleep(2.5)  # past the configured immunity, well within the default 30d
        f = self.path("imm.ndjson")
        with open(f, "w") as out:
            out.write(json.dumps(dict(row(0), id="imm-1", entity="user:imm")) + "\n")
        # A bad variable is refused as serve refuses it, naming it.
        p = subprocess.run([QUELL, "import", f, "--config", cfg, "--progress", "off"],
                           env=dict(os.environ, QUELL_SAFEGUARDS_IMMUNITY="soon"),
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("QUELL_SAFEGUARDS_IMMUNITY", p.stderr)
        # The preview and the import (data: from the file, no --data) agree: not immune.
        copy = self.path("copy")
        shutil.copytree(self.data, copy)
        code, out, err = import_cmd(f, "--data", copy, "--config", cfg, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        d = json.loads(out)["dry_run"]
        self.assertEqual((d["new"]["total"], d["protected"]["total"]), (1, 0), d)
        p = subprocess.run([QUELL, "import", f, "--json", "--progress", "off"],
                           env=dict(os.environ, QUELL_CONFIG=cfg),
                           capture_output=True, text=True, timeout=60, cwd=self.tmp.name)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["decisions"], {"active": 1}, p.stdout)

    def test_a_dry_run_refuses_what_the_import_refuses_and_reports_what_it_read(self):
        # A mistyped --data previewed "no policy set: nothing would be mitigated", exit 0,
        # where the import refuses the directory; a --policies preview said the same over
        # the mitigations it listed; and a preview stopped by a truncated gzip printed an
        # import's summary ("accepted 0 ... decisions: none"), no preview at all.
        f = self.path("p.ndjson")
        write_ndjson(f, 2000)
        missing = self.path("typo")
        code, out, err = import_cmd(f, "--data", missing, "--dry-run")
        self.assertEqual(code, 1, (out, err))
        self.assertIn("no ledger in", err)
        policies = os.path.join(EXAMPLES, "policies", "music.yaml")
        code, out, err = import_cmd(f, "--data", missing, "--dry-run", "--policies", policies)
        self.assertEqual(code, 0, err)
        self.assertIn("against an empty state", err)
        self.assertIn("dry run against the --policies set (not published)", out)
        self.assertNotIn("no policy set", out)
        with open(f, "rb") as fh:
            packed = gzip.compress(fh.read())
        cut = self.path("cut.ndjson.gz")
        with open(cut, "wb") as fh:
            fh.write(packed[: len(packed) // 2])
        code, out, err = import_cmd(cut, "--data", self.data, "--dry-run", "--json")
        self.assertEqual(code, 1, err)
        s = json.loads(out)
        self.assertFalse(s["ok"])
        self.assertIn("truncated gzip", s["error"])
        self.assertGreater(s["read"], 0)
        self.assertEqual(s["dry_run"]["rows"], s["read"], s)
        self.assertGreater(s["dry_run"]["new"]["total"], 0, s)
        code, out, err = import_cmd(cut, "--data", self.data, "--dry-run")
        self.assertEqual(code, 1, err)
        self.assertIn("the dry run stopped at the error above", out)
        self.assertIn("dry run against policy set v1", out)
        self.assertNotIn("accepted", out)

    def test_dry_run_then_import(self):
        f = self.path("d.ndjson")
        write_ndjson(f, 400)
        code, out, err = import_cmd(f, "--data", self.data, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        d = json.loads(out)["dry_run"]
        code, out, err = import_cmd(f, "--data", self.data, "--json")
        self.assertEqual(code, 0, err)
        s = json.loads(out)
        self.assertGreater(s["accepted"], 0)
        # Again: every row is stored already, so the preview is "nothing" as the import
        # would be (it used to predict the first run's mitigations again).
        code, out, err = import_cmd(f, "--data", self.data, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        again = json.loads(out)["dry_run"]
        self.assertEqual((again["duplicates"], again["new"]["total"]), (again["rows"], 0), again)
        # Rows repeated within the file count once.
        rep = self.path("rep.ndjson")
        with open(rep, "w") as fh:
            line = json.dumps({"id": "rep-1", "source": "bot-model-v3", "type": "artificial_streaming",
                               "entity": "user:rep-1", "score": 0.97, "observed_at": ts(3)})
            fh.write((line + "\n") * 3)
        code, out, err = import_cmd(rep, "--data", self.data, "--dry-run", "--json")
        self.assertEqual(code, 0, err)
        d3 = json.loads(out)["dry_run"]
        self.assertEqual((d3["rows"], d3["duplicates"], d3["new"]["total"]), (3, 2, 1), d3)
        # The preview's new mitigations are the ones the import created.
        q = QuellServer(data_dir=self.data, extra_args=["--config", CONFIG]).start(dev=False)
        try:
            q.admin_key = run_cli("keys", "create", "--role", "admin", "--data", self.data)[1].strip()
            live = [m for m in mitigations(q) if m[2] in ("active", "pending_approval", "scheduled")]
            self.assertEqual(len(live),
                             d["new"]["total"] + d["protected"]["total"] + d["held"]["total"])
            self.assertGreater(d["new"]["total"], 0)
        finally:
            q.cleanup()

if __name__ == "__main__":
    unittest.main()
