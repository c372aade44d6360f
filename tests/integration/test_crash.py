"""Crash test (issue 2): 32 concurrent writers, kill -9 of the server at random
moments, restart; every acknowledged write is there, none twice, and the hash
chain verifies."""
import os
import random
import threading
import time
import unittest

from harness import QuellServer, run_cli

ROUNDS = int(os.environ.get("QUELL_CRASH_ROUNDS", "20"))
WRITERS = 32


class CrashTest(unittest.TestCase):
    def test_acknowledged_writes_survive_kill9(self):
        rng = random.Random(int(os.environ.get("QUELL_CRASH_SEED", str(int(time.time())))))
        q = QuellServer()
        acked = {}          # entity -> mitigation id, for every 201 received
        lock = threading.Lock()
        try:
            q.start()
            key = q.admin_key
            for rnd in range(ROUNDS):
                stop = threading.Event()

                def writer(w):
                    conn = None
                    n = 0
                    while not stop.is_set():
                        entity = "user:r%d-w%d-n%d" % (rnd, w, n)
                        n += 1
                        try:
                            if conn is None:
                                conn = q.connection()
                            status, body, _ = q.request(
                                "POST", "/v1/mitigations",
                                {"entity": entity, "action": "block", "ttl": "1d", "reason": "crash"},
                                key=key, conn=conn)
                        except Exception:
                            conn = None
                            if stop.is_set():
                                return
                            time.sleep(0.01)
                            continue
                        if status == 201:
                            with lock:
                                acked[entity] = body["id"]

                threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
                for t in threads:
                    t.start()
                time.sleep(rng.uniform(0.2, 1.2))
                q.kill9()
                stop.set()
                for t in threads:
                    t.join(30)
                q.start(dev=False)
                q.admin_key = key
            # Every acknowledged write is there exactly once (one mitigation per entity).
            self.assertGreater(len(acked), ROUNDS * 10, "too few writes acknowledged to mean anything")
            seen = {}
            cursor = ""
            while True:
                path = "/v1/mitigations?limit=1000" + ("&cursor=" + cursor if cursor else "")
                status, page, _ = q.request("GET", path)
                self.assertEqual(status, 200, page)
                for m in page["mitigations"]:
                    self.assertNotIn(m["entity"], seen, "entity written twice: " + m["entity"])
                    seen[m["entity"]] = m["id"]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            missing = [e for e in acked if seen.get(e) != acked[e]]
            self.assertEqual(missing, [], "%d acknowledged writes lost" % len(missing))
            # The index rebuilt after the last crash answers for them too.
            sample = rng.sample(sorted(acked), 50)
            for e in sample:
                v = q.request("GET", "/v1/check?entity=" + e, key=key)[1]
                self.assertEqual(v["verdict"], "deny", e)
            self.assertEqual(q.stop(), 0)
            code, out, _ = run_cli("audit", "verify", "--data", q.data)
            self.assertIn("ok:", out)
            print("crash test: %d rounds, %d acknowledged writes, all present once" % (ROUNDS, len(acked)))
        finally:
            q.cleanup()


if __name__ == "__main__":
    unittest.main()
