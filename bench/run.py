#!/usr/bin/env python3
"""run.py -- drive rpbench: run every cell in interleaved repetitions, then
print one markdown table and write results/latest.txt (one RESULT line per
result) and results/table.md.

A cell is one workload with one parameter set and one allocator, run as its
own process. The peers (glibc, jemalloc, mimalloc, tcmalloc) run the malloc
version of the workload with LD_PRELOAD of the peer's library; the process
checks that the preload took effect and reports MISSING otherwise. rpool and
the bump/ring reference run in process. Within a repetition every workload
runs once per allocator, the allocator order rotating from one repetition to
the next, so slow drift on a shared machine hits every column alike.

Reported per (row, allocator): median, min and max over the repetitions,
the ratio of the median to glibc's median and to the best peer's median
(lower is better for every metric in the table). Instruction counts come
from callgrind: the measured loop runs N and 2N times and the difference is
divided by the extra operations, cancelling start-up and warm-up.

Usage: run.py --bin PATH [--results DIR] [--quick] [--reps N]
              [--only small,xthread,...] [--no-callgrind]
"""

import argparse
import datetime
import glob
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys

PEERS = ["glibc", "jemalloc", "mimalloc", "tcmalloc"]
RP = ["rpool", "rpool-malloc"]
COLUMNS = PEERS + RP + ["bump"]
PEER_SONAME = {
    "jemalloc": "libjemalloc.so.2",
    "mimalloc": "libmimalloc.so.2",
    "tcmalloc": "libtcmalloc_minimal.so.4",
}
SECTIONS = ["small", "xthread", "request", "large", "overhead", "heap",
            "oversub", "callgrind"]

# metric -> (label, unit, ratio threshold): a ratio is printed only when the
# reference median is at least the threshold (None: never, e.g. counts).
METRICS = {
    "ns_per_pair": ("ns per alloc+free pair", "ns", 0.0),
    "ns_per_object": ("ns per object", "ns", 0.0),
    "ns_per_op": ("ns per op", "ns", 0.0),
    "ns_per_alloc": ("ns per alloc (while filling)", "ns", 0.0),
    "ns_per_op_offset0": ("ns per op, writes at page offset 0", "ns", 0.0),
    "peak_rss_mib": ("peak RSS growth", "MiB", 1.0),
    "rss_after_free_mib": ("RSS growth right after free", "MiB", 1.0),
    "rss_after_wait_mib": ("RSS growth after the wait", "MiB", 1.0),
    "rss_per_payload": ("RSS growth / payload bytes", "x", 0.0),
    "op_p50_ns": ("p50 per op", "ns", 0.0),
    "op_p999_ns": ("p99.9 per op", "ns", 0.0),
    "op_max_ns": ("max per op", "ns", 0.0),
    "touch_p999_ns": ("user's first touch of the block, p99.9", "ns", 0.0),
    "oscalls_per_kop": ("rpool system calls per 1000 ops", "/kop", None),
    "rmin_alloc_p50_ns": ("replayed alloc (min of runs per call), p50",
                          "ns", 0.0),
    "rmin_alloc_p999_ns": ("replayed alloc, p99.9", "ns", 0.0),
    "rmin_alloc_max_ns": ("replayed alloc, max", "ns", 0.0),
    "rmin_alloc_max_x": ("replayed alloc, max / p50", "x", 0.0),
    "rmin_nofault_alloc_max_ns": ("replayed alloc without page fault, max",
                                  "ns", 0.0),
    "rmin_nofault_alloc_max_x": ("replayed alloc without page fault, "
                                 "max / p50", "x", 0.0),
    "rmin_fault_alloc_calls": ("replayed allocs that took a page fault",
                               "count", None),
    "rmin_free_max_ns": ("replayed free, max", "ns", 0.0),
    "rmin_free_max_x": ("replayed free, max / p50", "x", 0.0),
    "alloc_failures": ("failed allocations", "count", None),
    "end_fill_pct": ("fill at the end", "%", None),
    "timer_p50_ns": ("timer cost (empty interval), p50", "ns", None),
    "ir_per_pair": ("instructions per alloc+free pair", "Ir", 0.0),
    "ir_per_object": ("instructions per object", "Ir", 0.0),
}


class Case:
    """One workload parameter set: the rows it produces and its columns."""

    def __init__(self, section, case_id, title, args, threads, allocs,
                 metrics, timeout=120):
        self.section = section
        self.case_id = case_id
        self.title = title
        self.args = args          # list of "k=v" for rpbench after workload
        self.threads = threads
        self.allocs = allocs
        self.metrics = metrics
        self.timeout = timeout


def plan(quick):
    """The cases of a run. Work sizes are set so a full run takes ~9 min
    on two cores (7 reps) and QUICK ~1.5 min (3 reps)."""
    q = quick
    cases = []
    # Small-object cells: 32 M pairs (~0.1-0.2 s per run). At 8 M a 2-thread
    # cell lasts ~12 ms and start-up transients (the second thread's start,
    # the CPU's speed settling) dominated: 4 M pairs measured 4.3-4.4 ns per
    # pair against 3.0 at 32 M for rpool and mimalloc alike (bench/README).
    pairs = "2M" if q else "32M"
    for size in (64, 256):
        for order in ("lifo", "random"):
            for t in (1, 2, 4, 8):
                cases.append(Case(
                    "small", f"small-{size}-{order}",
                    f"1 small {size} B, {order} free", [
                        "small", f"size={size}", f"order={order}",
                        f"threads={t}", f"ops={pairs}"],
                    t, PEERS + RP, ["ns_per_pair"]))
    # Cross-thread free in three placements (wl_xthread.c): the scheduler's
    # (free), each pair's producer and consumer on different CPUs (split)
    # and on one CPU (pair). With more threads than CPUs the free rows are
    # a lottery between the other two regimes (bench/README "Noise").
    for place, what in (("free", "scheduler's placement"),
                        ("split", "P and C on different CPUs"),
                        ("pair", "P and C on one CPU")):
        for t in (2, 4, 8):
            cases.append(Case(
                "xthread", "xthread-64" + ("" if place == "free" else "-" + place),
                f"2 cross-thread free, 64 B (P+C threads), {what}",
                ["xthread", f"threads={t}", f"place={place}",
                 "ops=" + ("500K" if q else "4M")],
                t, PEERS + RP + ["bump"], ["ns_per_object"]))
    for t in (1, 2, 4, 8):
        cases.append(Case(
            "request", "request-200",
            "3 request: 200 objects 16..4096 B, free all",
            ["request", f"threads={t}", "ops=" + ("1M" if q else "4M")],
            t, PEERS + RP + ["bump"], ["ns_per_object"]))
    touched = (512 << 20) if q else (2 << 30)
    for size, name in ((64 << 10, "64 KiB"), (1 << 20, "1 MiB"),
                       (4 << 20, "4 MiB")):
        cases.append(Case(
            "large", f"large-{size >> 10}k",
            f"4 large {name}, touched, churn", [
                "large", f"size={size}", f"ops={touched // size}",
                "purge_ms=200", "wait_ms=" + ("500" if q else "1000")],
            1, PEERS + RP,
            ["ns_per_op", "ns_per_op_offset0", "peak_rss_mib",
             "rss_after_free_mib",
             "rss_after_wait_mib"]))
    cases.append(Case(
        "overhead", "overhead-32", "5 overhead: 8M live 32 B objects",
        ["overhead", "ops=8M"], 1, PEERS + RP,
        ["rss_per_payload", "ns_per_alloc"]))
    cases.append(Case(
        "heap", "heap-90", "6 heap latency, 90% fill, 16 B..64 KiB",
        ["heap", "ops=1M", "replays=" + ("3" if q else "5")], 1, PEERS + RP,
        ["ns_per_op", "op_p50_ns", "op_p999_ns", "op_max_ns",
         "touch_p999_ns", "oscalls_per_kop",
         "rmin_alloc_p50_ns", "rmin_alloc_p999_ns", "rmin_alloc_max_ns",
         "rmin_alloc_max_x", "rmin_nofault_alloc_max_ns",
         "rmin_nofault_alloc_max_x", "rmin_fault_alloc_calls",
         "rmin_free_max_ns", "rmin_free_max_x",
         "alloc_failures", "end_fill_pct", "timer_p50_ns"], timeout=240))
    cases.append(Case(
        "oversub", "oversub-small-64-random",
        "7 oversub: small 64 B random, 8 threads on 2 CPUs",
        ["small", "size=64", "order=random", "threads=8", "cpus=2",
         f"ops={pairs}"],
        8, PEERS + RP, ["ns_per_pair"]))
    cases.append(Case(
        "oversub", "oversub-heap", "7 oversub: heap, 8 threads on 2 CPUs",
        ["heap", "threads=8", "cpus=2", "ops=1M"], 8, PEERS + RP,
        ["ns_per_op", "op_p999_ns", "op_max_ns", "alloc_failures"]))
    return cases


def find_lib(soname):
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True,
                             text=True, timeout=10).stdout
        for line in out.splitlines():
            line = line.strip()
            if line.startswith(soname + " ") and "=>" in line:
                path = line.split("=>", 1)[1].strip()
                if os.path.exists(path):
                    return path
    except (OSError, subprocess.SubprocessError):
        pass
    for d in glob.glob("/usr/lib/*-linux-gnu") + glob.glob(
            "/lib/*-linux-gnu") + ["/usr/lib", "/usr/local/lib", "/lib"]:
        p = os.path.join(d, soname)
        if os.path.exists(p):
            return p
    return None


class Outcome:
    def __init__(self, status, metrics=None, reason="", info=None):
        self.status = status      # ok | MISSING | not available | ERROR | ...
        self.metrics = metrics or {}
        self.reason = reason
        self.info = info or []


def parse_output(proc_rc, out, err):
    metrics, info = {}, []
    status, reason = None, ""
    for line in out.splitlines():
        if line.startswith("M "):
            kv = dict(x.split("=", 1) for x in line[2:].split())
            metrics[kv["metric"]] = float(kv["value"])
        elif line.startswith("INFO "):
            info.append(line[5:])
        elif line.startswith("UNAVAILABLE reason="):
            status, reason = "not available", line[len("UNAVAILABLE reason="):]
        elif line.startswith("MISSING reason="):
            status, reason = "MISSING", line[len("MISSING reason="):]
        elif line.startswith("ERROR reason="):
            status, reason = "ERROR", line[len("ERROR reason="):]
    if status:
        return Outcome(status, reason=reason, info=info)
    if proc_rc < 0:
        return Outcome("CRASHED", reason=f"signal {-proc_rc}; stderr: "
                       + err.strip()[-300:], info=info)
    if proc_rc != 0:
        return Outcome("ERROR", reason=f"exit {proc_rc}; stderr: "
                       + err.strip()[-300:], info=info)
    return Outcome("ok", metrics=metrics, info=info)


class Runner:
    def __init__(self, binary, libs, rpool_preload):
        self.binary = binary
        self.libs = dict(libs)    # preloaded column -> path or None
        self.libs["rpool-malloc"] = rpool_preload

    def env_for(self, alloc, under_valgrind=False):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env.pop("RPOOL_CONF", None)
        if alloc in self.libs:
            env["LD_PRELOAD"] = self.libs[alloc]
        if alloc == "rpool-malloc" and under_valgrind:
            # valgrind refuses the preload's default 64 GiB reservation, and
            # the preload would fall back to the C library's malloc. 4 GiB,
            # as the rpool column's pools use.
            env["RPOOL_CONF"] = "reserve_bytes=4G"
        return env

    def run(self, args, alloc, timeout, prefix=None):
        if alloc in self.libs and not self.libs.get(alloc):
            why = (f"{PEER_SONAME[alloc]} not found (run bench/setup.sh)"
                   if alloc in PEER_SONAME else
                   "librpool-malloc.so was not built")
            return Outcome("MISSING", reason=why), ""
        cmd = (prefix or []) + [self.binary] + args + [f"alloc={alloc}"]
        try:
            p = subprocess.run(cmd, env=self.env_for(alloc, prefix is not None),
                               capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome("TIMEOUT", reason=f"over {timeout} s"), ""
        o = parse_output(p.returncode, p.stdout, p.stderr)
        # The preload falls back to the C library when it cannot create its
        # pool; the cell would then measure glibc, not rpool.
        m = re.search(r"rpool-malloc: [^\n]*C library's allocator", p.stderr)
        if alloc == "rpool-malloc" and m and o.status == "ok":
            o = Outcome("ERROR", reason="the preload fell back to glibc: "
                        + m.group(0), info=o.info)
        return o, p.stderr


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_line():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1048576:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True,
                             text=True).stdout.strip()
    except OSError:
        gcc = "?"
    return (f"host={platform.node()} cpus={os.cpu_count()} cpu=\"{cpu}\" "
            f"mem={mem} kernel={platform.release()} gcc={gcc}")


class Results:
    """values[((case_id, threads), metric)][alloc] -> list of floats, in
    rep order (read it through vals()); status[((case_id, threads), alloc)]
    -> (status, reason, failed reps) for failures."""

    def __init__(self):
        self.values = {}
        self.status = {}
        self.reps = {}
        self.rows = []            # ordered (case, metric)
        self.info = {}

    def add_rows(self, case):
        for m in case.metrics:
            self.rows.append((case, m))

    def record(self, case, alloc, outcome):
        key = (case.case_id, case.threads)
        if outcome.status != "ok":
            prev = self.status.get((key, alloc))
            n = (prev[2] + 1) if prev else 1
            self.status[(key, alloc)] = (outcome.status, outcome.reason, n)
            return
        self.reps[(key, alloc)] = self.reps.get((key, alloc), 0) + 1
        for m in case.metrics:
            if m in outcome.metrics:
                self.values.setdefault((key, m), {}).setdefault(
                    alloc, []).append(outcome.metrics[m])
        if outcome.info:
            self.info[(key, alloc)] = outcome.info

    def vals(self, case, metric, alloc):
        """The values recorded for one cell, in rep order (None: none)."""
        return self.values.get(((case.case_id, case.threads), metric),
                               {}).get(alloc)

    def summary(self, case, metric, alloc):
        st = self.status.get(((case.case_id, case.threads), alloc))
        vals = self.vals(case, metric, alloc)
        if st and (st[0] in ("MISSING", "not available") or not vals):
            return None, st
        if not vals:
            return None, ("-", "", 0)
        return (statistics.median(vals), min(vals), max(vals), len(vals)), st


def ratios(res, case, metric):
    """Median of each column and the reference medians."""
    med = {}
    for a in COLUMNS:
        s, _ = res.summary(case, metric, a)
        if s:
            med[a] = s[0]
    peers = [med[a] for a in PEERS if a in med]
    return med, med.get("glibc"), (min(peers) if peers else None)


def build_table(res, cases_run, reps_done):
    lines = []
    lines.append("| workload | thr | metric | " + " | ".join(
        {"bump": "bump/ref", "rpool-malloc": "rpool-malloc (preload)"}.get(
            c, c) for c in COLUMNS) + " |")
    lines.append("|---|---:|---|" + "---|" * len(COLUMNS))
    result_lines = []
    footnotes = {}
    for case, metric in res.rows:
        if case not in cases_run:
            continue
        label, unit, thresh = METRICS[metric]
        med, g, best = ratios(res, case, metric)
        cells = []
        for a in COLUMNS:
            if a not in case.allocs:
                cells.append("—")
                continue
            s, st = res.summary(case, metric, a)
            base = (f"RESULT case={case.case_id} workload={case.section} "
                    f"threads={case.threads} alloc={a} metric={metric} "
                    f"unit={unit}")
            if s is None:
                status, reason, n = st if st else ("-", "", 0)
                text = "n/a" if status == "-" else status
                if a == "rpool" and status == "not available":
                    text = "not available"
                if status == "-":  # a metric the column does not have
                    cells.append(text)
                else:
                    fn = footnotes.setdefault((status, reason),
                                              len(footnotes) + 1)
                    cells.append(f"{text} [{fn}]")
                result_lines.append(f"{base} status={status.replace(' ', '_')}"
                                    f" reason=\"{reason}\"")
                continue
            m, lo, hi, n = s
            u = {"ns": "ns", "MiB": "mib", "Ir": "ir", "%": "pct",
                 "x": "x", "count": "count", "/kop": "per_kop"}[unit]
            f = (lambda v: f"{v:.0f}") if unit == "count" else fmt
            text = fmt(m) if n == 1 else f"{f(m)} [{f(lo)}..{f(hi)}]"
            extra = ""
            rg = rb = None
            if thresh is not None:
                if g is not None and g >= thresh and g > 0:
                    rg = m / g
                if best is not None and best >= thresh and best > 0:
                    rb = m / best
                if rg is not None:
                    text += f" g{rg:.2f}"
                if rb is not None:
                    text += f" p{rb:.2f}"
            if st:
                text += f" ({st[0]} in {st[2]} rep(s)) [" + str(
                    footnotes.setdefault((st[0], st[1]),
                                         len(footnotes) + 1)) + "]"
                extra = f" failed_reps={st[2]}"
            cells.append(text)
            result_lines.append(
                f"{base} median_{u}={m:.6g} min_{u}={lo:.6g} max_{u}={hi:.6g}"
                f" reps={n}" + (f" ratio_glibc={rg:.4f}" if rg is not None
                                else "")
                + (f" ratio_best_peer={rb:.4f}" if rb is not None else "")
                + extra + " values=" + ",".join(
                    f"{v:.6g}" for v in res.vals(case, metric, a)))
        lines.append(f"| {case.title} | {case.threads} | {label} ({unit}) | "
                     + " | ".join(cells) + " |")
    notes = []
    for (status, reason), n in sorted(footnotes.items(), key=lambda x: x[1]):
        notes.append(f"[{n}] {status}: {reason}")
    return lines, notes, result_lines


def callgrind_cases(quick):
    n1 = 4 if quick else 8
    return [
        (Case("callgrind", "callgrind-small-64-lifo",
              "instr: small 64 B LIFO (callgrind)",
              ["small", "size=64", "order=lifo", "threads=1"], 1,
              PEERS + RP, ["ir_per_pair"], timeout=600),
         "small_loop_*", n1, 4096),
        (Case("callgrind", "callgrind-request-200",
              "instr: request 200 objects (callgrind)",
              ["request", "threads=1"], 1, PEERS + RP + ["bump"],
              ["ir_per_object"], timeout=600),
         "request_loop_*", 25 * n1, 200),
    ]


def run_callgrind(runner, res, quick, log):
    vg = shutil.which("valgrind")
    for case, toggle, n1, per_iter in callgrind_cases(quick):
        res.add_rows(case)
        for a in case.allocs:
            if not vg:
                res.record(case, a, Outcome("MISSING",
                                            reason="valgrind not installed"))
                continue
            irs = []
            bad = None
            for n in (n1, 2 * n1):
                prefix = [vg, "--tool=callgrind",
                          "--callgrind-out-file=/dev/null",
                          f"--toggle-collect={toggle}"]
                o, err = runner.run(case.args + [f"iters={n}"], a,
                                    case.timeout, prefix=prefix)
                if o.status != "ok":
                    bad = o
                    break
                mm = re.search(r"Collected\s*:\s*(\d+)", err)
                if not mm:
                    bad = Outcome("ERROR", reason="no 'Collected' line from "
                                  "callgrind: " + err.strip()[-200:])
                    break
                irs.append(int(mm.group(1)))
            if bad:
                res.record(case, a, bad)
                continue
            per_op = (irs[1] - irs[0]) / float(n1 * per_iter)
            res.record(case, a, Outcome("ok", metrics={case.metrics[0]:
                                                       per_op}))
            log(f"callgrind {case.case_id} {a}: {per_op:.1f} Ir/op")
        yield case


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--results", default="results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--only", default="")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--rpool-preload", default="",
                    help="path of librpool-malloc.so (rpool-malloc column)")
    opt = ap.parse_args()

    reps = opt.reps or (3 if opt.quick else 7)
    only = [s for s in opt.only.split(",") if s]
    for s in only:
        if s not in SECTIONS:
            sys.exit(f"run.py: unknown section {s}; known: {SECTIONS}")
    want = (lambda s: s in only) if only else (lambda s: True)

    def log(msg):
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    binary = os.path.abspath(opt.bin)
    feat = subprocess.run([binary, "features"], capture_output=True,
                          text=True).stdout.strip()
    libs = {p: find_lib(s) for p, s in PEER_SONAME.items()}
    for p, path in libs.items():
        log(f"{p}: {path or 'MISSING (' + PEER_SONAME[p] + ' not found)'}")
    log(f"rpbench {feat}")
    pre = os.path.abspath(opt.rpool_preload) if opt.rpool_preload else ""
    pre = pre if pre and os.path.exists(pre) else None
    log(f"rpool-malloc: {pre or 'MISSING (librpool-malloc.so not built)'}")
    runner = Runner(binary, libs, pre)
    res = Results()
    started = datetime.datetime.now().astimezone()
    load_start = loadavg()
    t0 = datetime.datetime.now()

    cases = [c for c in plan(opt.quick) if want(c.section)]
    for c in cases:
        res.add_rows(c)
    # Each (case, alloc) that is MISSING or not available is decided by how
    # the process was built/loaded, not by timing: run it once, report it,
    # do not repeat it.
    settled = set()
    timeouts = {}
    for rep in range(reps):
        log(f"rep {rep + 1}/{reps} ({len(cases)} cases)")
        for ci, case in enumerate(cases):
            order = case.allocs[(rep + ci) % len(case.allocs):] + \
                case.allocs[:(rep + ci) % len(case.allocs)]
            for a in order:
                key = (case.case_id, case.threads, a)
                if key in settled:
                    continue
                if timeouts.get(a, 0) >= 2:
                    # A hung allocator must not eat the time budget: after
                    # two timeouts its remaining cells say so.
                    o = Outcome("SKIPPED", reason=f"{a} timed out twice "
                                "earlier in this run")
                    res.record(case, a, o)
                    settled.add(key)
                    continue
                o, _ = runner.run(case.args, a, case.timeout)
                res.record(case, a, o)
                if o.status in ("MISSING", "not available", "TIMEOUT"):
                    settled.add(key)
                if o.status == "TIMEOUT":
                    timeouts[a] = timeouts.get(a, 0) + 1
                if o.status not in ("ok", "MISSING", "not available"):
                    log(f"{case.case_id} t={case.threads} {a}: {o.status}: "
                        f"{o.reason}")
    cases_run = set(cases)
    if want("callgrind") and not opt.no_callgrind:
        log("callgrind instruction counts")
        for c in run_callgrind(runner, res, opt.quick, log):
            cases_run.add(c)
    elapsed = (datetime.datetime.now() - t0).total_seconds()

    lines, notes, result_lines = build_table(res, cases_run, reps)
    head = (f"rpool bench {started.strftime('%Y-%m-%d %H:%M %Z')}, "
            f"{'QUICK, ' if opt.quick else ''}{reps} interleaved reps, "
            f"{elapsed:.0f} s; {machine_line()}; loadavg at start "
            f"{load_start}, at end {loadavg()}")
    legend = ("Cells: median [min..max] over the reps; gX = median / glibc "
              "median, pX = median / best peer median (best of glibc, "
              "jemalloc, mimalloc, tcmalloc); lower is better everywhere. "
              "rpool: rpool's own API for the workload, in process; "
              "rpool-malloc: the same malloc/free workload as the peers "
              "with librpool-malloc.so preloaded. "
              "Time per op is wall time / total ops over all threads "
              "(1 / throughput). bump/ref: an inline bump pointer (request) "
              "or the ring with no allocator (cross-thread); it is not a "
              "peer. Instruction counts (instr rows) are exact and single "
              "runs.")
    avail = "rpool API in this build: " + feat.replace("FEATURES ", "")
    out = [f"### {head}", "", legend, "", avail, ""] + lines + [""]
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(out)
    print(text)

    os.makedirs(opt.results, exist_ok=True)
    with open(os.path.join(opt.results, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(opt.results, "latest.txt"), "w") as f:
        f.write(f"# {head}\n# {avail}\n")
        for (key, a), info in sorted(res.info.items()):
            f.write(f"# info {key[0]} t={key[1]} {a}: {'; '.join(info)}\n")
        f.write("\n".join(result_lines) + "\n")
    log(f"wrote {opt.results}/latest.txt and {opt.results}/table.md "
        f"({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
