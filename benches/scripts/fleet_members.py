"""A fleet coordinator's CPU with no members and with N members reporting every exchange interval.

    cargo build --profile bench --bin tailscope
    python3 benches/scripts/fleet_members.py [MEMBERS=64] [SECONDS_PER_PHASE=60]

One member, a real `tailscope serve` with `[fleet] role = "member"`, reports once to a capturing server; its report
(budgets, store, unflushed spend) is then sent by MEMBERS threads, each as its own writer id, every second, to a
real coordinator that ingests a steady `tailscope simulate --rate 500` into a shared placement store (a commit a
second). Phases alternate: none, MEMBERS, none, MEMBERS. docs/benchmarks.md has the figures.
"""
import json, os, shutil, subprocess, sys, tempfile, threading, time, urllib.request, http.server

BIN = os.environ.get("TAILSCOPE_BIN", os.path.join(os.path.dirname(__file__), "../../target/release/tailscope"))
ROOT = tempfile.mkdtemp(prefix="tailscope-fleet-")
STORE = f"{ROOT}/store"
MEMBERS = int(sys.argv[1]) if len(sys.argv) > 1 else 64
PHASE_S = int(sys.argv[2]) if len(sys.argv) > 2 else 60

def toml(data, ports, role, extra):
    budgets = "".join(
        f'[[budget]]\nname = "{n}"\nkind = "{k}"\nperiod = "day"\ncap_usd = 1e9\nwarn_at = [1.0]\n'
        for n, k in [("total", "total"), ("egress", "egress"), ("dup", "duplicate_inference")])
    return (f'data_dir = "{data}"\n[server]\notlp_grpc = "127.0.0.1:{ports[0]}"\notlp_http = "127.0.0.1:{ports[1]}"\n'
            f'api = "127.0.0.1:{ports[2]}"\nflight = "127.0.0.1:{ports[3]}"\n{budgets}'
            f'[storage]\nflush_interval = "1s"\n[[storage.placement]]\nname = "fleet"\nurl = "{STORE}"\n'
            f'match = {{ project = ["*"] }}\n[fleet]\nrole = "{role}"\nexchange_interval = "1s"\n{extra}')

os.makedirs(STORE)

# 1. A real member's report, captured.
captured = []
class Capture(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        captured.append(json.loads(body))
        self.send_response(503); self.end_headers()
    def log_message(self, *a): pass
cap = http.server.ThreadingHTTPServer(("127.0.0.1", 19999), Capture)
threading.Thread(target=cap.serve_forever, daemon=True).start()
open(f"{ROOT}/member.toml", "w").write(toml(f"{ROOT}/member", (15317, 15318, 15319, 15320), "member",
                                            'coordinator = "http://127.0.0.1:19999"\n'))
member = subprocess.Popen([BIN, "serve", "--config", f"{ROOT}/member.toml"], stderr=open(f"{ROOT}/member.log", "w"))
sim = subprocess.Popen([BIN, "simulate", "--endpoint", "http://127.0.0.1:15317", "--duration", "5s"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
sim.wait()
deadline = time.time() + 20
while not any(r.get("unflushed") for r in captured) and time.time() < deadline:
    time.sleep(0.2)
member.terminate(); member.wait(); cap.shutdown()
report = next((r for r in captured if r.get("unflushed")), captured[-1])
print("captured report:", len(json.dumps(report)), "bytes, unflushed:", bool(report.get("unflushed")), flush=True)

# 2. The coordinator, with steady traffic (a commit a second).
open(f"{ROOT}/coord.toml", "w").write(toml(f"{ROOT}/coord", (14317, 14318, 14319, 14320), "coordinator", ""))
coord = subprocess.Popen([BIN, "serve", "--config", f"{ROOT}/coord.toml"], stderr=open(f"{ROOT}/coord.log", "w"))
time.sleep(3)
sim = subprocess.Popen([BIN, "simulate", "--endpoint", "http://127.0.0.1:14317", "--rate", "500"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(20)

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def phase(name, n):
    stop = threading.Event()
    errors = []
    def reporter(i):
        body = dict(report, app_id=f"tailscope-wal-{i:032x}")
        data = json.dumps(body).encode()
        while not stop.is_set():
            t = time.time()
            try:
                req = urllib.request.Request("http://127.0.0.1:14319/api/v1/fleet/report", data=data,
                                             headers={"content-type": "application/json"})
                urllib.request.urlopen(req, timeout=5).read()
            except Exception as e:
                errors.append(str(e)[:200])
            stop.wait(max(0, 1 - (time.time() - t)))
    threads = [threading.Thread(target=reporter, args=(i,)) for i in range(n)]
    for t in threads: t.start()
    time.sleep(5)
    c0, w0 = cpu(coord.pid), time.time()
    time.sleep(PHASE_S)
    c1, w1 = cpu(coord.pid), time.time()
    stop.set()
    for t in threads: t.join()
    print(f"{name}: {n} members, coordinator CPU {c1 - c0:.2f} s over {w1 - w0:.1f} s = "
          f"{100 * (c1 - c0) / (w1 - w0):.1f}% of a core; report errors {len(errors)} {errors[:2]}", flush=True)

for rnd in range(2):
    phase(f"round {rnd} none", 0)
    phase(f"round {rnd} fleet", MEMBERS)
sim.terminate(); sim.wait(); coord.terminate(); coord.wait()
print("commits in the store's log:", len([f for f in os.listdir(f"{STORE}/spans/_delta_log") if f.endswith(".json")]))
shutil.rmtree(ROOT, ignore_errors=True)
