"""Propagation delay from a write to a webhook receiver (issue 6 bar: p99 <= 50 ms).

Run from tests/integration with the server binary:
  cd tests/integration && QUELL_BIN=../../build/quell python3 ../../bench/webhook_propagation.py
Creates 300 mitigations one by one and measures, for each, the time from sending the
create to the receiver getting the signed POST for its seq.
"""
import json
import sys
import time

sys.path.insert(0, ".")
from harness import QuellServer  # noqa: E402
from test_webhooks import Receiver, wait_for  # noqa: E402

N = 300
q = QuellServer().start()
r = Receiver().start()
got = {}


def behave(n, body):
    got[json.loads(body)["seq"]] = time.perf_counter()
    return 200


r.behave = behave
q.request("POST", "/v1/webhooks", {"url": r.url})
delays = []
conn = q.connection()
for i in range(N):
    t0 = time.perf_counter()
    st, m, _ = q.request("POST", "/v1/mitigations",
                         {"entity": "ip:10.9.%d.%d" % (i // 250, i % 250), "action": "block",
                          "ttl": "1h", "reason": "bench"}, conn=conn)
    wait_for(lambda: m["seq"] in got, timeout=10)
    delays.append(got[m["seq"]] - t0)
delays.sort()
print("n=%d p50=%.2fms p99=%.2fms max=%.2fms" % (
    len(delays), delays[len(delays) // 2] * 1e3, delays[int(len(delays) * 0.99) - 1] * 1e3,
    delays[-1] * 1e3))
r.stop()
q.cleanup()
