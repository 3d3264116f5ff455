"""Numbers for scripts/bench-peers.sh: server-side counts, h2load results, the table and JSON.

  report.py metrics URL...              sum the pas task counters of /metrics pages -> JSON
                                        {"ok": dry runs finished, "bad": other outcomes,
                                         "per_backend": {programmer_id: ok}}
  report.py nginx LOG...                count the status lines of nginx access logs -> same JSON
                                        (per_backend keyed by log file name)
  report.py phase OUT.json key=value... h2load stdout + --log-file + counts -> one phase record
  report.py final RESULTS_DIR OUT.json  all phase records -> markdown table (stdout) + JSON;
                                        exit 1 if a request was not verified server-side

Latency percentiles come from h2load's --log-file (per request: start, status, microseconds to the
end of the response), not from its summary, which only has mean, sd and max.
"""

import json
import pathlib
import re
import sys
import urllib.request

OK_OUTCOME = "dry_run"  # a dry run's result outcome label (services/telemetry/metrics.rs)
COUNTERS = ("pas_pool_tasks_total", "pas_programmer_tasks_total")
LINE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+]+)$')


def labels(text: str) -> dict:
    return dict(re.findall(r'(\w+)="([^"]*)"', text))


def metrics(urls: list[str]) -> dict:
    ok = bad = 0
    per: dict[str, int] = {}
    for url in urls:
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        for line in body.splitlines():
            m = LINE.match(line)
            if not m or m.group(1) not in COUNTERS:
                continue
            lab, n = labels(m.group(2)), int(float(m.group(3)))
            if lab.get("outcome") == OK_OUTCOME:
                ok += n
                per[lab.get("programmer_id", "?")] = per.get(lab.get("programmer_id", "?"), 0) + n
            else:
                bad += n
    return {"ok": ok, "bad": bad, "per_backend": per}


def nginx(logs: list[str]) -> dict:
    """Chat completions answered 200 (ok), answered otherwise (bad), and other requests a router
    made on its own (other: e.g. LiteLLM asks each deployment something once, by itself)."""
    ok = bad = other = 0
    per: dict[str, int] = {}
    for log in logs:
        name = pathlib.Path(log).stem
        n_ok = 0
        if pathlib.Path(log).exists():
            for line in open(log):
                cols = line.split(" ")
                if len(cols) < 3:
                    continue
                if cols[1:3] != ["POST", "/v1/chat/completions"]:
                    other += 1
                elif cols[0] == "200":
                    n_ok += 1
                else:
                    bad += 1
        per[name] = n_ok
        ok += n_ok
    return {"ok": ok, "bad": bad, "other": other, "per_backend": per}


def delta(before: dict, after: dict) -> dict:
    keys = set(before["per_backend"]) | set(after["per_backend"])
    out = {k: after[k] - before[k] for k in after if k != "per_backend"}
    out["per_backend"] = {k: after["per_backend"].get(k, 0) - before["per_backend"].get(k, 0) for k in sorted(keys)}
    return out


def h2load_summary(text: str) -> dict:
    out = {}
    m = re.search(r"finished in ([0-9.]+)(m?s), ([0-9.]+) req/s", text)
    if m:
        out["seconds"] = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        out["req_per_s"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        for k, v in zip(("total", "started", "done", "succeeded", "failed", "errored", "timeout"), m.groups()):
            out[k] = int(v)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["status_2xx"], out["status_3xx"], out["status_4xx"], out["status_5xx"] = map(int, m.groups())
    return out


def percentile(sorted_us: list[int], q: float) -> float:
    # Nearest rank.
    if not sorted_us:
        return float("nan")
    i = min(len(sorted_us) - 1, max(0, int(round(q * len(sorted_us) + 0.5)) - 1))
    return sorted_us[i] / 1000.0


def latencies(*logs: str) -> dict:
    us = []
    for log in logs:
        for line in open(log):
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] == "200":
                us.append(int(cols[2]))
    us.sort()
    mean = sum(us) / len(us) / 1000.0 if us else float("nan")
    return {"n": len(us), "p50_ms": percentile(us, 0.50), "p90_ms": percentile(us, 0.90),
            "p99_ms": percentile(us, 0.99), "mean_ms": mean}


def phase(out: str, kv: list[str]) -> None:
    a = dict(x.split("=", 1) for x in kv)
    rec = {"system": a["system"], "kind": a["kind"], "callers": int(a["callers"]), "round": int(a["round"]),
           "requests": int(a["requests"]), "log": a["log"]}
    # The direct side may be several h2load runs at once (one per backend): add them up.
    parts = [h2load_summary(open(f).read()) for f in a["h2load_out"].split(",")]
    rec["h2load"] = {k: sum(x.get(k, 0) for x in parts) for k in parts[0] if k not in ("seconds", "req_per_s")}
    rec["h2load"]["seconds"] = max(x.get("seconds", 0.0) for x in parts)
    rec["h2load"]["req_per_s"] = rec["h2load"].get("succeeded", 0) / rec["h2load"]["seconds"] if rec["h2load"]["seconds"] else 0.0
    rec["latency"] = latencies(a["log"])
    rec["server"] = delta(json.load(open(a["before"])), json.load(open(a["after"])))
    if "cpu_before" in a:
        rec["router_cpu_s"] = round(float(a["cpu_after"]) - float(a["cpu_before"]), 3)
    n = rec["requests"]
    problems = []
    if rec["h2load"].get("succeeded") != n:
        problems.append(f"h2load succeeded {rec['h2load'].get('succeeded')} of {n}")
    if rec["server"]["ok"] != n:
        problems.append(f"server-side successes {rec['server']['ok']} for {n} requests")
    if rec["server"]["bad"]:
        problems.append(f"server-side failures {rec['server']['bad']}")
    if "router_ok" in rec["server"] and (rec["server"]["router_ok"] != n or rec["server"]["router_bad"]):
        problems.append(f"router-side successes {rec['server']['router_ok']}, failures {rec['server']['router_bad']} for {n} requests")
    if rec["kind"] == "router":
        # Reported, not a failure: a least-busy / least-loaded router with one caller finds every
        # backend idle and may keep picking the first.
        rec["backends_used"] = sum(1 for v in rec["server"]["per_backend"].values() if v > 0)
    rec["verified"] = not problems
    rec["problems"] = problems
    json.dump(rec, open(out, "w"), indent=1)
    print(("verified" if not problems else "NOT VERIFIED: " + "; ".join(problems)), file=sys.stderr)


def fmt(x: float, unit: str = "") -> str:
    if x != x:  # NaN
        return "—"
    return f"{x:.2f}{unit}" if abs(x) < 100 else f"{x:.0f}{unit}"


def final(results: str, out: str) -> None:
    d = pathlib.Path(results)
    meta = json.load(open(d / "meta.json"))
    phases = [json.load(open(p)) for p in sorted(d.glob("phase-*.json")) if p.name.count(".") == 1]
    systems = meta["systems"]
    def combined(sysname: str, kind: str, callers: int):
        """The rounds of one side of one comparison, added up."""
        runs = [p for p in phases if (p["system"], p["kind"], p["callers"]) == (sysname, kind, callers)]
        if not runs:
            return None
        requests = sum(p["requests"] for p in runs)
        seconds = sum(p["h2load"].get("seconds", 0.0) for p in runs)
        return {
            "rounds": len(runs), "requests": requests,
            "latency": latencies(*(p["log"] for p in runs)),
            "req_per_s": requests / seconds if seconds else float("nan"),
            "ok": sum(p["server"]["ok"] for p in runs),
            "cpu_s": sum(p.get("router_cpu_s", 0.0) for p in runs),
            "per_backend": {k: sum(p["server"]["per_backend"].get(k, 0) for p in runs)
                            for k in sorted({k for p in runs for k in p["server"]["per_backend"]})},
            "other": sum(p["server"].get("other", 0) for p in runs),
            "verified": all(p["verified"] for p in runs),
            "problems": [f"round {p['round']} {p['kind']}: {x}" for p in runs for x in p["problems"]],
        }

    rows = []
    for sysname in systems:
        s = meta["system_info"][sysname]
        for callers in meta["callers"]:
            direct, router = combined(sysname, "direct", callers), combined(sysname, "router", callers)
            if not direct or not router:
                continue
            per = router["per_backend"].values()
            rows.append({
                "system": sysname, "version": s["version"], "callers": callers,
                "direct_requests": direct["requests"], "router_requests": router["requests"],
                "direct_p50_ms": direct["latency"]["p50_ms"], "direct_p99_ms": direct["latency"]["p99_ms"],
                "router_p50_ms": router["latency"]["p50_ms"], "router_p99_ms": router["latency"]["p99_ms"],
                "added_p50_ms": router["latency"]["p50_ms"] - direct["latency"]["p50_ms"],
                "added_p99_ms": router["latency"]["p99_ms"] - direct["latency"]["p99_ms"],
                "direct_req_per_s": direct["req_per_s"], "router_req_per_s": router["req_per_s"],
                "router_cpu_ms_per_req": 1000.0 * router["cpu_s"] / max(1, router["ok"]),
                "backends_used": sum(1 for v in per if v > 0),
                "backend_min": min(per or [0]), "backend_max": max(per or [0]),
                "router_side_requests": router["other"],
                "idle_rss_mib": s["idle_kib"][0] / 1024, "idle_pss_mib": s["idle_kib"][1] / 1024,
                "peak_rss_mib": s["peak_kib"][0] / 1024, "peak_pss_mib": s["peak_kib"][1] / 1024,
                "verified": direct["verified"] and router["verified"],
                "problems": direct["problems"] + router["problems"],
            })
    doc = {"meta": meta, "rows": rows, "phases": phases}
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    json.dump(doc, open(out, "w"), indent=1)

    pressure = ", ".join(f"{k} {v}" for k, v in meta.get("pressure_avg300", {}).items())
    print(f"bench-peers — {meta['date']} — {meta['host']} ({meta['cpus']} CPUs); {meta['load_note']}; "
          f"loadavg at the end {' '.join(meta['loadavg_at_end'])}; pressure (share of time stalled, 5 min) {pressure}")
    print(f"h2load {meta['h2load']}: HTTP/2 (gRPC) to ours, HTTP/1.1 to the peers; {meta['per_phase_s']} s per phase after a "
          f"{meta['warmup_s']} s warm-up, in {meta['rounds']} alternating direct/router rounds; N callers = -c N -m 1 (N connections, one request at a time each)")
    print()
    print("| system | callers | direct p50 / p99 (ms) | via router p50 / p99 (ms) | added p50 | added p99 | "
          "throughput direct → router (req/s) | router CPU / req | backends (min–max req) | RSS idle → peak | PSS idle → peak | verified |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['system']} {r['version']} | {r['callers']} "
              f"| {fmt(r['direct_p50_ms'])} / {fmt(r['direct_p99_ms'])} "
              f"| {fmt(r['router_p50_ms'])} / {fmt(r['router_p99_ms'])} "
              f"| **{fmt(r['added_p50_ms'], ' ms')}** | **{fmt(r['added_p99_ms'], ' ms')}** "
              f"| {r['direct_req_per_s']:.0f} → {r['router_req_per_s']:.0f} "
              f"| {fmt(r['router_cpu_ms_per_req'], ' ms')} "
              f"| {r['backends_used']}/10 ({r['backend_min']}–{r['backend_max']}) "
              f"| {r['idle_rss_mib']:.0f} → {r['peak_rss_mib']:.0f} MiB | {r['idle_pss_mib']:.0f} → {r['peak_pss_mib']:.0f} MiB "
              f"| {'yes' if r['verified'] else 'NO: ' + '; '.join(r['problems'])} |")
    print()
    for sysname in systems:
        print(f"- {sysname}: {meta['system_info'][sysname]['what']}")
    print(f"\nJSON: {out}")
    if not all(r["verified"] for r in rows):
        sys.exit(1)


def main() -> None:
    cmd = sys.argv[1]
    if cmd == "metrics":
        urls = sys.argv[2:]
        if urls[0] == "--router":
            router, out = metrics([urls[1]]), metrics(urls[2:])
            out["router_ok"], out["router_bad"] = router["ok"], router["bad"]
        else:
            out = metrics(urls)
        print(json.dumps(out))
    elif cmd == "nginx":
        print(json.dumps(nginx(sys.argv[2:])))
    elif cmd == "phase":
        phase(sys.argv[2], sys.argv[3:])
    elif cmd == "final":
        final(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
