#!/usr/bin/env python3
"""Results of bench/run.sh: record helpers and the report.

    report.py report RESULTS.jsonl [--doc docs/benchmarks.md] [--img-dir docs/img]
        Writes the generated section of the doc (between the bench:run.sh markers) and
        the PNG plots. Medians over runs; missing or failed points show as n/a.
    report.py meta --argv TEXT [--param key=value …]            (used by run.sh)
    report.py annotate --line JSON --scenario … --cmd …          (used by run.sh)
    report.py event --kind serve|broker|error|end …              (used by run.sh)

The record helpers need only the standard library (run.sh calls them with the system
python3); `report` needs matplotlib (run.sh installs it into a throwaway virtualenv).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

BEGIN = "<!-- bench:run.sh begin -->"
END = "<!-- bench:run.sh end -->"
BACKPLANES = ["rabbitmq", "redis-broadcast", "redis-channels"]
NAMES = {
    "rabbitmq": "RabbitMQ",
    "redis-broadcast": "Redis broadcast",
    "redis-channels": "Redis channels",
    "memory": "in-memory",
}
COLORS = {"rabbitmq": "#ff6600", "redis-broadcast": "#a41e11", "redis-channels": "#1f77b4", "memory": "#555555"}
TARGET_CPU_US = 100.0
TARGET_P99_MS = 10.0
TARGET_RSS_KB = 10.0  # KB = 1000 bytes, as in the hand-written sections of docs/benchmarks.md
TARGET_REACHABLE_S = 5.0
ACHIEVED_FRACTION = 0.98  # "10,000 msgs/s" counts as sustained when ≥ 98 % of the offered rate was sent


# ----------------------------------------------------------------------------- records

def command_output(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    os_name = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "os": os_name,
        "mem_total_gib": round(mem_kib / 1048576, 1) if mem_kib else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cmd_meta(args):
    params = {}
    for item in args.param or []:
        key, _, value = item.partition("=")
        params[key] = value
    versions = {
        "rabbitmq-server": command_output(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"]),
        "redis-server": command_output(["dpkg-query", "-W", "-f=${Version}", "redis-server"]),
    }
    git = {
        "commit": command_output(["git", "rev-parse", "--short", "HEAD"]),
        "dirty": bool(command_output(["git", "status", "--porcelain", "--untracked-files=no"])),
    }
    print(json.dumps({"record": "meta", "argv": args.argv, "params": params, "machine": machine(),
                      "versions": versions, "git": git}, separators=(",", ":")))


def cmd_annotate(args):
    obj = None
    error = None
    if args.line:
        try:
            obj = json.loads(args.line)
            if not isinstance(obj, dict):
                obj, error = None, "JSON line is not an object"
        except ValueError as e:
            error = f"unreadable JSON line ({e})"
    if obj is None:
        obj = {"scenario": args.scenario, "label": args.backplane}
        if args.rc == "dry-run":
            obj["dry_run"] = True
        else:
            error = error or "no JSON line in the output"
    if args.rc not in ("0", "dry-run"):
        error = f"exit status {args.rc}" + (f"; {error}" if error else "")
        if args.rc in ("124", "137"):
            error += " (timed out)"
    if error:
        obj["error"] = error
        if args.tail:
            obj["error_tail"] = args.tail[-300:]
    obj.setdefault("scenario", args.scenario)
    obj["bench"] = {
        "backplane": args.backplane,
        "gateways": int(args.gateways),
        "run": int(args.run),
        "group": args.group,
        "part": int(args.part or 0),
        "parts": int(args.parts) if args.parts else 0,
        "rc": args.rc,
        "cmd": args.cmd,
    }
    print(json.dumps(obj, separators=(",", ":")))


def cmd_event(args):
    obj = {"record": args.kind}
    for key in ("name", "backplane", "pid", "comm", "message"):
        value = getattr(args, key)
        if value is not None:
            obj[key] = value
    if args.gateways is not None:
        obj["gateways"] = int(args.gateways)
    if args.cmd:
        obj["cmds"] = args.cmd
    obj["time"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(json.dumps(obj, separators=(",", ":")))


# ----------------------------------------------------------------------------- loading

def flatten(obj, prefix=""):
    out = {}
    for key, value in obj.items():
        name = prefix + key
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)):
            out[name] = value
    return out


class Results:
    def __init__(self, path):
        self.path = path
        self.meta = None
        self.events = []
        self.errors = []  # (where, message)
        self.raw = []
        self.ordered = []  # every record in file order (for the commands)
        self.bad_lines = 0
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    self.bad_lines += 1
                    self.errors.append((f"line {number}", "not JSON"))
                    continue
                self.ordered.append(obj)
                if obj.get("record") == "meta":
                    self.meta = self.meta or obj
                elif "scenario" in obj:
                    self.raw.append(obj)
                else:
                    self.events.append(obj)
                    if obj.get("record") == "error":
                        where = f"{obj.get('backplane', '?')}, {obj.get('gateways', '?')} gateways"
                        if obj.get("name"):
                            where = f"{obj['name']} ({where})"
                        self.errors.append((where, obj.get("message", "")))
        self.params = (self.meta or {}).get("params", {})
        self.quick = self.params.get("quick") == "yes"
        self.dry_run = self.params.get("dry_run") == "yes" or (self.raw and all(r.get("dry_run") for r in self.raw))
        self.measurements = self._merge_parts()
        self.points = self._aggregate()

    @staticmethod
    def where(r):
        b = r.get("bench", {})
        text = f"{r.get('scenario')} on {b.get('backplane', r.get('label', '?'))}, {b.get('gateways', r.get('gateways', '?'))} gateways"
        if r.get("scenario") in ("direct", "room", "fanout") and "rate" in r:
            text += f", {r['rate']:,}/s"
        return text + f", run {b.get('run', '?')}" + (f" part {b['part']}/{b['parts']}" if b.get("parts") else "")

    def _merge_parts(self):
        """One measurement per bench run; the parallel parts of an idle group summed."""
        single, groups = [], {}
        for r in self.raw:
            if r.get("dry_run"):
                continue
            if r.get("error"):
                self.errors.append((self.where(r), r["error"] + (f" — {r['error_tail']}" if r.get("error_tail") else "")))
            b = r.get("bench", {})
            if b.get("parts"):
                groups.setdefault(b.get("group"), []).append(r)
            elif not r.get("error"):
                single.append(r)
        for group, parts in groups.items():
            b = dict(parts[0]["bench"])
            good = [p for p in parts if not p.get("error")]
            if len(good) < b["parts"]:
                self.errors.append((f"idle group {group}", f"{len(good)} of {b['parts']} parts succeeded; group left out"))
                continue
            users = sum(p.get("users", 0) for p in good)
            rss = [(p.get("rss_kb_per_connection"), p.get("users", 0)) for p in good]
            merged = {"scenario": "idle", "label": b["backplane"], "users": users, "gateways": len(good), "bench": b}
            if all(v is not None for v, _ in rss) and users:
                merged["rss_kb_per_connection"] = sum(v * n for v, n in rss) / users
            accepted = [p.get("connect", {}).get("accepted_per_s") for p in good]
            if all(a is not None for a in accepted):
                merged["connect"] = {"accepted_per_s": sum(accepted)}
                reach = [p.get("connect", {}).get("all_reachable_s") for p in good]
                if all(x is not None for x in reach):
                    merged["connect"]["all_reachable_s"] = max(reach)
            merged["bench"]["cmds"] = [p["bench"]["cmd"] for p in sorted(good, key=lambda p: p["bench"]["part"])]
            single.append(merged)
        return single

    @staticmethod
    def key(r):
        b = r.get("bench", {})
        rate = r.get("rate") if r.get("scenario") in ("direct", "room", "fanout") else None
        return (r.get("scenario"), b.get("backplane", r.get("label")), b.get("gateways", r.get("gateways")), rate,
                r.get("users"))

    def _aggregate(self):
        runs = {}
        for r in self.measurements:
            runs.setdefault(self.key(r), []).append(r)
        points = {}
        for key, rs in runs.items():
            flats = [flatten(r) for r in rs]
            agg = {}
            for name in sorted({n for f in flats for n in f}):
                values = [f[name] for f in flats if name in f]
                agg[name] = statistics.median(values)
            agg["runs"] = len(rs)
            for name in ("lost", "duplicated"):
                values = [f[name] for f in flats if name in f]
                agg[name + ".worst"] = max(values) if values else None
            agg["_cmd"] = rs[0].get("bench", {}).get("cmds") or rs[0].get("bench", {}).get("cmd")
            agg["_first"] = rs[0]
            points[key] = agg
        return points

    def find(self, scenario, backplane, gateways=None, rate=None, users=None):
        """The aggregated point, or None. Unspecified keys match any (the first found)."""
        for (s, b, g, r, u), agg in sorted(self.points.items(), key=lambda kv: str(kv[0])):
            if s != scenario or b != backplane:
                continue
            if gateways is not None and g != gateways:
                continue
            if rate is not None and r != rate:
                continue
            if users is not None and u != users:
                continue
            return agg
        return None

    def values(self, field, scenario=None):
        return sorted({k[field] for k in self.points if (scenario is None or k[0] == scenario) and k[field] is not None})

    def param_list(self, name, default):
        text = self.params.get(name)
        if not text:
            return default
        try:
            return [int(x) for x in text.split()]
        except ValueError:
            return text.split()


# ----------------------------------------------------------------------------- formatting

def num(value, digits=1):
    if value is None:
        return "n/a"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 100:
        return f"{int(round(value)):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.{max(digits - 1, 0)}f}" if digits > 1 else f"{value:.1f}"
    return f"{value:.{digits}f}"


def kib(value):
    """RSS per connection as reported (kB of /proc = KiB), shown with KB beside it."""
    if value is None:
        return "n/a"
    return f"{value:.1f} KiB ({value * 1.024:.1f} KB)"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def get(agg, name):
    return None if agg is None else agg.get(name)


def expected_amplification(backplane, gateways):
    return float(gateways) if backplane == "redis-broadcast" else 1.0


# ----------------------------------------------------------------------------- plots

def plots(res, img_dir, backplanes, gateway_counts, cpu_rate):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    made = {}
    subtitle = f"{res.params.get('users', '?')} users, {res.params.get('duration_s', '?')} s per point, median of {res.params.get('runs', '?')} runs"
    if res.quick:
        subtitle += " — QUICK SMOKE RUN, not a measurement"

    # Latency vs offered rate at 2 gateways (or the smallest count measured).
    g_lat = 2 if 2 in gateway_counts else (gateway_counts[0] if gateway_counts else 2)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    drawn = False
    for bp in backplanes:
        pts = sorted((k[3], agg) for k, agg in res.points.items()
                     if k[0] == "direct" and k[1] == bp and k[2] == g_lat and k[3] is not None)
        xs = [r for r, a in pts if a.get("latency_ms.p50") is not None]
        if not xs:
            continue
        drawn = True
        color = COLORS.get(bp)
        ax.plot(xs, [a["latency_ms.p50"] for r, a in pts if a.get("latency_ms.p50") is not None],
                marker="o", color=color, label=f"{NAMES.get(bp, bp)} p50")
        ys99 = [(r, a.get("latency_ms.p99")) for r, a in pts if a.get("latency_ms.p99") is not None]
        ax.plot([r for r, _ in ys99], [v for _, v in ys99], marker="s", linestyle="--", color=color,
                label=f"{NAMES.get(bp, bp)} p99")
    if drawn:
        ax.axhline(TARGET_P99_MS, color="grey", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[0], TARGET_P99_MS * 1.08, " p99 target 10 ms", color="grey", fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("offered direct messages per second (total)")
        ax.set_ylabel("end-to-end latency (ms, log scale)")
        ax.set_title(f"Direct messages: latency vs offered rate, {g_lat} gateways\n{subtitle}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = os.path.join(img_dir, "bench-latency-vs-rate.png")
        fig.savefig(path)
        made["latency"] = path
    plt.close(fig)

    # CPU per delivered message vs number of gateways at cpu_rate.
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    drawn = False
    for bp in backplanes:
        pts = [(g, res.find("direct", bp, g, cpu_rate)) for g in gateway_counts]
        total = [(g, get(a, "cpu_us_per_msg.total")) for g, a in pts if get(a, "cpu_us_per_msg.total") is not None]
        gw = [(g, get(a, "cpu_us_per_msg.gateways")) for g, a in pts if get(a, "cpu_us_per_msg.gateways") is not None]
        if not total:
            continue
        drawn = True
        color = COLORS.get(bp)
        ax.plot([g for g, _ in total], [v for _, v in total], marker="o", color=color,
                label=f"{NAMES.get(bp, bp)}: gateways + broker")
        if gw:
            ax.plot([g for g, _ in gw], [v for _, v in gw], marker="^", linestyle="--", color=color, alpha=0.7,
                    label=f"{NAMES.get(bp, bp)}: gateways only")
    if drawn:
        ax.set_xlim(min(gateway_counts) - 0.5, max(gateway_counts) + 0.5)
        ax.axhline(TARGET_CPU_US, color="grey", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[0], TARGET_CPU_US * 1.02, " target 100 µs (2 gateways, 5,000/s)", color="grey", fontsize=8)
        if cpu_rate == 5000:
            ax.axhline(114, color="#2ca02c", linestyle="-.", linewidth=1)
            ax.text(ax.get_xlim()[0], 114 * 1.02, " nginx+nchan+Redis 114 µs (reference)", color="#2ca02c", fontsize=8)
        ax.set_xticks(gateway_counts)
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 130))
        ax.set_xlabel("gateways")
        ax.set_ylabel("CPU µs per delivered message")
        ax.set_title(f"Direct messages at {cpu_rate:,}/s: CPU per delivered message vs gateways\n{subtitle}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = os.path.join(img_dir, "bench-cpu-vs-gateways.png")
        fig.savefig(path)
        made["cpu"] = path
    plt.close(fig)

    # Amplification and subscription cost, per backplane and gateway count.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    width = 0.8 / max(len(gateway_counts), 1)
    drawn = False
    for j, g in enumerate(gateway_counts):
        xs = [i + (j - (len(gateway_counts) - 1) / 2) * width for i in range(len(backplanes))]
        amp = [amplification(res, bp, g) for bp in backplanes]
        subs = [get(res.find("connect", bp, g), "subscriptions_per_s") for bp in backplanes]
        if any(v is not None for v in amp + subs):
            drawn = True
        bars = ax1.bar(xs, [v or 0 for v in amp], width, label=f"{g} gateways", alpha=0.85)
        for x, v, bp in zip(xs, amp, backplanes):
            ax1.text(x, (v or 0) + 0.05, "n/a" if v is None else f"{v:.2f}", ha="center", fontsize=7)
            ax1.plot([x - width / 2, x + width / 2], [expected_amplification(bp, g)] * 2, color="black", linewidth=1)
        ax2.bar(xs, [v or 0 for v in subs], width, label=f"{g} gateways", alpha=0.85, color=bars.patches[0].get_facecolor())
        for x, v in zip(xs, subs):
            ax2.text(x, (v or 0), "n/a" if v is None else f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
    if drawn:
        for ax in (ax1, ax2):
            ax.set_xticks(range(len(backplanes)))
            ax.set_xticklabels([NAMES.get(bp, bp) for bp in backplanes], fontsize=8)
            ax.legend(fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        ax1.set_ylabel("backplane messages received per direct message")
        ax1.set_title("Amplification (black line: expected)", fontsize=9)
        ax2.set_ylabel("binds / subscribes per second")
        ax2.set_title(f"Subscription cost: connect storm of {int(res.params.get('connect_users') or 0):,} users", fontsize=9)
        fig.suptitle(subtitle, fontsize=8)
        fig.tight_layout()
        path = os.path.join(img_dir, "bench-amplification-subscriptions.png")
        fig.savefig(path)
        made["amplification"] = path
    plt.close(fig)
    return made


def amplification(res, backplane, gateways):
    """Median over the direct points of a configuration (it should not depend on the rate)."""
    values = [agg.get("amplification") for k, agg in res.points.items()
              if k[0] == "direct" and k[1] == backplane and k[2] == gateways and agg.get("amplification") is not None]
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- report

def met(ok):
    if ok is None:
        return "n/a"
    return "**met**" if ok else "**missed**"


def render(res, doc_path, img_dir, made, backplanes, gateway_counts, rates, cpu_rate):
    out = []
    meta = res.meta or {}
    m = meta.get("machine") or machine()
    params = res.params
    runs = params.get("runs", "?")
    rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(doc_path)) or ".")  # noqa: E731

    out.append("## Backplanes: RabbitMQ and Redis, 2 and 4 gateways (generated)")
    out.append("")
    out.append("This section is generated by `bench/run.sh` (with `bench/report.py`); do not edit it by hand. "
               f"Results file: `{display_path(res.path)}` (git-ignored, kept where the run was made). "
               f"Every figure is the median of {runs} run{'' if str(runs) == '1' else 's'} "
               "(lost and duplicated: the worst run). CPU is user+system time of the gateway and broker "
               "processes (from `/proc/<pid>/stat`) during the sending phase, divided by the messages "
               "delivered; the load generator's own CPU is not counted, but it shares the same cores.")
    out.append("")
    if res.quick:
        out.append("> **Quick smoke run** (`--quick`): small sizes and one run; these numbers show that the "
                   "pipeline works and are not measurements.")
        out.append("")
    if res.dry_run:
        out.append("> **Dry run** (`--dry-run`): services were started and stopped, no load was generated.")
        out.append("")
    if meta:
        v = meta.get("versions", {})
        git = meta.get("git", {})
        out.append(f"Machine: {m.get('nproc')} cores ({m.get('cpu_model') or 'unknown CPU'}), "
                   f"{m.get('mem_total_gib')} GiB, {m.get('os') or 'Linux'}, kernel {m.get('kernel')}; "
                   f"run {m.get('date')}; RabbitMQ {v.get('rabbitmq-server') or '?'}, Redis {v.get('redis-server') or '?'}; "
                   f"commit {git.get('commit') or '?'}{' with local changes' if git.get('dirty') else ''}; "
                   f"Swift: {params.get('swift') or 'not recorded'}. "
                   "Load generator, gateways and broker share these cores.")
    else:
        out.append(f"Machine (no meta record in the results; this is the machine the report ran on): "
                   f"{m['nproc']} cores ({m['cpu_model']}), kernel {m['kernel']}, {m['date']}.")
    out.append("")

    # Targets
    out.append("### Targets")
    out.append("")
    rows = []
    for bp in backplanes:
        a = res.find("direct", bp, 2, 5000)
        v = get(a, "cpu_us_per_msg.total")
        rows.append([f"Gateway+broker CPU per delivered direct message, 2 gateways, 5,000 msgs/s — {NAMES[bp]}",
                     f"< {TARGET_CPU_US:.0f} µs", "n/a" if v is None else f"{num(v)} µs "
                     f"(gateways {num(get(a, 'cpu_us_per_msg.gateways'))}, broker {num(get(a, 'cpu_us_per_msg.brokers'))})",
                     met(None if v is None else v < TARGET_CPU_US)])
    for bp in backplanes:
        a = res.find("direct", bp, 2, 10000)
        p99, lost, ach = get(a, "latency_ms.p99"), get(a, "lost.worst"), get(a, "achieved_rate")
        ok = None
        if p99 is not None and lost is not None and ach is not None:
            ok = p99 < TARGET_P99_MS and lost == 0 and ach >= ACHIEVED_FRACTION * 10000
        rows.append([f"10,000 direct msgs/s across 2 gateways — {NAMES[bp]}",
                     f"p99 < {TARGET_P99_MS:.0f} ms, 0 lost, ≥ {ACHIEVED_FRACTION * 10000:,.0f}/s sent",
                     "n/a" if a is None else f"p99 {num(p99, 2)} ms, {num(lost, 0)} lost (worst run), {num(ach, 0)}/s sent",
                     met(ok)])
    r4 = {bp: get(res.find("direct", bp, 4, cpu_rate), "cpu_us_per_msg.total") for bp in BACKPLANES}
    ok = None if r4["rabbitmq"] is None or r4["redis-broadcast"] is None else r4["rabbitmq"] < r4["redis-broadcast"]
    rows.append([f"CPU per delivered direct message at 4 gateways ({cpu_rate:,} msgs/s): RabbitMQ below Redis broadcast",
                 "RabbitMQ < Redis broadcast",
                 f"RabbitMQ {num(r4['rabbitmq'])} µs, Redis broadcast {num(r4['redis-broadcast'])} µs; "
                 f"Redis channels {num(r4['redis-channels'])} µs"
                 + ("" if r4["rabbitmq"] is None or r4["redis-channels"] is None else
                    f" (RabbitMQ {'below' if r4['rabbitmq'] < r4['redis-channels'] else 'above'} channels)"),
                 met(ok)])
    a = res.find("idle", "memory", 1, users=19000)
    v = get(a, "rss_kb_per_connection")
    rows.append(["RSS per idle connection, 19,000 connections on one gateway (in-memory backplane)",
                 f"< {TARGET_RSS_KB:.0f} KB", kib(v), met(None if v is None else v * 1.024 < TARGET_RSS_KB)])
    for bp in backplanes:
        a = res.find("idle", bp, 4, users=60000)
        v = get(a, "rss_kb_per_connection")
        rows.append([f"RSS per idle connection, 60,000 connections across 4 gateways — {NAMES[bp]}",
                     f"< {TARGET_RSS_KB:.0f} KB", kib(v), met(None if v is None else v * 1.024 < TARGET_RSS_KB)])
    for bp in backplanes:
        for g in gateway_counts:
            a = res.find("connect", bp, g, users=10000)
            v = get(a, "connect.all_reachable_s")
            rows.append([f"Connect storm, 10,000 users, {g} gateways — {NAMES[bp]}: all reachable",
                         f"< {TARGET_REACHABLE_S:.0f} s", "n/a" if v is None else
                         f"{num(v, 2)} s ({num(get(a, 'connect.accepted_per_s'), 0)} accepted/s)",
                         met(None if v is None else v < TARGET_REACHABLE_S)])
    out.append(table(["target", "goal", "measured", ""], rows))
    out.append("")
    out.append("n/a: the point was not measured at that size in this run (see the sizes of the run, and "
               "\"Missing or failed points\" below). RSS is reported by the bench in kB of `/proc` "
               "(KiB); the target is compared in KB (1,000 bytes).")
    out.append("")

    # Amplification and subscription cost
    out.append("### Backplane amplification and subscription cost")
    out.append("")
    out.append("Amplification: messages all gateways together received from the backplane "
               "(`switchboard_backplane_received_messages_total` on each gateway's `/metrics`, before and after "
               "the sending phase) per direct message sent; median over the direct points. Expected: 1 on RabbitMQ "
               "and Redis `channels` (only the recipient's gateway gets it), the number of gateways on Redis "
               "`broadcast` (every gateway gets every message and drops what it has no recipient for). "
               "Subscription cost: binds (RabbitMQ) or subscribes (Redis channels) per second during the "
               f"connect storm of {int(params.get('connect_users') or 0):,} users "
               "(`switchboard_backplane_bindings_total`); Redis broadcast subscribes once per gateway.")
    out.append("")
    rows = []
    for bp in backplanes:
        for g in gateway_counts:
            c = res.find("connect", bp, g)
            rows.append([NAMES[bp], g, num(amplification(res, bp, g), 2), num(expected_amplification(bp, g), 0),
                         num(get(c, "subscriptions_per_s"), 0), num(get(c, "connect.accepted_per_s"), 0),
                         num(get(c, "connect.all_reachable_s"), 2)])
    out.append(table(["backplane", "gateways", "amplification", "expected", "binds/subscribes per s",
                      "connections accepted per s", "all reachable (s)"], rows))
    out.append("")
    if "amplification" in made:
        out.append(f"![Amplification and subscription cost]({rel(made['amplification'])})")
    else:
        out.append("_Amplification plot: n/a (no direct or connect points in the results)._")
    out.append("")

    # Direct
    out.append("### Direct messages: latency and CPU vs offered rate")
    out.append("")
    out.append(f"`switchboard-bench direct`: {params.get('users', '?')} users spread round-robin over the gateways, "
               f"each message from one user to another, {params.get('duration_s', '?')} s of sending per point. "
               "Latency is from send to delivery at the recipient.")
    out.append("")
    if "latency" in made:
        out.append(f"![Latency vs offered rate]({rel(made['latency'])})")
    else:
        out.append("_Latency plot: n/a (no direct points at 2 gateways in the results)._")
    out.append("")
    if "cpu" in made:
        out.append(f"![CPU per message vs gateways]({rel(made['cpu'])})")
    else:
        out.append(f"_CPU plot: n/a (no direct points at {cpu_rate:,}/s in the results)._")
    out.append("")
    rows = []
    for bp in backplanes:
        for g in gateway_counts:
            for r in rates:
                a = res.find("direct", bp, g, r)
                rows.append([NAMES[bp], g, f"{r:,}", num(get(a, "achieved_rate"), 0), num(get(a, "sent"), 0),
                             num(get(a, "delivered"), 0), num(get(a, "lost.worst"), 0),
                             num(get(a, "duplicated.worst"), 0), num(get(a, "latency_ms.p50"), 2),
                             num(get(a, "latency_ms.p90"), 2), num(get(a, "latency_ms.p99"), 2),
                             num(get(a, "latency_ms.max"), 1), num(get(a, "cpu_us_per_msg.gateways")),
                             num(get(a, "cpu_us_per_msg.brokers")), num(get(a, "cpu_us_per_msg.total")),
                             num(get(a, "amplification"), 2), get(a, "runs") or 0])
    out.append(table(["backplane", "gw", "offered/s", "sent/s", "sent", "delivered", "lost", "dup",
                      "p50 ms", "p90 ms", "p99 ms", "max ms", "CPU µs gw", "CPU µs broker", "CPU µs total",
                      "ampl.", "runs"], rows))
    out.append("")

    # Room and fanout
    out.append("### Rooms and fanout")
    out.append("")
    out.append(f"`switchboard-bench room`: {params.get('room', '?')}; `switchboard-bench fanout`: one room, "
               f"{params.get('fanout', '?')} from one publisher. Delivered counts every copy received; CPU is "
               "per delivered copy.")
    out.append("")
    rows = []
    for scenario in ("room", "fanout"):
        for bp in backplanes:
            for g in gateway_counts:
                a = res.find(scenario, bp, g)
                rows.append([scenario, NAMES[bp], g, num(get(a, "rate"), 0), num(get(a, "sent"), 0),
                             num(get(a, "delivered"), 0), num(get(a, "lost.worst"), 0),
                             num(get(a, "duplicated.worst"), 0), num(get(a, "latency_ms.p50"), 2),
                             num(get(a, "latency_ms.p90"), 2), num(get(a, "latency_ms.p99"), 2),
                             num(get(a, "latency_ms.max"), 1), num(get(a, "cpu_us_per_msg.gateways")),
                             num(get(a, "cpu_us_per_msg.brokers")), num(get(a, "cpu_us_per_msg.total")),
                             num(get(a, "amplification"), 2), get(a, "runs") or 0])
    out.append(table(["scenario", "backplane", "gw", "offered/s", "sent", "delivered", "lost", "dup", "p50 ms",
                      "p90 ms", "p99 ms", "max ms", "CPU µs gw", "CPU µs broker", "CPU µs total", "ampl.", "runs"],
                     rows))
    out.append("")

    # Connect storm and idle memory
    out.append("### Connect storm and idle memory")
    out.append("")
    rows = []
    for bp in backplanes:
        for g in gateway_counts:
            a = res.find("connect", bp, g)
            rows.append(["connect storm", NAMES[bp], g, num(get(a, "users"), 0),
                         num(get(a, "connect.accepted_per_s"), 0), num(get(a, "connect.all_reachable_s"), 2),
                         num(get(a, "subscriptions_per_s"), 0), kib(get(a, "rss_kb_per_connection")),
                         get(a, "runs") or 0])
    idle_parts = int(params.get("idle_parts") or 4)
    idle_rows = [("memory", 1)] + [(bp, idle_parts) for bp in backplanes]
    for bp, g in idle_rows:
        a = res.find("idle", bp, g)
        rows.append(["idle", NAMES.get(bp, bp), g, num(get(a, "users"), 0), num(get(a, "connect.accepted_per_s"), 0),
                     num(get(a, "connect.all_reachable_s"), 2), "", kib(get(a, "rss_kb_per_connection")),
                     get(a, "runs") or 0])
    out.append(table(["scenario", "backplane", "gw", "connections", "accepted/s", "all reachable (s)",
                      "binds/subscribes per s", "RSS per connection", "runs"], rows))
    out.append("")
    out.append("Idle across several gateways: one `bench idle` process per gateway, all at once (a process may "
               "hold at most 20,000 file descriptors); connections are summed and RSS per connection is the "
               "connection-weighted mean of the gateways'. Each idle run uses freshly started gateways.")
    out.append("")

    # References
    out.append("### Against the reference servers")
    out.append("")
    out.append("References measured before this work with a neutral load generator (2,000 users on 2 servers, "
               "medians of 5 runs); Switchboard's rows are from this run (`bench direct` with "
               f"{params.get('users', '?')} users on 2 gateways, medians of {runs}). The load generators differ, "
               "so compare orders of magnitude, not single microseconds.")
    out.append("")
    rows = [["nginx + nchan + Redis", "229 µs", "114 µs", "15 KB", ""],
            ["Python websockets + Redis", "545 µs", "saturates near 5,000/s", "", ""],
            ["RabbitMQ alone", "", "", "", "~50,000 msgs/s through 10,000 bindings"]]
    idle_one = get(res.find("idle", "memory", 1), "rss_kb_per_connection")
    for bp in backplanes:
        c1 = get(res.find("direct", bp, 2, 1000), "cpu_us_per_msg.total")
        c5 = get(res.find("direct", bp, 2, 5000), "cpu_us_per_msg.total")
        idle = get(res.find("idle", bp, 4), "rss_kb_per_connection")
        rows.append([f"Switchboard, {NAMES[bp]}", "n/a" if c1 is None else f"{num(c1)} µs",
                     "n/a" if c5 is None else f"{num(c5)} µs",
                     "n/a" if idle is None else f"{idle * 1.024:.1f} KB (4 gateways)", ""])
    rows.append(["Switchboard, one gateway, in-memory", "", "", "n/a" if idle_one is None else f"{idle_one * 1.024:.1f} KB", ""])
    out.append(table(["system", "CPU µs/msg at 1,000/s", "CPU µs/msg at 5,000/s", "idle memory per connection",
                      "other"], rows))
    out.append("")

    # Missing points
    missing = []
    scenarios = res.param_list("scenarios", ["direct", "room", "fanout", "connect", "idle"])
    for bp in backplanes:
        for g in gateway_counts:
            for r in rates if "direct" in scenarios else []:
                if res.find("direct", bp, g, r) is None:
                    missing.append(f"direct, {NAMES[bp]}, {g} gateways, {r:,}/s")
            for s in ("room", "fanout", "connect"):
                if s in scenarios and res.find(s, bp, g) is None:
                    missing.append(f"{s}, {NAMES[bp]}, {g} gateways")
        if "idle" in scenarios and idle_parts in gateway_counts and res.find("idle", bp, idle_parts) is None:
            missing.append(f"idle, {NAMES[bp]}, {idle_parts} gateways")
    if "idle" in scenarios and res.find("idle", "memory", 1) is None:
        missing.append("idle, in-memory, 1 gateway")
    out.append("### Missing or failed points")
    out.append("")
    if not missing and not res.errors:
        out.append("None: every point of the run was measured.")
    else:
        if missing:
            out.append("Not in the results (n/a above; the run may have been limited with --backplanes, --gateways "
                       "or --scenarios, or the points failed): " + "; ".join(missing) + ".")
            out.append("")
        for where, message in res.errors:
            out.append(f"- {where}: {message}")
    out.append("")

    # Commands
    out.append("### Commands")
    out.append("")
    out.append(f"The whole run: `{meta.get('argv', 'bench/run.sh')}`"
               + (" with `SKIP_BUILD=1` (existing release build)" if params.get("skip_build") not in (None, "", "no") else "")
               + ". It starts the brokers and gateways below (ports and PIDs are this run's), waits for "
               "`/readyz`, runs each bench command once per run, and stops every process by PID.")
    out.append("")
    out.append("Sizes: " + ", ".join(f"{k} = {v}" for k, v in params.items()
                                     if k not in ("binary", "bench_binary", "skip_build", "dry_run", "quick", "swift")) + ".")
    out.append("")
    out.append("<details><summary>Every broker, gateway and bench command of the first run</summary>")
    out.append("")
    out.append("```sh")
    for e in res.ordered:
        kind = e.get("record")
        if kind == "broker":
            out.append(f"# broker: {e.get('name')} (PID {e.get('pid')}, {e.get('comm')})")
            out.extend(e.get("cmds", []))
        elif kind == "serve":
            name = e.get("name", "")
            if "-run" in name and not name.endswith("-run1"):
                continue
            out.append(f"# gateways: {name}")
            out.extend(c.strip() for c in e.get("cmds", []))
        elif "scenario" in e:
            b = e.get("bench", {})
            if b.get("run") != 1:
                continue
            what = f"# {e.get('scenario')}, {b.get('backplane')}, {b.get('gateways')} gateway(s)"
            if e.get("scenario") in ("direct", "room", "fanout") and e.get("rate") is not None:
                what += f", {e['rate']:,}/s"
            if b.get("parts"):
                what += f", part {b.get('part')} of {b.get('parts')} (in parallel)"
            if e.get("error"):
                what += f" — failed: {e['error']}"
            out.append(what)
            out.append(b.get("cmd", ""))
    out.append("```")
    out.append("")
    out.append("</details>")
    return "\n".join(out)


def display_path(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = os.path.abspath(path)
    return os.path.relpath(full, root) if full.startswith(root + os.sep) else full


def write_doc(doc_path, body):
    with open(doc_path) as f:
        text = f.read()
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        start = text.index(BEGIN)
        end = text.index(END) + len(END)
        text = text[:start] + block + text[end:]
    else:
        # No markers yet: put the section before the first second-level heading.
        at = text.find("\n## ")
        at = len(text) if at < 0 else at + 1
        text = text[:at] + block + "\n\n" + text[at:]
    with open(doc_path, "w") as f:
        f.write(text)


def cmd_report(args):
    res = Results(args.results)
    if not res.raw and not res.events:
        print(f"{args.results}: no results", file=sys.stderr)
        return 1
    backplanes = [b for b in res.param_list("backplanes", BACKPLANES) if b in BACKPLANES] or BACKPLANES
    gateway_counts = res.param_list("gateways", [2, 4])
    rates = res.param_list("direct_rates", []) or res.values(3, "direct") or [1000, 2500, 5000, 10000]
    cpu_rate = args.cpu_rate
    if cpu_rate not in rates and rates:
        cpu_rate = max(rates)
    made = {} if args.no_plots else plots(res, args.img_dir, backplanes, gateway_counts, cpu_rate)
    body = render(res, args.doc, args.img_dir, made, backplanes, gateway_counts, rates, cpu_rate)
    write_doc(args.doc, body)
    print(f"wrote {args.doc}" + "".join(f", {p}" for p in made.values()))
    if res.errors:
        print(f"{len(res.errors)} failed or missing point(s); see 'Missing or failed points'", file=sys.stderr)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("--doc", default="docs/benchmarks.md")
    p.add_argument("--img-dir", default="docs/img")
    p.add_argument("--cpu-rate", type=int, default=5000, help="direct rate of the CPU-vs-gateways plot")
    p.add_argument("--no-plots", action="store_true")
    p = sub.add_parser("meta")
    p.add_argument("--argv", default="")
    p.add_argument("--param", action="append")
    p = sub.add_parser("annotate")
    for name in ("line", "scenario", "backplane", "gateways", "run", "group", "part", "parts", "rc", "cmd", "tail"):
        p.add_argument("--" + name, default="")
    p = sub.add_parser("event")
    p.add_argument("--kind", required=True)
    for name in ("name", "backplane", "gateways", "pid", "comm", "message"):
        p.add_argument("--" + name)
    p.add_argument("--cmd", action="append")
    args = parser.parse_args()
    return {"report": cmd_report, "meta": cmd_meta, "annotate": cmd_annotate, "event": cmd_event}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
