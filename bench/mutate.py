#!/usr/bin/env python3
"""Deterministically change about PERCENT % of the bytes of PATH, in place.

    mutate.py PATH PERCENT SEED

Same PATH content + same PERCENT + same SEED -> same bytes changed, same new bytes.

Directory PATH
    The regular files under PATH (symlinks are neither followed nor changed) are
    listed and sorted by relative path. A random.Random(SEED) then picks files
    from that sorted list until PERCENT % of the total file bytes has been
    written. A pick is weighted by file size (it is the file that holds a byte
    offset drawn uniformly over all the data), so changes are spread over the
    data the way writes to a database or a big tree are, and a large file can be
    picked more than once. Each pick overwrites one random 4-64 KiB range inside
    the file with seeded random bytes (the whole file when it is smaller than
    the drawn length). A few new files (3-5, 4-64 KiB of seeded random bytes)
    are also added next to randomly picked files; their bytes count towards the
    target. File sizes of existing files never change.

Single file PATH (a disk image)
    Scattered 4 KiB blocks, drawn without replacement by random.Random(SEED),
    totalling PERCENT % of the file size, are overwritten with seeded random
    bytes. The size does not change (holes in a sparse file get allocated).

mtimes are left to change naturally (no os.utime). A JSON summary goes to stdout.
Standard library only.
"""

import bisect
import json
import os
import random
import stat
import sys

BLOCK = 4096
MIN_RANGE = 4 * 1024
MAX_RANGE = 64 * 1024


def list_files(root):
    """Sorted (relative path, size) of the regular files under root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            out.append((os.path.relpath(full, root), st.st_size))
    out.sort(key=lambda t: t[0].encode("utf-8", "surrogateescape"))
    return out


def overwrite(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def mutate_dir(root, percent, rng):
    files = [(p, s) for p, s in list_files(root) if s > 0]
    total = sum(s for _, s in files)
    if total == 0:
        raise SystemExit(f"{root}: no data to change")
    target = int(total * percent / 100)
    written = 0

    # New files first (their count and sizes are drawn before any pick, so they
    # do not depend on how many picks the target needs).
    new_files = []
    for i in range(rng.randint(3, 5)):
        rel_parent = os.path.dirname(rng.choice(files)[0])
        size = rng.randint(MIN_RANGE, MAX_RANGE)
        name = os.path.join(rel_parent, f"bench-mutate-{i:02d}.bin")
        path = os.path.join(root, name)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
        new_files.append(name)
        written += size

    # Cumulative sizes for size-weighted picks.
    cum = []
    acc = 0
    for _, s in files:
        acc += s
        cum.append(acc)

    picks = 0
    touched = set()
    while written < target:
        pos = rng.randrange(total)
        idx = bisect.bisect_right(cum, pos)
        rel, size = files[idx]
        length = rng.randint(MIN_RANGE, MAX_RANGE)
        if size <= length:
            offset, length = 0, size
        else:
            offset = rng.randrange(size - length + 1)
        overwrite(os.path.join(root, rel), offset, rng.randbytes(length))
        written += length
        picks += 1
        touched.add(rel)

    return {
        "kind": "directory",
        "files_total": len(files),
        "bytes_total": total,
        "target_bytes": target,
        "bytes_written": written,
        "ranges_written": picks,
        "files_changed": len(touched),
        "files_added": new_files,
    }


def mutate_file(path, percent, rng):
    size = os.path.getsize(path)
    nblocks = size // BLOCK + (1 if size % BLOCK else 0)
    if nblocks == 0:
        raise SystemExit(f"{path}: empty file")
    want = max(1, round(size * percent / 100 / BLOCK))
    want = min(want, nblocks)
    blocks = sorted(rng.sample(range(nblocks), want))
    written = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        for b in blocks:
            off = b * BLOCK
            n = min(BLOCK, size - off)
            os.pwrite(fd, rng.randbytes(n), off)
            written += n
    finally:
        os.close(fd)
    return {
        "kind": "file",
        "bytes_total": size,
        "target_bytes": int(size * percent / 100),
        "bytes_written": written,
        "blocks_written": len(blocks),
    }


def main(argv):
    if len(argv) != 4:
        print("usage: mutate.py PATH PERCENT SEED", file=sys.stderr)
        return 2
    path, percent, seed = argv[1], float(argv[2]), int(argv[3])
    if not 0 < percent <= 100:
        print("PERCENT must be in (0, 100]", file=sys.stderr)
        return 2
    rng = random.Random(seed)
    if os.path.isdir(path) and not os.path.islink(path):
        summary = mutate_dir(path, percent, rng)
    elif os.path.isfile(path):
        summary = mutate_file(path, percent, rng)
    else:
        print(f"{path}: not a directory or regular file", file=sys.stderr)
        return 2
    summary.update(path=os.path.abspath(path), percent=percent, seed=seed)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
