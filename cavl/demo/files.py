"""Small atomic writers shared by the format modules (JSON via cavl.io.write_json_atomic)."""

import json
import os
import random

from cavl.io import atomic_path, write_json_atomic  # noqa: F401 (the format modules import it from here)


def write_jsonl_atomic(records, path):
    """One compact JSON object per line, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_text_atomic(text, path):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)


def rng_for(seed, dataset, variant=1):
    """Independent, reproducible stream per (variant, seed, dataset): one dataset's count does
    not change another's data, and a variant does not replay another's draws (variant 1 keeps
    the original names). random.Random seeds a str through SHA-512: no PYTHONHASHSEED dependence."""
    stream = "cavl.demo" if variant == 1 else f"cavl.demo.v{variant}"
    return random.Random(f"{stream}/{seed}/{dataset}")


def rel(path, out_dir):
    return os.path.relpath(path, out_dir).replace(os.sep, "/")


def split_counts(n, fractions):
    """Split n items by `fractions` (the first split takes the remainder); every split
    gets at least one item when n allows it."""
    sizes = [int(round(n * f)) for f in fractions[1:]]
    if n >= len(fractions):
        sizes = [max(1, s) for s in sizes]
    sizes = [min(s, n) for s in sizes]
    first = n - sum(sizes)
    while first < 0:  # tiny n: take back from the last non-empty split
        k = max(i for i, s in enumerate(sizes) if s)
        sizes[k] -= 1
        first += 1
    return [first] + sizes
