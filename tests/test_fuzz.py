"""The fuzzing harness (tests/fuzz_cases.py) over every format: each case ends in success with correct
output or a one-line error, within its time and memory bound, with nothing left behind.

The default corpus (every crafted hostile file, one seeded mutant of each kind per format) runs here;
`ZOO_FUZZ_PER_KIND=N` (nox -s fuzz) adds N seeded mutants of each kind per format. A summary of the
outcomes per format is printed, and written as JSON beside $ZOO_FUZZ_REPORT when that is set
(report.json -> report-torch-onnx.json, report-torch-flax-keras-onnx.json).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

fuzz_cases = pytest.importorskip("fuzz_cases")

PER_KIND = int(os.environ.get("ZOO_FUZZ_PER_KIND", "1"))
# The formats that need neither Flax nor Keras, converted among themselves; then every format, with
# conversions to every other (the first group's cases again, now also converted to Flax and Keras files).
GROUPS = {"torch-onnx": ("torch", "safetensors", "onnx"), "torch-flax-keras-onnx": fuzz_cases.FORMATS}
_PACKAGES = {"torch": ("torch", "safetensors"), "flax": ("flax", "orbax"), "keras": ("keras", "h5py"),
             "onnx": ("onnx", "onnxruntime")}


@pytest.mark.fuzz
@pytest.mark.parametrize("group", [pytest.param("torch-onnx", marks=pytest.mark.onnx),
                                   pytest.param("torch-flax-keras-onnx",
                                                marks=[pytest.mark.flax, pytest.mark.keras, pytest.mark.onnx])])
def test_fuzz_corpus(group, capsys):
    formats = GROUPS[group]
    for fw in fuzz_cases.frameworks(formats):
        for package in _PACKAGES[fw]:
            pytest.importorskip(package)
    cases = fuzz_cases.corpus(PER_KIND, formats)
    rows = fuzz_cases.run_cases(cases, formats=formats)
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
        print(f"\nfuzz ({group}): {len(rows)} cases, {sum(sum(c.values()) for c in counts.values())} operations; "
              f"outcomes per format: {json.dumps(summary)}")
    if os.environ.get("ZOO_FUZZ_REPORT"):
        report = Path(os.environ["ZOO_FUZZ_REPORT"])
        with open(report.with_name(f"{report.stem}-{group}{report.suffix}"), "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
    assert set(counts) == set(formats)  # every format's cases ran
    assert not failures, f"{len(failures)} operation(s) failed:\n" + "\n".join(failures[:60])


@pytest.mark.fuzz
@pytest.mark.onnx
def test_onnx_graph_edits(tmp_path, capsys):
    """A zoo-written .onnx whose graph was edited (tests/fuzz_cases.py ONNX_GRAPH_EDITS, and seeded random edits of
    one node): inspect, convert and load each end in an error, or compute what onnxruntime computes on the file."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    rows = []
    for i, case in enumerate(fuzz_cases.graph_edit_cases(int(os.environ.get("ZOO_FUZZ_GRAPH_EDITS", "30")))):
        (tmp_path / str(i)).mkdir()
        rows += fuzz_cases.run_graph_edit_case(case, tmp_path / str(i))
    counts = collections.Counter(r["outcome"] for r in rows)
    with capsys.disabled():
        print(f"\nfuzz (onnx graph edits): {len(rows) // 3} cases, {len(rows)} operations; outcomes: {dict(counts)}")
    failures = [f"{r['case']} ({r['what']}): {r['op']}: {r['outcome']}: {r['detail']}" for r in rows
                if r["outcome"] not in ("ok", "error")]
    assert not failures, f"{len(failures)} operation(s) failed:\n" + "\n".join(failures)
    assert [r["outcome"] for r in rows if r["case"] == "unedited"] == ["ok"] * 3, rows[:3]


def test_fuzz_run_folders(capsys):
    """Damaged, edited and foreign run folders through `zoo train --resume`: each resumes and finishes right, or
    is refused in one line with nothing changed (PER_KIND x 4 seeded mutants of each byte and array kind)."""
    pytest.importorskip("torch")
    from zoo import data

    if not (data.DEFAULT_DIR / data.FILES[("train", "images")][0]).exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    rows = fuzz_cases.run_folder_cases(fuzz_cases.run_corpus(PER_KIND))
    counts = collections.Counter(r["outcome"] for row in rows for r in row["results"])
    failures = [f"{row['kind']} seed {row['seed']} ({row['what']}): {r['outcome']}: {r['detail']}"
                for row in rows for r in row["results"] if r["outcome"] not in ("ok", "error")]
    with capsys.disabled():
        print(f"\nfuzz (run folders): {len(rows)} cases; outcomes: {json.dumps(dict(counts))}")
    if os.environ.get("ZOO_FUZZ_REPORT"):
        report = Path(os.environ["ZOO_FUZZ_REPORT"])
        with open(report.with_name(f"{report.stem}-run-folders{report.suffix}"), "w") as f:
            json.dump({"summary": dict(counts), "rows": rows}, f, indent=1)
    assert not failures, f"{len(failures)} case(s) failed:\n" + "\n".join(failures[:60])
