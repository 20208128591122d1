#!/usr/bin/env python3
"""Make the "small" dataset: many small files (like a mail spool, a package cache or
node_modules), deterministic from a seed.

    smallfiles.py CORPUS_DIR OUT_DIR [--files N] [--seed S]

Each file is a slice of real text from CORPUS_DIR (the Linux source's Documentation/, which
compresses like text does) behind a header line that makes it unique; sizes follow a
log-normal distribution (median 1 KiB, capped at 256 KiB), 100 files per directory, 1,000 per
parent directory. mtimes are fixed so two builds give the same tree.
"""

import os
import random
import sys


def corpus(root):
    parts = []
    for dirpath, _, names in sorted(os.walk(root)):
        for n in sorted(names):
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    parts.append(f.read())
    return b"".join(parts)


def main(argv):
    args = list(argv)
    files, seed = 300_000, 42
    if "--files" in args:
        i = args.index("--files")
        files = int(args[i + 1])
        del args[i : i + 2]
    if "--seed" in args:
        i = args.index("--seed")
        seed = int(args[i + 1])
        del args[i : i + 2]
    src, out = args
    text = corpus(src)
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        d = os.path.join(out, f"{i // 1000:04d}", f"{(i // 100) % 10}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        size = min(int(rng.lognormvariate(6.93, 1.0)), 256 << 10)
        at = rng.randrange(0, len(text) - size - 1)
        body = f"item {i} seed {seed}\n".encode() + text[at : at + size]
        p = os.path.join(d, f"f{i:06d}.txt")
        with open(p, "wb") as f:
            f.write(body)
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
        total += len(body)
    print(f"{files} files, {total} bytes in {out}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
