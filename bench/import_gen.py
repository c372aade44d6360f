#!/usr/bin/env python3
"""Writes N detections for the import benchmarks to stdout, as NDJSON or CSV (same rows).

usage: import_gen.py N ndjson|csv [USERS]
One row in 4 is a high-confidence bot-model-v3 verdict (the example policy set's
bot-model-high: exclude_royalties, suspend on the 3rd hit); the rest score lower."""
import datetime
import sys

n = int(sys.argv[1])
fmt = sys.argv[2]
users = int(sys.argv[3]) if len(sys.argv) > 3 else 250000
at = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
out = sys.stdout
buf = []
if fmt == "csv":
    out.write("id,source,type,entity,score,observed_at,evidence,related\n")
for i in range(n):
    score = "0.97" if i % 4 == 0 else "0.%d" % (3 + i % 5)
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
