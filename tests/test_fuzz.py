"""The fuzzing harness (tests/fuzz_cases.py) over every format: each case ends in success with correct
output or a one-line error, within its time and memory bound, with nothing left behind.

The default corpus (every crafted hostile file, one seeded mutant of each kind per format) runs here;
`ZOO_FUZZ_PER_KIND=N` (nox -s fuzz) adds N seeded mutants of each kind per format. A summary of the
outcomes per format is printed, and written as JSON to $ZOO_FUZZ_REPORT when that is set.
"""

from __future__ import annotations

import collections
import json
import os

import pytest

fuzz_cases = pytest.importorskip("fuzz_cases")
for _package in ("torch", "flax", "keras", "h5py", "safetensors"):
    pytest.importorskip(_package)

PER_KIND = int(os.environ.get("ZOO_FUZZ_PER_KIND", "1"))


@pytest.mark.fuzz
def test_fuzz_corpus(capsys):
    cases = fuzz_cases.corpus(PER_KIND)
    rows = fuzz_cases.run_cases(cases)
    counts = collections.defaultdict(collections.Counter)
    failures = []
    for row in rows:
        for r in row["results"]:
            counts[row["fmt"]][r["outcome"]] += 1
            if r["outcome"] not in ("ok", "error"):
                failures.append(f"{row['fmt']} {row['kind']} seed {row['seed']} ({row['what']}): {r['op']}"
                                f"{' -> ' + r['dst'] if r.get('dst') else ''}: {r['outcome']}: {r['detail']}")
    summary = {fmt: dict(c) for fmt, c in counts.items()}
    with capsys.disabled():
        print(f"\nfuzz: {len(rows)} cases, {sum(sum(c.values()) for c in counts.values())} operations; "
              f"outcomes per format: {json.dumps(summary)}")
    if os.environ.get("ZOO_FUZZ_REPORT"):
        with open(os.environ["ZOO_FUZZ_REPORT"], "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
    assert not failures, f"{len(failures)} operation(s) failed:\n" + "\n".join(failures[:60])
