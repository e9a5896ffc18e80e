#!/usr/bin/env python3
"""Writes a realistic sshd auth.log to stdout: fixed seed, syslog timestamps (local time)
ending about an hour ago, mostly noise, with brute-force sessions as Debian's OpenSSH logs
them. Publickey-only scanners (which log nothing but a preauth close) use 198.18.0.0/16."""
import argparse, random, time

p = argparse.ArgumentParser()
p.add_argument("--lines", type=int, default=1_000_000)
p.add_argument("--seed", type=int, default=42)
a = p.parse_args()
rnd = random.Random(a.seed)

attackers = [f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}" for _ in range(4000)]
attackers = [ip for ip in attackers if not ip.startswith(("10.", "127.", "169.254.", "192.168.", "172.", "198.18."))]
attackers += [f"2001:db8:{rnd.randint(0, 0xffff):x}::{rnd.randint(1, 0xffff):x}" for _ in range(500)]
weights = [1.0 / (i + 1) ** 0.8 for i in range(len(attackers))]
scanners = [f"198.18.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}" for _ in range(40)]
users = ["root", "admin", "ubuntu", "test", "oracle", "postgres", "git", "user", "pi", "ftp"]
internal = [f"10.0.{i}.{j}" for i in range(4) for j in range(1, 20)]

t = time.time() - 3600 - a.lines * 0.25
pid = 10_000
out = []

def emit(msg, prog="sshd"):
    global t
    t += rnd.random() * 0.5
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(t))
    out.append(f"{stamp} web1 {prog}[{pid}]: {msg}\n" if prog else f"{stamp} web1 {msg}\n")

while len(out) < a.lines:
    pid += 1
    port = rnd.randint(1024, 65535)
    r = rnd.random()
    if r < 0.55:  # noise
        k = rnd.randrange(7)
        ip = rnd.choice(internal)
        if k == 0:
            emit(f"Accepted publickey for deploy from {ip} port {port} ssh2: ED25519 SHA256:x1y2z3")
            emit("pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)")
        elif k == 1:
            emit(f"Received disconnect from {ip} port {port}:11: disconnected by user")
            emit(f"Disconnected from user deploy {ip} port {port}")
            emit("pam_unix(sshd:session): session closed for user deploy")
        elif k == 2:
            emit("pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)", prog="CRON")
        elif k == 3:
            emit("New session 42 of user deploy.", prog="systemd-logind")
        elif k == 4:
            emit(f"Accepted password for admin from {ip} port {port} ssh2")
        elif k == 5:
            emit("Server listening on 0.0.0.0 port 22.")
        else:
            emit("kernel: [UFW BLOCK] IN=eth0 OUT= SRC=203.0.113.200 DST=192.0.2.1 PROTO=TCP DPT=23", prog=None)
    elif r < 0.58:  # publickey-only scanner: a preauth close and nothing else
        emit(f"Connection closed by authenticating user root {rnd.choice(scanners)} port {port} [preauth]")
    else:  # a brute-force session
        ip = rnd.choices(attackers, weights)[0]
        user = rnd.choice(users)
        if rnd.random() < 0.5:
            emit(f"pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={ip}  user={user}")
            for _ in range(rnd.randint(1, 3)):
                emit(f"Failed password for {user} from {ip} port {port} ssh2")
            if rnd.random() < 0.2:
                emit(f"error: maximum authentication attempts exceeded for {user} from {ip} port {port} ssh2 [preauth]")
            emit(f"Connection closed by authenticating user {user} {ip} port {port} [preauth]")
        else:
            emit(f"Invalid user {user} from {ip} port {port}")
            emit("pam_unix(sshd:auth): check pass; user unknown")
            emit(f"Failed password for invalid user {user} from {ip} port {port} ssh2")
            emit(f"Disconnected from invalid user {user} {ip} port {port} [preauth]")

import sys
sys.stdout.writelines(out[: a.lines])
