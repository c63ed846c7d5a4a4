"""Train-step time and peak memory against vocabulary rows: row-wise vs dense table updates.

DeepFM on 26 categorical fields (vocabulary split over them like Criteo's, Zipf ids) and 13
numeric fields, embeddings 16, MLP 400-400-400, packed tables. `timing`: per (rows, batch) one
fresh process times every optimizer in interleaved rounds (ratios that hold on a shared
machine). `measure`: each (rows, optimizer) in its own process, so its peak memory (max RSS)
is its own.

    python experiments/table_scale.py [--vocab 17000,1000000,10000000] [--batches 1024,4096]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

# Criteo's 26 categorical fields at min-count 10 (relative sizes of the sample's vocabularies)
_CRITEO_SHARE = np.array([1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683,
                          8351593, 3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18,
                          15, 286181, 105, 142572], np.float64)


def vocab_sizes(total: int, fields: int = 26) -> list[int]:
    """`fields` vocabulary sizes summing to `total`, in Criteo's proportions (each >= 2)."""
    share = _CRITEO_SHARE[:fields] / _CRITEO_SHARE[:fields].sum()
    sizes = np.maximum(2, np.floor(share * total)).astype(np.int64)
    sizes[int(np.argmax(sizes))] += total - int(sizes.sum())
    return [int(v) for v in sizes]


def _setup(total: int, batch: int, optimizers, n_batches: int = 4):
    """DeepFM over `total` rows (`vocab_sizes`), each optimizer's (step, params, state) and
    `n_batches` device batches of Zipf ids."""
    import jax

    from afm_jax.data import FeatureInfo
    from afm_jax.models import build_model
    from afm_jax.packing import pack
    from afm_jax.train import TrainConfig, _adam_step, _start

    sizes = vocab_sizes(total)
    info = FeatureInfo(cat_names=tuple(f"C{i}" for i in range(26)), vocab_sizes=tuple(sizes),
                       num_names=tuple(f"I{i}" for i in range(13)))
    model = build_model("deepfm", info)
    runs = {}
    for optimizer in optimizers:
        config = TrainConfig(table_optimizer=optimizer)
        loop = _start(model, info, config, None, None, False)
        runs[optimizer] = [_adam_step(model, config.learning_rate, 0.0, optimizer),
                           pack(model, loop.params), loop.opt_state]
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n_batches):
        cat, num, label = synthetic_rows(sizes, batch, rng)
        batches.append(jax.device_put({"cat": cat, "num": num, "label": label,
                                       "weight": np.ones(batch, np.float32)}))
    return info, runs, batches


def synthetic_rows(sizes, n: int, rng: np.random.Generator, num_fields: int = 13):
    """`n` synthetic rows over vocabularies `sizes`: (cat int32 [n, len(sizes)] of Zipf(1.2)
    ids clipped to each vocabulary, num float32 [n, num_fields] normal, label float32 [n],
    a quarter ones)."""
    cat = np.stack([np.minimum(rng.zipf(1.2, n) - 1, v - 1) for v in sizes], 1)
    return (cat.astype(np.int32), rng.normal(size=(n, num_fields)).astype(np.float32),
            (rng.uniform(size=n) < 0.25).astype(np.float32))


def _timing_worker(total: int, batch: int, optimizers, steps: int, rounds: int) -> dict:
    """Every optimizer in this one process, interleaved: `rounds` rounds, each timing `steps`
    steps of each optimizer in turn (median per round), so that a load that comes and goes
    (a shared machine) falls on all of them alike."""
    import jax

    from afm_jax import rowwise

    info, runs, batches = _setup(total, batch, optimizers)

    def one(run, b):
        run[1], run[2], loss = run[0](run[1], run[2], b)
        return loss

    for run in runs.values():   # compile and warm up
        for b in batches[:2]:
            one(run, b)
        jax.block_until_ready(run[1:])
    per_round: dict[str, list[float]] = {o: [] for o in optimizers}
    for _ in range(rounds):
        for o, run in runs.items():
            times = []
            for i in range(steps):
                t0 = time.perf_counter()
                one(run, batches[i % len(batches)]).block_until_ready()
                times.append(time.perf_counter() - t0)
            per_round[o].append(1e3 * float(np.median(times)))
    return {"vocab_rows": int(sum(info.vocab_sizes)), "batch": batch,
            "batch_slots": rowwise.batch_slots(info.vocab_sizes, batch),
            "auto": rowwise.resolve("auto", info, batch), "round_ms": per_round,
            "step_ms": {o: float(np.median(v)) for o, v in per_round.items()}}


def timing(total: int, batch: int, optimizers=("rowwise", "dense"), steps: int = 5,
           rounds: int = 3) -> dict:
    """`_timing_worker` in a fresh subprocess; an error becomes a row with it."""
    return _subprocess(f"_timing_worker({total}, {batch}, {tuple(optimizers)!r}, {steps}, "
                       f"{rounds})", {"vocab_rows": total, "batch": batch})


def timing_markdown(rows: list[dict], command: str, machine: str, note: str = "") -> str:
    """The interleaved step times: per (rows, batch) row-wise against dense, the ratio of each
    round (median and spread), the faster one, and what `auto` picks."""
    lines = ["## Step time, row-wise against dense Adam (interleaved in one process)\n",
             f"`{command}` on {machine}, load average {os.getloadavg()[0]:.1f} at the end. "
             "Per (rows, batch) one process holds both optimizers and times them in turn, "
             "round after round (median step of each round); *ratio* = row-wise step / dense "
             "step within each round: median [min-max] over the rounds. *slots* = the batch's "
             "dedupe slots, sum over the fields of min(batch, field rows) (`rowwise."
             "batch_slots`), which the `auto` cost model weighs against the table rows."
             + (f" {note}" if note else "") + "\n",
             "| vocabulary rows | batch | slots | rows / slots | row-wise ms | dense ms | "
             "row-wise rows/s | dense rows/s | row-wise / dense time | faster | auto picks |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['vocab_rows']:,} | {r['batch']} | failed: {r['error'][-120:]} "
                         "| | | | | | | | |")
            continue
        ms, rd = r["step_ms"], r["round_ms"]
        ratio = np.asarray(rd["rowwise"]) / np.asarray(rd["dense"])
        faster = "row-wise" if np.median(ratio) < 1 else "dense"
        lines.append(
            f"| {r['vocab_rows']:,} | {r['batch']} | {r['batch_slots']:,} | "
            f"{r['vocab_rows'] / r['batch_slots']:.1f} | {ms['rowwise']:.1f} | {ms['dense']:.1f} | "
            f"{r['batch'] / ms['rowwise'] * 1e3:,.0f} | {r['batch'] / ms['dense'] * 1e3:,.0f} | "
            f"{np.median(ratio):.2f}x [{ratio.min():.2f}-{ratio.max():.2f}] | {faster} | "
            f"{r['auto']} |")
    return "\n".join(lines) + "\n"


def _across_worker(totals, batch: int, optimizer: str, steps: int, rounds: int) -> dict:
    """One optimizer at several table sizes in this one process, interleaved as
    `_timing_worker` does: how its step grows with the tables, free of the load's drift."""
    import jax

    runs = {t: _setup(t, batch, (optimizer,)) for t in totals}

    def one(t, b):
        run = runs[t][1][optimizer]
        run[1], run[2], loss = run[0](run[1], run[2], b)
        return loss

    for t in totals:
        for b in runs[t][2][:2]:
            one(t, b)
        jax.block_until_ready(runs[t][1][optimizer][1:])
    per_round: dict[str, list[float]] = {str(t): [] for t in totals}
    for _ in range(rounds):
        for t in totals:
            times = []
            for i in range(steps):
                t0 = time.perf_counter()
                one(t, runs[t][2][i % 4]).block_until_ready()
                times.append(time.perf_counter() - t0)
            per_round[str(t)].append(1e3 * float(np.median(times)))
    return {"totals": list(totals), "batch": batch, "optimizer": optimizer,
            "round_ms": per_round}


def across(totals, batch: int, optimizer: str = "rowwise", steps: int = 5,
           rounds: int = 3) -> dict:
    """`_across_worker` in a fresh subprocess; an error becomes a row with it."""
    return _subprocess(f"_across_worker({list(totals)!r}, {batch}, {optimizer!r}, {steps}, "
                       f"{rounds})", {"totals": list(totals), "batch": batch})


def across_markdown(rows: list[dict]) -> str:
    """Per batch, each table size's step against the smallest's, within the same rounds."""
    lines = ["## Row-wise step against table rows (interleaved in one process)\n",
             "Per batch one process holds the row-wise step at each table size and times them "
             "in turn, round after round; *vs smallest* = step / the smallest table's step "
             "within each round: median [min-max].\n",
             "| batch | vocabulary rows | row-wise ms | rows/s | vs smallest |",
             "|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['totals']} | failed: {r['error'][-120:]} | | |")
            continue
        ref = np.asarray(r["round_ms"][str(r["totals"][0])])
        for t in r["totals"]:
            v = np.asarray(r["round_ms"][str(t)])
            q = v / ref
            lines.append(f"| {r['batch']} | {t:,} | {np.median(v):.1f} | "
                         f"{r['batch'] / np.median(v) * 1e3:,.0f} | "
                         f"{np.median(q):.2f}x [{q.min():.2f}-{q.max():.2f}] |")
    return "\n".join(lines) + "\n"


def _subprocess(call: str, on_error: dict, module: str = __name__) -> dict:
    """`call` (a function of `module`, default this one) in a fresh Python; its JSON result,
    or `on_error` with the error's tail."""
    code = (f"import json; from {module} import {call.split('(')[0]}; "
            f"print(json.dumps({call}))")
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {**on_error, "error": proc.stderr.strip()[-400:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker(total: int, optimizer: str, steps: int, batch: int) -> dict:
    """One measurement in this process: build, warm up, time `steps` steps."""
    import resource

    import jax
    import jax.numpy as jnp

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024

    jnp.zeros(1).block_until_ready()
    base_rss = rss_mb()   # the runtime's own memory, before any table exists
    info, runs, batches = _setup(total, batch, (optimizer,))
    step, params, state = runs.pop(optimizer)
    sizes = info.vocab_sizes
    table_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    for b in batches[:2]:   # compile and warm up
        params, state, loss = step(params, state, b)
    jnp.asarray(loss).block_until_ready()
    setup_peak = _peak_rss_mb()
    stepping = _reset_peak_rss()   # from here the peak is the training steps' own
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        params, state, loss = step(params, state, batches[i % len(batches)])
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"vocab_rows": int(sum(sizes)), "optimizer": optimizer, "batch": batch,
            "step_ms": 1e3 * float(np.median(times)), "rows_per_s": batch / float(np.median(times)),
            "params_mb": table_bytes / 2**20, "state_mb": state_bytes / 2**20,
            "base_rss_mb": base_rss, "setup_peak_rss_mb": setup_peak,
            "step_peak_rss_mb": _peak_rss_mb() if stepping else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _peak_rss_mb() -> float:
    """This process's peak RSS so far (VmHWM; since the last `_reset_peak_rss`)."""
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: "5" to /proc/self/clear_refs); False where the
    kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(total: int, optimizer: str, steps: int = 30, batch: int = 1024) -> dict:
    """`_worker` in a fresh subprocess (its own peak memory); an error becomes a row with it."""
    return _subprocess(f"_worker({total}, {optimizer!r}, {steps}, {batch})",
                       {"vocab_rows": total, "optimizer": optimizer})


def to_markdown(rows: list[dict], command: str, machine: str, title: str | None = None) -> str:
    """The per-process table: step time and peak memory of each (rows, optimizer). title: the
    heading (default "# Train step against vocabulary rows"); the batch is the rows' own."""
    base = {r["optimizer"]: r["step_ms"] for r in rows if "step_ms" in r
            and r["vocab_rows"] == min(x["vocab_rows"] for x in rows)}
    batch = next((r["batch"] for r in rows if "batch" in r), 1024)
    title = "# Train step against vocabulary rows" if title is None else title
    lines = [f"{title}\n\n`{command}` on {machine}, load average "
             f"{os.getloadavg()[0]:.1f}. DeepFM, 26 categorical fields (Criteo's proportions, Zipf "
             f"ids) + 13 numeric, embeddings 16, MLP 400-400-400, batch {batch}, packed tables; "
             "median of the timed steps, each configuration in its own process.\n",
             "Peak memory is the process's peak RSS less its RSS before the model existed (the "
             "runtime's own, about 0.3-0.7 GB), against the params and optimizer state: *setup* "
             "= the peak while initializing (per-field init, then packing: both layouts are "
             "alive at once), packing, placing the state and compiling; *steps* = the peak "
             "over the timed training steps alone (VmHWM reset after the warm-up steps).\n",
             "The smallest vocabulary's peak is almost all fixed cost (the runtime, the compiled "
             "step, the batches: ~0.3-0.45 GB for 10 MB of tables), which the ratio to params + "
             "state charges to the tables; *marginal* = (steps peak - the smallest vocabulary's "
             "steps peak) / (params + state - the smallest's), the memory the tables and their "
             "state cost per byte they hold.\n",
             "| vocabulary rows | tables | step ms | rows/s | vs smallest | params MB | "
             "optimizer state MB | setup peak MB | setup / (params + state) | steps peak MB | "
             "steps / (params + state) | marginal |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    small = {r["optimizer"]: r for r in rows if "step_ms" in r
             and r["vocab_rows"] == min(x["vocab_rows"] for x in rows)}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['vocab_rows']:,} | {r['optimizer']} | failed: {r['error'][-120:]} "
                         "| | | | | | | | | |")
            continue
        ratio = r["step_ms"] / base[r["optimizer"]] if r["optimizer"] in base else float("nan")
        need = r["params_mb"] + r["state_mb"]
        setup = r.get("setup_peak_rss_mb", r["peak_rss_mb"]) - r["base_rss_mb"]
        steps = (r["step_peak_rss_mb"] - r["base_rss_mb"]) if r.get("step_peak_rss_mb") else None
        marginal = ""
        s0 = small.get(r["optimizer"])
        if steps is not None and s0 is not r and s0 and s0.get("step_peak_rss_mb"):
            grown = r["params_mb"] + r["state_mb"] - s0["params_mb"] - s0["state_mb"]
            marginal = f"{(steps - s0['step_peak_rss_mb'] + s0['base_rss_mb']) / grown:.2f}"
        lines.append(f"| {r['vocab_rows']:,} | {r['optimizer']} | {r['step_ms']:.1f} | "
                     f"{r['rows_per_s']:,.0f} | {ratio:.2f}x | {r['params_mb']:.0f} | "
                     f"{r['state_mb']:.0f} | {setup:.0f} | {setup / need:.2f} | "
                     + (f"{steps:.0f} | {steps / need:.2f} |" if steps is not None else "n/a | |")
                     + f" {marginal} |")
    return "\n".join(lines) + "\n"
