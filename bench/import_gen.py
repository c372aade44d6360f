#!/usr/bin/env python3
"""Writes N detections for the import benchmarks to stdout, as NDJSON or CSV (same rows).

usage: import_gen.py N ndjson|csv [USERS [HIGH_EVERY]]
One row in HIGH_EVERY (4 unless given; 0: none) is a high-confidence bot-model-v3 verdict
(the example policy set's bot-model-high: exclude_royalties, suspend on the 3rd hit); the
rest score lower and earn no decision. The bars are measured with 4."""
import datetime
import sys

n = int(sys.argv[1])
fmt = sys.argv[2]
users = int(sys.argv[3]) if len(sys.argv) > 3 else 250000
high_every = int(sys.argv[4]) if len(sys.argv) > 4 else 4
at = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
out = sys.stdout
buf = []
if fmt == "csv":
    out.write("id,source,type,entity,score,observed_at,evidence,related\n")
for i in range(n):
    score = "0.97" if high_every and i % high_every == 0 else "0.%d" % (3 + i % 5)
    u = i % users
    if fmt == "csv":
        buf.append('r%d,bot-model-v3,artificial_streaming,user:u%d,%s,%s,"{""plays"":%d}",device:d%d\n'
                   % (i, u, score, at, i % 1000, u))
    else:
        buf.append('{"id":"r%d","source":"bot-model-v3","type":"artificial_streaming","entity":"user:u%d",'
                   '"score":%s,"observed_at":"%s","evidence":{"plays":%d},"related":["device:d%d"]}\n'
                   % (i, u, score, at, i % 1000, u))
    if len(buf) >= 10000:
        out.write("".join(buf))
        buf = []
out.write("".join(buf))
