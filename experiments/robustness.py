"""Robustness counts: reader fuzzing and SIGKILL/resume, written to results/robustness.md.

    python experiments/robustness.py [--kills 5] [--fuzz-examples 100]

1. Runs the hypothesis reader fuzzing (tests/test_fuzz_readers.py) with counting on and
   collects the counts (files, lines, bad lines injected, by reader and kind).
2. Trains a reference DeepFM on synthetic data with mid-epoch checkpoints, then --kills times:
   starts the same command, SIGKILLs it at a random moment after its first checkpoint, restarts
   it with the same command until it finishes, and checks the final params are bit-identical
   to the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from common import RESULTS, ROOT, command_line, machine

from afm_jax.checkpoint import load_params

TRAIN = [sys.executable, "-m", "afm_jax.cli", "train", "--data", "synthetic:30000", "--model",
         "deepfm", "--mlp", "64,32", "--epochs", "2", "--batch-size", "256", "--patience", "5",
         "--checkpoint-every", "9", "--no-progress"]


def checkpoints(out: Path) -> list[int]:
    """The run's checkpoint steps: in OUT.partial while it runs, in OUT once it completed."""
    for d in (out.with_name(out.name + ".partial"), out):
        state = d / "state"
        if state.exists():
            return sorted(int(p.name) for p in state.iterdir() if p.name.isdigit())
    return []


def kill_and_resume(ref: Path, work: Path, rng: random.Random) -> dict:
    proc = subprocess.Popen(TRAIN + ["--out", str(work)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not checkpoints(work) and proc.poll() is None:
        time.sleep(0.02)
    delay = rng.uniform(0.0, 3.0)
    time.sleep(delay)
    finished_before_kill = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = checkpoints(work)
    restarts = 0
    while not (work / "params").exists():  # the same command until the run completes
        subprocess.run(TRAIN + ["--out", str(work)], check=True, capture_output=True)
        restarts += 1
    a, b = load_params(ref / "params"), load_params(work / "params")
    identical = all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                          jax.tree_util.tree_leaves(b)))
    return {"delay_s": round(delay, 2), "last_checkpoint_step": at[-1] if at else None,
            "finished_before_kill": finished_before_kill, "restarts": restarts,
            "bit_identical": identical}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "robustness.md"),
                    help="the report; the fuzzing counts go beside it as fuzz_counts.json")
    args = ap.parse_args()
    counts_path = Path(args.out).with_name("fuzz_counts.json")
    env = dict(os.environ, AFM_JAX_WRITE_FUZZ_COUNTS=str(counts_path.resolve()))
    fuzz = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_fuzz_readers.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    fuzz_summary = fuzz.stdout.strip().splitlines()[-1] if fuzz.stdout.strip() else fuzz.stderr
    counts = json.loads(counts_path.read_text())
    rng = random.Random(args.seed)
    kills = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        subprocess.run(TRAIN + ["--out", str(ref)], check=True, capture_output=True)
        for k in range(args.kills):
            res = kill_and_resume(ref, Path(tmp) / f"killed{k}", rng)
            kills.append(res)
            print(k, res, flush=True)
    readers = {k: v for k, v in counts.items()
               if k != "total" and isinstance(v, dict) and "files" in v}
    lines = ["# Robustness: fuzzed inputs and killed runs", "",
             f"Command: `{command_line()}`  ", f"Machine: {machine()}", "",
             "## Reader fuzzing (hypothesis, tests/test_fuzz_readers.py)", "",
             f"Result: `{fuzz_summary}`. Every generated file either raised DataError naming "
             "file, line and field, or (skipping on) accounted for every line: rows read + "
             "rows skipped = data lines, and the first skipped line numbers are exactly the "
             "injected ones.", "",
             "| reader | files | data lines | bad lines injected | kinds |",
             "|---|---:|---:|---:|---|"]
    for name, c in readers.items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(c.get("bad_lines_by_kind", {}).items()))
        lines.append(f"| {name} | {c['files']} | {c['lines']} | {c['bad_lines']} | {kinds} |")
    tot = {k: sum(c[k] for c in readers.values()) for k in ("files", "lines", "bad_lines")}
    lines.append(f"| **total** | {tot['files']} | {tot['lines']} | {tot['bad_lines']} | |")
    ok = sum(k["bit_identical"] for k in kills)
    lines += ["", "## SIGKILL and resume", "",
              f"`{' '.join(TRAIN[2:])}` (checkpoint every 9 steps, 2 epochs of 118 steps), "
              f"killed {len(kills)} times at a random moment after its first checkpoint and "
              f"restarted with the same command: {ok} of {len(kills)} ended with params "
              "bit-identical to an uninterrupted run.", "",
              "| kill | delay after first checkpoint (s) | last checkpoint step | restarts | "
              "bit-identical |", "|---:|---:|---:|---:|---|"]
    for i, k in enumerate(kills):
        lines.append(f"| {i} | {k['delay_s']} | {k['last_checkpoint_step']} | {k['restarts']} | "
                     f"{'yes' if k['bit_identical'] else 'NO'} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
