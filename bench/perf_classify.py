"""Classifies `perf script -F tid,ip,sym` samples of the quell server (DWARF call graphs) by
what the detection path was doing: ledger work on the commit thread (duplicate check,
escalation, create/extend + append, detection insert, commit), evaluation, validation, JSON
parse, reply building, HTTP. Used by bench/detections_http.sh with PERF=1.
Usage: perf script -i perf.data -F tid,ip,sym | python3 bench/perf_classify.py /dev/stdin"""
import sys, re, collections
samples=[]; cur=None
for line in open(sys.argv[1], errors="replace"):
    if not line.strip():
        if cur: samples.append(cur); cur=None
        continue
    if re.match(r"^\s*\d+\s*$", line):
        if cur: samples.append(cur)
        cur=[int(line.split()[0]), []]
    elif cur is not None:
        parts=line.strip().split(None,1)
        cur[1].append(parts[1] if len(parts)>1 else "?")
if cur: samples.append(cur)
by_tid=collections.Counter(t for t,_ in samples)
total=len(samples)
print("samples", total)
for t,n in by_tid.most_common(8): print(" tid", t, n, "%.0f%%" % (100*n/total))
cats=[("ledger: GetDetection (dup check)", r"GetDetection"),
      ("ledger: PriorHits (escalation)", r"PriorHits"),
      ("ledger: CreateOrExtend/Append", r"CreateOrExtend"),
      ("ledger: PutDetection", r"PutDetection"),
      ("ledger: ApplyOne other (reply JSON, StoredDetection)", r"ApplyOne|ApplyDetections"),
      ("ledger: Commit (fsync)", r"::Commit\b|fdatasync|fsync"),
      ("safeguards", r"afeguard"),
      ("engine::Evaluate", r"engine::Evaluate"),
      ("ReadDetection (validation)", r"ReadDetection"),
      ("DetectionToJson", r"DetectionToJson"),
      ("JSON parse (rapidjson)", r"ParseJsonBody|GenericReader"),
      ("detections route other (reply build, items)", r"api::internal::.*Submit|routes_detections"),
      ("http (beast, sockets)", r"boost::beast|boost::asio|http::|epoll|sendmsg|recvmsg|readv|writev"),
]
c=collections.Counter(); per_tid=collections.defaultdict(collections.Counter)
for t,stack in samples:
    s="\n".join(stack)
    for name,pat in cats:
        if re.search(pat,s): c[name]+=1; per_tid[t][name]+=1; break
    else: c["other"]+=1; per_tid[t]["other"]+=1
for name,_ in cats+[("other",None)]:
    print("%-55s %5d %5.1f%%" % (name, c[name], 100*c[name]/total))
top=by_tid.most_common(1)[0][0]
print("busiest thread", top, dict(per_tid[top].most_common(6)))
