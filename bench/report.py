#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

    report.py record JSONL key=value ...    append one JSON object to JSONL
        key:num=V   number (empty -> null)    key:json=V  parsed JSON (empty -> null)
        key=V       string
    report.py treemeta ORIGINAL RESTORED     compare metadata of two trees (or two files);
                                             prints a JSON summary (informational check)
    report.py render OUTDIR                  OUTDIR/meta.json + OUTDIR/results.jsonl -> OUTDIR/results.md
"""

import json
import os
import stat
import sys

TOOLS = ("push-operator", "restic", "kopia", "kopia-zstd", "rustic")
OPS = (
    ("initial", "a. initial push"),
    ("nochange", "b. no-change push"),
    ("change", "c. push after 1% change"),
    ("restore", "d. restore latest"),
    ("prune", "e. forget all but latest + prune"),
)


# ------------------------------------------------------------------ record
def to_num(v):
    if v is None or v.strip() == "":
        return None
    f = float(v)
    return int(f) if f.is_integer() and "." not in v else f


def cmd_record(args):
    path = args[0]
    rec = {}
    for a in args[1:]:
        k, _, v = a.partition("=")
        if k.endswith(":num"):
            try:
                rec[k[:-4]] = to_num(v)
            except ValueError:
                rec[k[:-4]] = None
        elif k.endswith(":json"):
            k = k[:-5]
            if v.strip() == "":
                rec[k] = None
            else:
                # Tools may print more than one line: keep the last JSON object.
                val = None
                for line in reversed(v.strip().splitlines()):
                    try:
                        val = json.loads(line)
                        break
                    except ValueError:
                        continue
                if val is None:
                    try:
                        val = json.loads(v)
                    except ValueError:
                        val = {"unparsed": v[-2000:]}
                rec[k] = val
        else:
            rec[k] = v
    with open(path, "a") as f:
        f.write(json.dumps(rec, sort_keys=False) + "\n")
    return 0


# ------------------------------------------------------------------ treemeta
def entries(root):
    """relative path -> lstat of everything under root (root itself excluded)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = (full, os.lstat(full))
    return out


def cmd_treemeta(args):
    a, b = args
    if os.path.isdir(a):
        ea, eb = entries(a), entries(b)
    else:
        ea, eb = {".": (a, os.lstat(a))}, {".": (b, os.lstat(b))}
    mism = {"type": 0, "mode": 0, "owner": 0, "size": 0, "mtime": 0, "symlink_target": 0}
    examples = {}
    for rel, (fa, sa) in ea.items():
        if rel not in eb:
            continue
        fb, sb = eb[rel]
        bad = []
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            bad.append("type")
        else:
            if stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
                bad.append("mode")
            if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
                bad.append("owner")
            if stat.S_ISREG(sa.st_mode) and sa.st_size != sb.st_size:
                bad.append("size")
            if stat.S_ISLNK(sa.st_mode):
                if os.readlink(fa) != os.readlink(fb):
                    bad.append("symlink_target")
            # Symlink mtimes are commonly not restored; compare files and dirs only.
            elif sa.st_mtime_ns != sb.st_mtime_ns:
                bad.append("mtime")
        for k in bad:
            mism[k] += 1
            examples.setdefault(k, rel)
    missing = sorted(set(ea) - set(eb))
    extra = sorted(set(eb) - set(ea))
    summary = {
        "entries": len(ea),
        "missing": len(missing),
        "extra": len(extra),
        "mismatch": mism,
        "examples": examples,
        "ok": not missing and not extra and not any(mism.values()),
    }
    if missing:
        summary["missing_example"] = missing[0]
    if extra:
        summary["extra_example"] = extra[0]
    print(json.dumps(summary))
    return 0


# ------------------------------------------------------------------ render
def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def aggregate(rs):
    """One record from the repetitions of one (dataset, tool, op): medians of the
    numbers over successful runs, the worst rc, the first failed check, the last
    run's tool output."""
    out = dict(rs[-1])
    out["runs"] = len(rs)
    bad = [r for r in rs if r.get("rc") not in (0, None)]
    if bad:
        out["rc"] = bad[0].get("rc")
    good = [r for r in rs if r.get("rc") in (0, None)]
    for key in ("seconds", "max_rss_kib", "store_bytes", "cpu_seconds", "other_cpu_seconds"):
        vals = [r[key] for r in good if r.get(key) is not None]
        out[key] = median(vals)
        if len(vals) > 1:
            out[key + "_range"] = (min(vals), max(vals))
    checks = [r.get("check") for r in rs if r.get("check")]
    failed = [c for c in checks if not str(c).startswith("ok")]
    if failed:
        out["check"] = failed[0] + (f" ({len(failed)}/{len(rs)} runs)" if len(rs) > 1 else "")
    elif checks and len(rs) > 1:
        out["check"] = f"{checks[0]} ×{len(checks)}"
    return out


BUSY_SHARE = 0.10  # flag a measurement when others used more than this share of the machine


def busy(r, nproc):
    """True when other processes used > BUSY_SHARE of all CPUs during the measurement."""
    if r is None or r.get("other_cpu_seconds") is None or not r.get("seconds"):
        return False
    return r["other_cpu_seconds"] > BUSY_SHARE * r["seconds"] * (nproc or 1)


def fmt_s(r, nproc=1):
    if r is None:
        return "—"
    if r.get("rc") not in (0, None):
        return f"FAIL(rc={r.get('rc')})"
    s = r.get("seconds")
    if s is None:
        return "—"
    rng = r.get("seconds_range")
    txt = f"{s:.2f}" if not rng else f"{s:.2f} ({rng[0]:.2f}–{rng[1]:.2f})"
    return txt + (" *" if busy(r, nproc) else "")


def fmt_cpu(r):
    if r is None or r.get("rc") not in (0, None) or r.get("cpu_seconds") is None:
        return "—"
    return f"{r['cpu_seconds']:.2f}"


def fmt_mib(kib):
    return "—" if kib is None else f"{kib / 1024:.0f}"


def fmt_bytes(n):
    if n is None:
        return "—"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def ratio(num, den):
    if num is None or den is None or den == 0:
        return "—"
    return f"{num / den:.2f}×"


def ok_num(r, key):
    if r is None or r.get("rc") not in (0, None):
        return None
    return r.get(key)


PO = "push-operator"
# Peers that compress (the 1.5x target) and the one that does not (Kopia as Velero runs it).
COMPRESSING = ("restic", "kopia-zstd", "rustic")
GROWING_OPS = tuple(f"v{v:02d}" for v in range(2, 100))


def load(outdir):
    with open(os.path.join(outdir, "meta.json")) as f:
        meta = json.load(f)
    recs = []
    with open(os.path.join(outdir, "results.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    groups = {}
    for r in recs:
        groups.setdefault((r.get("dataset"), r.get("tool"), r.get("op")), []).append(r)
    by = {k: aggregate(v) for k, v in groups.items()}
    # "growing": the nine pushes after the first, summed into one "change" row per tool.
    for (d, t, op) in list(by):
        if op == "v02":
            parts = [by[(d, t, o)] for o in GROWING_OPS if (d, t, o) in by]
            if all(p.get("rc") in (0, None) for p in parts):
                by[(d, t, "change")] = {
                    "seconds": sum(p["seconds"] or 0 for p in parts),
                    "cpu_seconds": sum(p["cpu_seconds"] or 0 for p in parts),
                    "max_rss_kib": max(p["max_rss_kib"] or 0 for p in parts),
                    "other_cpu_seconds": sum(p.get("other_cpu_seconds") or 0 for p in parts),
                    "rc": 0,
                    "pushes": len(parts),
                }
            else:
                by[(d, t, "change")] = {"rc": next(p["rc"] for p in parts if p.get("rc") not in (0, None))}
    return meta, recs, groups, by


def cell(r, nproc):
    """'s (CPU s, RSS MiB)' of one measurement."""
    if r is None:
        return "—"
    if r.get("rc") not in (0, None):
        return f"FAIL(rc={r.get('rc')})"
    return f"{fmt_s(r, nproc)} ({fmt_cpu(r)}, {fmt_mib(r.get('max_rss_kib'))})"


def times(a, b):
    """b / a as 'N.NN×' (how many times a is faster or smaller)."""
    return ratio(b, a)


def targets(by, datasets, tools):
    """Each target of the issue, per dataset: (label, {dataset: (text, met)})."""
    peers = [t for t in tools if t != PO]
    rows = []

    def val(d, t, op, key):
        return ok_num(by.get((d, t, op)), key)

    def best(d, ts, op, key):
        vs = [(val(d, t, op, key), t) for t in ts]
        vs = [(v, t) for v, t in vs if v is not None]
        return min(vs) if vs else (None, None)

    def row(label, fn):
        rows.append((label, {d: fn(d) for d in datasets}))

    def speedup(d, op, ts, need, po_op=None):
        b, who = best(d, ts, op, "seconds")
        a = val(d, PO, po_op or op, "seconds")
        if a is None or b is None:
            return ("—", None)
        x = b / a if a > 0 else float("inf")
        return (f"{x:.2f}× ({who})", x >= need)

    comp = [t for t in peers if t in COMPRESSING]
    if comp:
        row("initial push ≥ 1.5× the fastest compressing peer", lambda d: speedup(d, "initial", comp, 1.5))
    if "kopia" in peers:
        row("initial push ≥ 1× Kopia without compression", lambda d: speedup(d, "initial", ["kopia"], 1.0))
    if "restic" in peers:
        row("initial push ≥ 2× restic", lambda d: speedup(d, "initial", ["restic"], 2.0))
    if peers:
        row("no-change push ≥ 3× the fastest peer", lambda d: speedup(d, "nochange", peers, 3.0))
        if any((d, PO, "nochange-key") in by for d in datasets):
            row("… the same, push-operator opening the store with a raw key (no key derivation)",
                lambda d: speedup(d, "nochange", peers, 3.0, po_op="nochange-key"))
        row("push after a change ≥ 1× the fastest peer (no target; shown)", lambda d: speedup(d, "change", peers, 1.0))
        row("restore ≥ 2× the fastest peer", lambda d: speedup(d, "restore", peers, 2.0))

        def size(d):
            b, who = best(d, peers, "store", "store_bytes")
            a = val(d, PO, "store", "store_bytes")
            if a is None or b is None:
                return ("—", None)
            return (f"{a / b:.2f}× ({who})", a <= b)

        row("store size ≤ the smallest peer's", size)

        def rss(d):
            worst = None
            for op in ("initial", "nochange", "change", "restore"):
                b, who = best(d, peers, op, "max_rss_kib")
                a = val(d, PO, op, "max_rss_kib")
                if a is None or b is None:
                    continue
                x = a / b
                if worst is None or x > worst[0]:
                    worst = (x, op, who)
            if worst is None:
                return ("—", None)
            return (f"{worst[0]:.2f}× ({worst[1]}, {worst[2]})", worst[0] <= 1.0)

        row("peak RSS ≤ the smallest peer's (worst operation)", rss)
    return rows


def cmd_render(args):
    outdir = args[0]
    meta, recs, groups, by = load(outdir)
    datasets = meta.get("datasets_run") or sorted({r["dataset"] for r in recs})
    tools = meta.get("tools_run") or list(TOOLS)
    peers = [t for t in tools if t != PO]
    nproc = meta.get("nproc") or 1
    backend = meta.get("backend", "local")

    L = [f"# push-operator and its peers ({'local directory stores' if backend == 'local' else 'S3: one local SeaweedFS'})", ""]
    vers = "; ".join(f"{t}: {meta.get('versions', {}).get(t, '—')}" for t in tools)
    info = meta.get("dataset_info", {})
    dsz = "; ".join(
        f"{d}: {fmt_bytes(info[d]['bytes'])}" + (f", {info[d]['files']} files" if info[d].get("files") is not None else "")
        for d in datasets if d in info
    )
    L.append(
        f"**{meta.get('date')}** · nproc {meta.get('nproc')} · {meta.get('cpu', '')} · {meta.get('mem', '')} · "
        f"kernel {meta.get('kernel')} · {vers} · datasets: {dsz} · change: mutate.py {meta.get('percent')}% "
        f"(growing: {meta.get('growing_versions')} versions)"
        + (f" · {meta.get('repeat')} runs each: median (min–max)" if (meta.get("repeat") or 1) > 1 else " · 1 run each")
    )
    L.append("")
    L.append("## Targets (ratios in this run)")
    L.append("")
    L.append("| target | " + " | ".join(datasets) + " |")
    L.append("|---|" + "---|" * len(datasets))
    for label, cells in targets(by, datasets, tools):
        out = []
        for d in datasets:
            text, met = cells[d]
            out.append(text + ("" if met is None else (" ✓" if met else " ✗")))
        L.append(f"| {label} | " + " | ".join(out) + " |")
    L.append("")
    L.append("Speed: the peer's seconds / push-operator's (>1: push-operator faster), naming the peer "
             "compared (the fastest of those the target names). Size and RSS: push-operator's / the "
             "smallest peer's (≤1 met).")
    L.append("")
    L.append("## Every measurement: wall s (CPU s, peak RSS MiB)")
    L.append("")
    ops = (("initial", "initial push"), ("nochange", "no-change push"), ("change", "push after a change"),
           ("restore", "restore latest"), ("prune", "forget all but latest + prune"),
           ("nochange-key", "no-change push, raw key (push-operator only)"))
    L.append("| dataset | operation | " + " | ".join(tools) + " |")
    L.append("|---|---|" + "---:|" * len(tools))
    flagged = False
    for d in datasets:
        for op, label in ops:
            rs = [by.get((d, t, op)) for t in tools]
            if all(r is None for r in rs):
                continue
            flagged = flagged or any(busy(r, nproc) for r in rs)
            if op == "change" and d == "growing":
                label = f"{(meta.get('growing_versions') or 10) - 1} pushes after changes (sum; RSS max)"
            L.append(f"| {d} | {label} | " + " | ".join(cell(r, nproc) for r in rs) + " |")
    L.append("")
    if flagged:
        L.append(f"\\* other processes used more than {BUSY_SHARE:.0%} of the machine's CPU during this measurement.")
        L.append("")
    if peers:
        L.append("## Ratios to every peer: the peer's time / push-operator's, push-operator's RSS / the peer's")
        L.append("")
        L.append("| dataset | operation | " + " | ".join(f"{p} time | {p} RSS" for p in peers) + " |")
        L.append("|---|---|" + "---:|---:|" * len(peers))
        for d in datasets:
            for op, label in ops[:4]:
                a = by.get((d, PO, op))
                if a is None:
                    continue
                cells = []
                for p in peers:
                    b = by.get((d, p, op))
                    cells.append(times(ok_num(a, "seconds"), ok_num(b, "seconds")))
                    cells.append(ratio(ok_num(a, "max_rss_kib"), ok_num(b, "max_rss_kib")))
                L.append(f"| {d} | {label} | " + " | ".join(cells) + " |")
        L.append("")
    lim = [(d, by.get((d, PO, "limits")), by.get((d, PO, "initial"))) for d in datasets]
    lim = [(d, l, a) for d, l, a in lim if l and isinstance(l.get("output"), dict) and a]
    if lim:
        L.append("## Distance to the machine's limit")
        L.append("")
        L.append("Each stage of a push alone, on one thread, over the same data (`push-operator engine-limits`: "
                 "the files read from the page cache, FastCDC, keyed BLAKE3, zstd level 3, AES-256-GCM); the sum "
                 "divided by the cores is the fastest a push of it could be on this machine.")
        L.append("")
        L.append("| dataset | read s | FastCDC s | BLAKE3 s | zstd s | AES-GCM s | sum s | sum / cores s | initial push s | push / bound |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for d, l, a in lim:
            o = l["output"]
            L.append(
                f"| {d} | {o['read_s']:.2f} | {o['fastcdc_s']:.2f} | {o['blake3_s']:.2f} | {o['zstd_s']:.2f} | "
                f"{o['seal_s']:.2f} | {o['sum_s']:.2f} | {o['bound_s']:.2f} | {a['seconds']:.2f} | "
                f"{a['seconds'] / o['bound_s']:.2f}× |"
            )
        L.append("")
    if backend == "local":
        L.append("## Store size after the last push, and after forget + prune (`du -sb`)")
        L.append("")
        L.append("| dataset | dataset | " + " | ".join(tools) + " | push-operator / smallest peer |")
        L.append("|---|---:|" + "---:|" * len(tools) + "---:|")
        for d in datasets:
            sizes = [(by.get((d, t, "store")) or {}).get("store_bytes") for t in tools]
            after = [(by.get((d, t, "prune")) or {}).get("store_bytes") for t in tools]
            ps = [v for t, v in zip(tools, sizes) if t != PO and v]
            mine = sizes[tools.index(PO)] if PO in tools else None
            L.append(
                f"| {d} | {fmt_bytes(info.get(d, {}).get('bytes'))} | "
                + " | ".join(f"{fmt_bytes(a)} → {fmt_bytes(b)}" for a, b in zip(sizes, after))
                + f" | {ratio(mine, min(ps) if ps else None)} |"
            )
        L.append("")
    L.append("## Restore check")
    L.append("")
    L.append("Content: `diff -rq --no-dereference` (trees) or `cmp` (image) against the working copy. "
             "Metadata: type, mode, uid/gid, size, mtime (ns; files and dirs), symlink target.")
    L.append("")
    L.append("| dataset | " + " | ".join(tools) + " |")
    L.append("|---|" + "---|" * len(tools))
    for d in datasets:
        cells = []
        for t in tools:
            r = by.get((d, t, "restore"))
            if r is None:
                cells.append("—")
                continue
            m = r.get("meta_check") or {}
            meta_ok = isinstance(m, dict) and m.get("ok")
            bad = ""
            if isinstance(m, dict) and m and not meta_ok:
                mism = {k: v for k, v in (m.get("mismatch") or {}).items() if v}
                bad = "; metadata differs: " + ", ".join(f"{k} {v}" for k, v in mism.items())
            cells.append(f"{r.get('check', '—')}{bad}")
        L.append(f"| {d} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Raw records: `results.jsonl`; each command, its output and stderr: `logs/`.")
    L.append("")
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write("\n".join(L))
    return 0


def main(argv):
    if len(argv) < 2 or argv[1] not in ("record", "treemeta", "render"):
        print(__doc__, file=sys.stderr)
        return 2
    return {"record": cmd_record, "treemeta": cmd_treemeta, "render": cmd_render}[argv[1]](argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
