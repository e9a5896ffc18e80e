#!/usr/bin/env python3
"""Compares the addresses banshare would ban (scan --json) with those fail2ban would ban
from fail2ban-regex's `-o row` output, using fail2ban's window: maxretry failures within
findtime seconds."""
import ast, json, sys
from collections import defaultdict, deque

banshare_json, f2b_rows, maxretry, findtime = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
report = json.load(open(banshare_json))
sshd = next(f for f in report["filters"] if f["name"] == "sshd")
ours = {b["ip"] for b in sshd["bans"]}

times = defaultdict(list)
for line in open(f2b_rows):
    line = line.strip().rstrip(",")
    if not line.startswith("["):
        continue
    row = ast.literal_eval(line.replace("\t", " "))
    times[row[0]].append(float(row[1]))
theirs = set()
for ip, ts in times.items():
    window = deque()
    for t in sorted(ts):
        window.append(t)
        while window[0] <= t - findtime:
            window.popleft()
        if len(window) >= maxretry:
            theirs.add(ip)
            break

only_ours = sorted(ours - theirs)
only_theirs = sorted(theirs - ours)
silent = [ip for ip in only_ours if ip.startswith("198.18.")]
print(f"banned by both: {len(ours & theirs)}; only banshare: {len(only_ours)} "
      f"({len(silent)} of them publickey-only scanners in 198.18.0.0/16, which fail2ban's normal mode does not count); "
      f"only fail2ban: {len(only_theirs)}")
other = [ip for ip in only_ours if not ip.startswith("198.18.")]
if other or only_theirs:
    print("DIFFERENCES:", other[:10], only_theirs[:10])
    sys.exit(1)
