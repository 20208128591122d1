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

TOOLS = ("push-operator", "restic")
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


def cmd_render(args):
    outdir = args[0]
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

    def store_of(d, tool, op):
        """Store size recorded after step `op` (None when not measured)."""
        return (by.get((d, tool, op)) or {}).get("store_bytes")
    datasets = meta.get("datasets_run") or sorted({r["dataset"] for r in recs})
    tools = meta.get("tools_run") or list(TOOLS)
    po, rs = "push-operator", "restic"

    L = []
    L.append("# push-operator vs restic")
    L.append("")
    vers = "; ".join(f"{t}: {meta.get('versions', {}).get(t, '—')}" for t in tools)
    dsz = "; ".join(
        f"{d}: {fmt_bytes(meta['dataset_info'][d]['bytes'])}"
        + (f", {meta['dataset_info'][d]['files']} files" if meta['dataset_info'][d].get('files') is not None else "")
        for d in datasets if d in meta.get("dataset_info", {})
    )
    L.append(
        f"**{meta.get('date')}** · nproc {meta.get('nproc')} · {meta.get('cpu', '')} · "
        f"{meta.get('mem', '')} · kernel {meta.get('kernel')} · {vers} · datasets: {dsz} · "
        f"change: mutate.py {meta.get('percent')}% seed {meta.get('seed')}"
        + (f" · {meta.get('repeat')} runs each: median (min–max)" if (meta.get('repeat') or 1) > 1 else " · 1 run each")
    )
    L.append("")
    L.append(
        "Wall seconds, CPU seconds and peak RSS from `/usr/bin/time -f '%e %M %U %S'`, page cache warm, local "
        "directory store. Ratios: restic / push-operator for time (>1: push-operator faster), "
        "push-operator / restic for RSS and store size (<1: push-operator smaller)."
    )
    L.append("")
    L.append("## Time and memory")
    L.append("")
    nproc = meta.get("nproc") or 1
    flagged = False
    L.append("| dataset | operation | push-operator s | restic s | time restic/p-o | push-operator CPU s | restic CPU s | push-operator RSS MiB | restic RSS MiB | RSS p-o/restic |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in datasets:
        for op, label in OPS:
            a, b = by.get((d, po, op)), by.get((d, rs, op))
            if a is None and b is None:
                continue
            flagged = flagged or busy(a, nproc) or busy(b, nproc)
            L.append(
                f"| {d} | {label} | {fmt_s(a, nproc)} | {fmt_s(b, nproc)} | "
                f"{ratio(ok_num(b, 'seconds'), ok_num(a, 'seconds'))} | "
                f"{fmt_cpu(a)} | {fmt_cpu(b)} | "
                f"{fmt_mib(ok_num(a, 'max_rss_kib'))} | {fmt_mib(ok_num(b, 'max_rss_kib'))} | "
                f"{ratio(ok_num(a, 'max_rss_kib'), ok_num(b, 'max_rss_kib'))} |"
            )
    L.append("")
    L.append("CPU s: user + system seconds of the command (all its threads).")
    if flagged:
        L.append(
            f"\\* other processes used more than {BUSY_SHARE:.0%} of the machine's CPU during this "
            "measurement (`other_cpu_seconds` in results.jsonl): the machine was not quiet, so the wall "
            "time is inflated (CPU s less so)."
        )
    L.append("")
    L.append("## Store size after c (`du -sb`)")
    L.append("")
    L.append("| dataset | dataset size | push-operator | restic | size p-o/restic | store/dataset p-o | store/dataset restic |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for d in datasets:
        ds_bytes = meta.get("dataset_info", {}).get(d, {}).get("bytes")
        sa, sb = store_of(d, po, "store"), store_of(d, rs, "store")
        L.append(
            f"| {d} | {fmt_bytes(ds_bytes)} | {fmt_bytes(sa)} | {fmt_bytes(sb)} | {ratio(sa, sb)} | "
            f"{ratio(sa, ds_bytes)} | {ratio(sb, ds_bytes)} |"
        )
    L.append("")
    L.append("## Store size after e (forget all but the latest snapshot, prune)")
    L.append("")
    L.append("| dataset | push-operator before | push-operator after | restic before | restic after | after p-o/restic |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for d in datasets:
        if by.get((d, po, "prune")) is None and by.get((d, rs, "prune")) is None:
            continue
        sa, sb = store_of(d, po, "prune"), store_of(d, rs, "prune")
        L.append(
            f"| {d} | {fmt_bytes(store_of(d, po, 'store'))} | {fmt_bytes(sa)} | "
            f"{fmt_bytes(store_of(d, rs, 'store'))} | {fmt_bytes(sb)} | {ratio(sa, sb)} |"
        )
    L.append("")
    L.append("## Bytes added to the store by each push")
    L.append("")
    L.append("push-operator: `bytes_new` / `bytes_uploaded` from `push --json`; restic: `data_added` from `backup --json` (restic 0.14 counts it before compression; the store-size columns show what was written).")
    L.append("")
    L.append("| dataset | push | push-operator bytes_new | push-operator bytes_uploaded | push-operator chunks new/reused | restic data_added (raw) | store after (p-o) | store after (restic) |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for d in datasets:
        for op, label in OPS[:3]:
            a, b = by.get((d, po, op)), by.get((d, rs, op))
            if a is None and b is None:
                continue
            ao = (a or {}).get("output") or {}
            bo = (b or {}).get("output") or {}
            if not isinstance(ao, dict):
                ao = {}
            if not isinstance(bo, dict):
                bo = {}
            chunks = "—"
            if ao.get("chunks_new") is not None:
                chunks = f"{ao.get('chunks_new')}/{ao.get('chunks_reused')}"
            L.append(
                f"| {d} | {label} | {fmt_bytes(ao.get('bytes_new'))} | {fmt_bytes(ao.get('bytes_uploaded'))} | "
                f"{chunks} | {fmt_bytes(bo.get('data_added'))} | "
                f"{fmt_bytes(store_of(d, po, op))} | {fmt_bytes(store_of(d, rs, op))} |"
            )
    L.append("")
    L.append("## Restore check")
    L.append("")
    L.append("Content: `diff -rq --no-dereference` (trees) or `cmp` (image) against the mutated working copy. "
             "Metadata (informational): type, mode, uid/gid, file size, mtime (ns, files and dirs), symlink target.")
    L.append("")
    L.append("| dataset | tool | content | metadata |")
    L.append("|---|---|---|---|")
    for d in datasets:
        for t in tools:
            r = by.get((d, t, "restore"))
            if r is None:
                continue
            m = r.get("meta_check") or {}
            if isinstance(m, dict) and m:
                if m.get("ok"):
                    mtxt = f"ok ({m.get('entries')} entries)"
                else:
                    bad = {k: v for k, v in (m.get("mismatch") or {}).items() if v}
                    parts = [f"{k} {v}" for k, v in bad.items()]
                    if m.get("missing"):
                        parts.append(f"missing {m['missing']}")
                    if m.get("extra"):
                        parts.append(f"extra {m['extra']}")
                    mtxt = f"differs of {m.get('entries')}: " + ", ".join(parts)
            else:
                mtxt = "—"
            L.append(f"| {d} | {t} | {r.get('check', '—')} | {mtxt} |")
    L.append("")
    muts = [by[k] for k in groups if k[2] == "mutate"]
    if muts:
        L.append("## The 1% change")
        L.append("")
        for r in muts:
            o = r.get("output") or {}
            if o.get("kind") == "directory":
                L.append(
                    f"- {r['dataset']}: {fmt_bytes(o.get('bytes_written'))} written "
                    f"({o.get('ranges_written')} ranges in {o.get('files_changed')} of {o.get('files_total')} files, "
                    f"{len(o.get('files_added') or [])} files added)"
                )
            else:
                L.append(
                    f"- {r['dataset']}: {fmt_bytes(o.get('bytes_written'))} written "
                    f"({o.get('blocks_written')} scattered 4 KiB blocks)"
                )
        L.append("")
    L.append(f"Raw records: `results.jsonl`; tool output and stderr: `logs/`.")
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
