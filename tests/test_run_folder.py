"""The run folder of `zoo train`: only the zoo's own folders are written into, the checkpoint is one file that an
interruption at any point leaves whole, a resume refuses what does not fit (with one line, changing nothing), and
runs whose recipe or weights are not finite stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo import data, training

pytestmark = pytest.mark.trains

if not (data.DEFAULT_DIR / data.FILES[("train", "images")][0]).exists():
    pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
                allow_module_level=True)

ROOT = Path(__file__).parents[1]
ARGS = ["--epochs", "2", "--batch-size", "32", "--limit", "64", "--seed", "3"]  # 2 steps an epoch


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder`: its kind, size, modification time and bytes (links as links)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
        out[str(p.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns, body)
    return out


def cli(*argv) -> tuple[int, str]:
    """`zoo train ...` in this process: (exit status, stderr's last line)."""
    import contextlib
    import io

    from zoo.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", *map(str, argv)])
    lines = err.getvalue().strip().splitlines()
    return rc, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def half_run(tmp_path_factory) -> Path:
    """A torch run of lenet_relu interrupted after epoch 1 of 2 (its checkpoint written): copied by each test."""
    out = tmp_path_factory.mktemp("seed") / "run"
    stop = training.Loop.end_epoch

    def end_then_stop(self, *args):
        stop(self, *args)
        raise KeyboardInterrupt

    training.Loop.end_epoch = end_then_stop
    try:
        assert cli("lenet_relu", "--out", out, *ARGS)[0] == 130
    finally:
        training.Loop.end_epoch = stop
    assert training.checkpoint_epoch(out) == 1
    return out


@pytest.fixture
def run(half_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(half_run, out, symlinks=True)
    return out


def rewrite(out: Path, arrays=None, meta=None) -> None:
    """Write the checkpoint again with `arrays(dict)` and `meta(dict)` applied (each edits in place; meta=False
    leaves the metadata out)."""
    found, path = training.read_checkpoint(out), out / training.CHECKPOINT
    m, a = found
    if arrays:
        arrays(a)
    if meta:
        meta(m)
    if meta is not False:
        a[training.META_KEY] = np.frombuffer(json.dumps(m).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **a)


def epochs_in_metrics(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---- only the zoo's folders are written into


@pytest.mark.parametrize("through", ["folder", "symlink"])
def test_resume_refuses_a_folder_of_the_users_files(tmp_path, through):
    """Before: exit 0, three of the four files replaced and metrics.jsonl appended to."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("weights.safetensors", "metrics.jsonl", "curves.png", "checkpoint.npz", "checkpoint.json"):
        (mine / name).write_text(f"the user's own {name}\n")
    out = mine if through == "folder" else tmp_path / "link"
    if through == "symlink":
        out.symlink_to(mine)
    before = snapshot(mine)
    rc, err = cli("lenet_relu", "--out", out, *ARGS, "--resume")
    assert rc == 2 and err == f"zoo: error: {out} is not a zoo run folder (it has no run.json): nothing in it was " \
                              f"changed; choose another --out for a new run"
    rc, err = cli("lenet_relu", "--out", out, *ARGS)
    assert rc == 2 and err.endswith("holds other files; choose a new or empty --out folder for the run")
    assert snapshot(mine) == before


def test_resume_needs_a_run_folder(tmp_path):
    """Before: --resume on a folder that does not exist trained from scratch."""
    rc, err = cli("lenet_relu", "--out", tmp_path / "none", *ARGS, "--resume")
    assert rc == 2 and "does not exist, so there is no run to resume; leave out --resume" in err
    assert not (tmp_path / "none").exists()


def test_a_run_folder_of_an_earlier_zoo_is_named_as_such(tmp_path):
    """Folders of the two-file checkpoint (checkpoint.npz + checkpoint.json) are not resumed, and said to be
    an earlier zoo's, not "not a zoo run folder"."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "checkpoint.npz").write_bytes(b"PK\x05\x06" + bytes(18))
    (old / "checkpoint.json").write_text('{"framework": "torch", "epoch": 1, "history": [], "recipe": {}, '
                                         '"spec": {}}')
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    rc, err = cli("lenet_relu", "--out", old, *ARGS, "--resume")
    assert rc == 2 and "holds a run of an earlier zoo" in err and "start a new run with another --out" in err, err
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before


def test_links_in_the_run_folder_are_replaced_not_written_through(run, tmp_path):
    """metrics.jsonl was appended to, so a link there wrote into the file it points at."""
    outside = tmp_path / "notes.jsonl"
    outside.write_text("the user's notes\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside)
    assert cli("lenet_relu", "--out", run, "--resume")[0] == 0
    assert outside.read_text() == "the user's notes\n" and not (run / "metrics.jsonl").is_symlink()
    assert epochs_in_metrics(run) == [1, 2]


# ---- the checkpoint is one file, whole after any interruption


def _interrupt_at(monkeypatch, point: str):
    """Raise KeyboardInterrupt at `point` of the second epoch's checkpoint write (the first one runs as usual)."""
    from zoo.io import checkpoint

    calls = {"n": 0}

    def second(kind):
        calls[kind] = calls.get(kind, 0) + 1
        return calls[kind] == 2

    savez, move, metrics = np.savez, checkpoint._move, training.write_metrics

    def savez_half(f, *a, **kw):
        savez(f, *a, **kw)
        if point == "writing the checkpoint" and second("savez"):
            f.truncate(f.tell() // 2)
            raise KeyboardInterrupt

    def move_at(tmp, path, force):
        if path.name == training.CHECKPOINT and point == "before its move" and second("move"):
            raise KeyboardInterrupt
        move(tmp, path, force)
        if path.name == training.CHECKPOINT and point == "after its move" and second("move"):
            raise KeyboardInterrupt

    def metrics_at(out, history):
        if point == "writing metrics.jsonl" and second("metrics"):
            (out / "metrics.jsonl").write_text("")  # as if cut off (the real write is atomic)
            raise KeyboardInterrupt
        metrics(out, history)

    monkeypatch.setattr(np, "savez", savez_half)
    monkeypatch.setattr(checkpoint, "_move", move_at)
    monkeypatch.setattr(training, "write_metrics", metrics_at)


@pytest.mark.parametrize("point", ["writing the checkpoint", "before its move", "after its move",
                                   "writing metrics.jsonl"])
def test_an_interrupted_checkpoint_write_leaves_one_whole_checkpoint(tmp_path, monkeypatch, point):
    """Before: two files replaced one after the other, leaving the json at epoch 1 and the npz at epoch 2, the
    `.checkpoint.partial.*` temporaries behind, and metrics.jsonl with duplicated epochs after the resume."""
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, point)
    rc, err = cli("lenet_relu", "--out", out, *ARGS)
    assert rc == 130
    epoch = training.checkpoint_epoch(out)
    assert epoch == (2 if point in ("after its move", "writing metrics.jsonl") else 1), err
    assert f"kept the checkpoint of epoch {epoch}" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "metrics.jsonl", "run.json"]
    monkeypatch.undo()
    assert cli("lenet_relu", "--out", out, "--resume")[0] == 0
    assert training.checkpoint_epoch(out) == 2 and epochs_in_metrics(out) == [1, 2]


def test_signals_wait_for_the_checkpoint_and_metrics(tmp_path, monkeypatch):
    """A real SIGINT (and SIGTERM) in the middle of the write: both files are written, then the run stops."""
    savez, calls = np.savez, []

    def savez_signalled(f, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        savez(f, *a, **kw)

    monkeypatch.setattr(np, "savez", savez_signalled)
    out = tmp_path / "run"
    rc, err = cli("lenet_relu", "--out", out, *ARGS, "--epochs", "3")
    assert rc == 130 and "kept the checkpoint of epoch 2" in err
    assert training.checkpoint_epoch(out) == 2 and epochs_in_metrics(out) == [1, 2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "metrics.jsonl", "run.json"]


def test_a_disk_full_checkpoint_write_leaves_the_last_one(run, monkeypatch):
    savez = np.savez

    def savez_full(f, *a, **kw):
        savez(f, *a, **kw)
        f.truncate(1000)
        raise OSError(28, "No space left on device")

    before = (run / "checkpoint.npz").read_bytes()
    monkeypatch.setattr(np, "savez", savez_full)
    rc, err = cli("lenet_relu", "--out", run, "--resume")
    assert rc == 2 and err == "zoo: error: [Errno 28] No space left on device"
    assert (run / "checkpoint.npz").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


# ---- resume takes the run from the folder, and checks what the folder holds


def test_resume_takes_the_recipe_from_the_folder(run, capsys):
    """Before: every option had to be given again, and a differing one dumped the whole recipe."""
    rc, err = cli("lenet_relu", "--out", run, "--resume", "--epochs", "3", "--lr", "0.5", "--limit", "32",
                  "--framework", "flax")
    assert rc == 2 and err == (f"zoo: error: {run} holds a run started with other options: --framework flax (the "
                               f"run's: torch); --epochs 3 (the run's: 2); --lr 0.5 (the run's: 0.001); --limit 32 "
                               f"(the run's: 64). `--resume` alone continues it as it was started; for another "
                               f"recipe choose another --out")
    assert cli("lenet", "--out", run, "--resume")[1].endswith("the model lenet (the run's: lenet_relu). `--resume` "
                                                              "alone continues it as it was started; for another "
                                                              "recipe choose another --out")
    assert cli("lenet_relu", "--out", run, "--resume", "--epochs", "2", "--limit", "64")[0] == 0  # the same: fine
    capsys.readouterr()
    assert training.checkpoint_epoch(run) == 2
    assert cli("lenet_relu", "--out", run, "--resume") == (0, "")
    assert f"{run}: the run is complete (2 of 2 epochs, test accuracy " in capsys.readouterr().out


def test_resume_checks_the_data_subset(run):
    """Before: another --limit continued silently (the subset was no part of what the checkpoint records)."""
    rc, err = cli("lenet_relu", "--out", run, "--resume", "--limit", "96")
    assert rc == 2 and "--limit 96 (the run's: 64)" in err
    with pytest.raises(training.CheckpointError, match=r"holds another run: --limit 96 \(the run's: 64\)"):
        from zoo.frameworks import torch_train

        r = training.read_run(run)
        torch_train.train(r.spec, r.recipe, run, resume=True, limit=96, progress=False)


def _nan_weight(a):
    a["model/conv1.weight"][0, 0, 0, 0] = np.nan


def _drop(key):
    return lambda d: d.pop(key)


def _set(key, value):
    def edit(d):
        d[key] = value
    return edit


def _set_run(key, value):
    def edit(d):
        d["run"][key] = value
    return edit


# (what, how the checkpoint is damaged, what the one-line error says)
DAMAGE = [
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:5000]), "is damaged or not a zoo checkpoint"),
    ("bit flipped", lambda p: p.write_bytes(_flip(p.read_bytes(), 3000)), "is damaged or not a zoo checkpoint"),
    ("empty", lambda p: p.write_bytes(b""), "is damaged or not a zoo checkpoint (not a zip archive"),
    ("random bytes", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a zip archive"),
    ("a pickle", lambda p: p.write_bytes(b"\x80\x04\x95" + bytes(100)), "not a zip archive"),
    ("a folder", lambda p: (p.unlink(), p.mkdir()), "is not a regular file"),
    ("NaN weights", dict(arrays=_nan_weight), "holds NaN or Inf in model/conv1.weight (1 values)"),
    ("slot of another shape", dict(arrays=_set("optimizer/conv1.weight/exp_avg", np.zeros((2, 2), np.float32))),
     "optimizer/conv1.weight/exp_avg is float32 (2, 2), this run needs float32 (6, 1, 5, 5)"),
    ("garbage RNG state", dict(arrays=lambda a: a["rng/torch"].fill(7)), "does not load into the torch trainer"),
    ("RNG state of floats", dict(arrays=_set("rng/torch", np.zeros(5056))), "rng/torch is float64 (5056,)"),
    ("no scheduler", dict(arrays=_drop("scheduler/last_epoch")), "(differs in scheduler/last_epoch)"),
    ("wrong step count", dict(arrays=_set("scheduler/last_epoch", np.asarray(3))), "its optimizer took [3] steps"),
    ("no metadata", dict(meta=False), "holds no zoo metadata"),
    ("epoch 99", dict(meta=_set("epoch", 99)), "epoch 99 is not one of the run's 1 to 2"),
    ("epoch 2, one record", dict(meta=_set("epoch", 2)), "its history is not a list of 2 epoch record(s)"),
    ("epoch a string", dict(meta=_set("epoch", "1")), "epoch '1' is not one of the run's 1 to 2"),
    ("history not a list", dict(meta=_set("history", {"1": 2})), "its history is not a list of 1 epoch record(s)"),
    ("history of numbers", dict(meta=_set("history", [1])), "history entry 0 is not the record of epoch 1"),
    ("no epoch", dict(meta=_drop("epoch")), "its metadata lacks 'epoch'"),
    ("no framework", dict(meta=lambda m: m["run"].pop("framework")), "the run lacks framework"),
    ("run a list", dict(meta=_set("run", [1, 2])), "the run is list, not a JSON object"),
    ("another recipe", dict(meta=lambda m: m["run"]["recipe"].update(peak_lr=0.5)),
     "is not the checkpoint of the run in"),
    ("recipe of strings", dict(meta=lambda m: m["run"]["recipe"].update(epochs="2")),
     "epochs must be an int, got '2'"),
    ("NaN in the recipe", dict(meta=lambda m: m["run"]["recipe"].update(peak_lr=float("nan"))),
     "peak_lr must be a finite number"),
    ("another limit", dict(meta=_set_run("limit", 32)), "(which has --limit 64 (the checkpoint's: 32))"),
]


def _flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at] ^= 0x10
    return bytes(b)


@pytest.mark.parametrize("what, damage, said", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_checkpoint_is_refused_in_one_line(run, what, damage, said):
    """Before: tracebacks (BadZipFile, EOFError, RuntimeError, KeyError), numpy's advice to allow pickles, bare
    key names, an edited epoch 99 'finishing' at once, and NaN weights resumed."""
    if callable(damage):
        damage(run / training.CHECKPOINT)
    else:
        rewrite(run, **damage)
    before = snapshot(run)
    rc, err = cli("lenet_relu", "--out", run, "--resume")
    assert rc == 2 and err.startswith("zoo: error: ") and said in err, err
    assert "pickle" not in err and "Traceback" not in err
    assert snapshot(run) == before


def test_a_damaged_run_file_is_refused(run):
    (run / "run.json").write_text("[1, 2]")
    rc, err = cli("lenet_relu", "--out", run, "--resume")
    assert rc == 2 and err == f"zoo: error: {run / 'run.json'} is not a zoo run file of version 1; the run cannot " \
                              f"be resumed"


# ---- non-finite recipes and runs


@pytest.mark.parametrize("option", [("--lr", "inf"), ("--lr", "1e308"), ("--weight-decay", "inf"),
                                    ("--clip-norm", "nan"), ("--lr", "nan"), ("--weight-decay=-inf",)])
def test_non_finite_recipes_are_refused_before_any_work(tmp_path, option):
    """Before: they trained to NaN weights, printed a test accuracy of 0.1094 and exited 0."""
    rc, err = cli("lenet_relu", "--out", tmp_path / "run", *ARGS, *option)
    assert rc == 2 and "must be a finite number (a float32), got " in err, err
    assert not (tmp_path / "run").exists()


def test_recipe_refuses_what_overflows_or_is_not_a_number():
    for bad in (dict(peak_lr=1e38, weight_decay=1e10), dict(mean=float("nan")), dict(std=0.0), dict(seed=-1),
                dict(epochs=3.0), dict(flip=1), dict(optimizer=None), dict(momentum=1.5)):
        with pytest.raises(ValueError):
            training.Recipe(**bad)
    with pytest.raises(ValueError, match="more than 100,000,000"):
        training.lr_table(training.Recipe(), 10**9)
    lrs = training.lr_table(training.Recipe(peak_lr=1e38), 100)  # finite in float32 at every step
    assert np.isfinite(lrs).all() and lrs.max() == pytest.approx(1e38, rel=1e-6)


def test_a_diverging_run_stops_at_the_step_and_keeps_the_last_good_checkpoint(framework, tmp_path, monkeypatch):
    """A NaN image in epoch 2's second batch: the run stops there, in every trainer (Keras' `fit` too)."""
    batches = training.epoch_batches

    def poisoned(images, labels, recipe, epoch, *a, **kw):
        for i, (x, y) in enumerate(batches(images, labels, recipe, epoch, *a, **kw)):
            if epoch == 1 and i == 1:
                x = np.full_like(x, np.nan)
            yield x, y

    monkeypatch.setattr(training, "epoch_batches", poisoned)
    out = tmp_path / "run"
    rc, err = cli("lenet_relu", "--out", out, *ARGS, "--framework", framework)
    assert rc == 2 and err == (f"zoo: error: training diverged at epoch 2, step 2 of 2 (the loss is nan); the "
                               f"checkpoint of epoch 1 in {out} is kept. The run is stopped: start it again with a "
                               f"lower --lr (it was 0.001) or --clip-norm (it was 1), in a new --out")
    found = training.read_checkpoint(out)
    assert found[0]["epoch"] == 1 and all(np.isfinite(v).all() for v in found[1].values())
    assert epochs_in_metrics(out) == [1] and not (out / "weights.safetensors").exists()


# ---- quick failures


def test_wrong_options_fail_before_any_framework_is_imported(tmp_path):
    """Before: `zoo train nin --out notes.txt` imported the framework and loaded the data first (12 s in Keras)."""
    (tmp_path / "notes.txt").write_text("notes")
    code = ("import sys; from zoo.cli import main; rc = main(sys.argv[1:]); "
            "loaded = [m for m in ('torch', 'jax', 'keras', 'tensorflow') if m in sys.modules]; "
            "print(rc, loaded, file=sys.stderr)")
    for argv, said in [(["--out", tmp_path / "notes.txt", "-f", "keras"], "notes.txt is a file"),
                       (["--out", tmp_path / "run", "--input-size", "40"], "input 40x40 is too small for nin: the "
                                                                           "minimum is 67x67"),
                       (["--out", tmp_path / "run", "--lr", "inf", "-f", "flax"], "peak_lr must be a finite number"),
                       (["--out", tmp_path / "none", "--resume"], "there is no run to resume")]:
        done = subprocess.run([sys.executable, "-c", code, "train", "nin", *map(str, argv)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = done.stderr.strip().splitlines()
        assert said in lines[0] and lines[-1] == "2 []", done.stderr
