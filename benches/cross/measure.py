#!/usr/bin/env python3
"""Runs the independent client (client.c) against xfer and nginx, as the e2e bench pins
them (servers on core 0, load on core 1), and charges CPU per transfer in every way one
might: the server's processes (utime+stime from /proc/PID/stat, what the e2e bench uses),
core 0 and core 1 as a whole (/proc/stat, softirq included), the softirq threads, and
the client. See BENCHMARKS.md, "Which CPU figure is right".

  cc -O2 -pthread -o /tmp/client benches/cross/client.c
  python3 benches/cross/measure.py XFER_BIN [CASE ...]
  CASE: SERVER:PROTO:CONC[:FLAG,...], e.g. xfer:native:100 nginx:http10:1 xfer:http10:100:early
  PROTO: native, http10, http11 (client.c), wrk (keep-alive), wrkclose (Connection: close)
Traffic goes only to 127.0.0.1; every run is bounded in time (SECS, default 5).
"""
import os, subprocess, sys, tempfile, time

SECS = float(os.environ.get("SECS", "5"))
# PIN=0: no taskset at all (servers and client wherever the scheduler puts them).
PIN = os.environ.get("PIN", "1") != "0"


def pin(core):
    return ["taskset", "-c", core] if PIN else []
CLIENT = os.environ.get("CLIENT", "/tmp/client")
TCK = os.sysconf("SC_CLK_TCK")


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def cores():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:9]]
                busy = sum(v) - v[3] - v[4]
                out[line.split()[0]] = (busy, v[6])  # busy incl. softirq, softirq alone
    return out


def softirqd():
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if open(f"/proc/{p}/comm").read().startswith("ksoftirqd/"):
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_xfer(binary, path):
    p = subprocess.Popen(pin("0") + [binary, "serve", path, "--listen", "127.0.0.1", "--port", "0",
                          "--quiet", "--max-per-ip", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    line = p.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    return p, [p.pid], port


def start_nginx(root):
    d = tempfile.mkdtemp(prefix="cross-nginx-")
    port = free_port()
    user = "user root; " if os.geteuid() == 0 else ""
    conf = f"""daemon off; master_process on; {user}worker_processes 1; worker_rlimit_nofile 65536;
pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 40000; }}
http {{ access_log off; sendfile on; default_type application/octet-stream; types {{ }}
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u;
  scgi_temp_path {d}/s;
  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }} }}
"""
    open(f"{d}/nginx.conf", "w").write(conf)
    p = subprocess.Popen(pin("0") + ["/usr/sbin/nginx", "-p", d, "-e", f"{d}/error.log", "-c",
                          f"{d}/nginx.conf"], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    return p, [p.pid] + [int(k) for k in kids], port


def client_cmd(port, proto, conc, secs, size, name, flags):
    """The client's command line: client.c, or wrk (HTTP/1.1 keep-alive; `wrkclose` sends
    `Connection: close`, so every request is a new connection)."""
    if proto.startswith("wrk"):
        cmd = pin("1") + ["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(secs))}s"]
        if proto == "wrkclose":
            cmd += ["-H", "Connection: close"]
        return cmd + [f"http://127.0.0.1:{port}/{name}"]
    return pin("1") + [CLIENT, "127.0.0.1", str(port), proto, str(conc), str(secs), str(size), name] + flags


def run_case(pids, port, proto, conc, flags, size, name):
    sirq = softirqd()
    s0 = sum(proc_ticks(p) for p in pids)
    master0 = proc_ticks(pids[0]) if len(pids) > 1 else None
    q0 = {p: proc_ticks(p) for p in sirq}
    c0 = cores()
    r0 = os.times()
    out = subprocess.run(client_cmd(port, proto, conc, SECS, size, name, flags), capture_output=True, text=True)
    r1 = os.times()
    c1 = cores()
    s1 = sum(proc_ticks(p) for p in pids)
    master = proc_ticks(pids[0]) if len(pids) > 1 else None
    q1 = {p: proc_ticks(p) for p in sirq}
    if proto.startswith("wrk"):
        # "N requests in S s, ..." and "Non-2xx or 3xx responses: M" / socket errors.
        text = out.stdout
        import re
        m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
        ok = int(m.group(1))
        el = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
        bad = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
        rate = ok / el
    else:
        ok, bad, el, rate = out.stdout.split()
        ok = int(ok)
    us = lambda ticks: ticks * 1e6 / TCK / max(ok, 1)
    d = {k: (c1[k][0] - c0[k][0], c1[k][1] - c0[k][1]) for k in c1}
    comm = {p: open(f"/proc/{p}/comm").read().strip() for p in sirq}
    sq = {comm[p]: q1[p] - q0[p] for p in sirq}
    client = (r1.children_user + r1.children_system - r0.children_user - r0.children_system) * 1e6 / max(ok, 1)
    if master is not None and master != master0:
        print(f"  (nginx master: {master - master0} ticks)")
    return dict(ok=ok, bad=int(bad), rate=float(rate), server=us(s1 - s0), core0=us(d["cpu0"][0]),
                core0_sirq=us(d["cpu0"][1]), core1=us(d["cpu1"][0]), ksirqd0=us(sq.get("ksoftirqd/0", 0)),
                client=client)


def main():
    binary = sys.argv[1]
    cases = sys.argv[2:] or ["xfer:native:100", "nginx:http10:100"]
    data = tempfile.mkdtemp(prefix="cross-data-")
    size = int(os.environ.get("SIZE", "80"))
    name = "small.bin"
    with open(f"{data}/{name}", "wb") as f:
        f.write(os.urandom(size))
    print(f"{'case':34} {'ok/s':>7} {'server':>8} {'core0':>8} {'c0 sirq':>8} {'ksirqd0':>8} {'core1':>8} "
          f"{'client':>8}   (µs per transfer)")
    for case in cases:
        parts = case.split(":")
        server, proto, conc = parts[0], parts[1], int(parts[2])
        flags = parts[3].split(",") if len(parts) > 3 else []
        p, pids, port = start_xfer(binary, f"{data}/{name}") if server == "xfer" else start_nginx(data)
        try:
            subprocess.run(client_cmd(port, proto, conc, 1, size, name, flags), capture_output=True)  # warm-up
            time.sleep(0.2)
            r = run_case(pids, port, proto, conc, flags, size, name)
        finally:
            p.terminate()
            p.wait()
        print(f"{case:34} {r['rate']:7.0f} {r['server']:8.1f} {r['core0']:8.1f} {r['core0_sirq']:8.1f} "
              f"{r['ksirqd0']:8.1f} {r['core1']:8.1f} {r['client']:8.1f}" + (f"  bad {r['bad']}" if r['bad'] else ""))
        time.sleep(0.5)


main()
