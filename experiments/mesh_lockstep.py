"""Why a CPU mesh runs its steps in lockstep (issue 21, `afm_jax.distributed.lockstep`).

A plain loop of jitted data-parallel steps (a gradient all-reduce) on 4 forced host devices,
with no thread of ours, started as --processes concurrent processes so that they load the
machine as a test suite does. "async": the loop dispatches the next step without waiting (JAX's
default); "lockstep": it waits for each step's output first, as train() and finetune() do on a
multi-device CPU mesh. Counts the processes that finished and those XLA aborted ("Expected 4
threads to join the rendezvous"). Writes experiments/results/mesh_lockstep.md.

    python experiments/mesh_lockstep.py [--processes 4] [--rounds 2] [--steps 20000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

from common import RESULTS, command_line, machine

LOOP = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mode, steps = sys.argv[1], int(sys.argv[2])
    mesh = Mesh(np.array(jax.devices()).reshape(4), ("data",))
    w = jax.device_put(jnp.full((64, 64), 0.01), NamedSharding(mesh, P()))
    x = jax.device_put(np.random.default_rng(0).random((256, 64), np.float32),
                       NamedSharding(mesh, P("data")))

    @jax.jit
    def step(w, x):
        g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)  # all-reduce over "data"
        return w - 0.01 * g, jnp.sum(g)

    for _ in range(steps):
        w, loss = step(w, x)
        if mode == "lockstep":
            loss.block_until_ready()
    print("finished")
""")


def run_round(mode: str, processes: int, steps: int, timeout: float) -> tuple[int, int]:
    """(finished, aborted) of `processes` concurrent loops."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", LOOP, mode, str(steps)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(processes)]
    finished = 0
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
            finished += p.returncode == 0 and "finished" in out
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
    return finished, processes - finished


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", default=str(RESULTS / "mesh_lockstep.md"))
    args = ap.parse_args()
    rows = []
    for mode in ("async", "lockstep"):
        done = aborted = 0
        for r in range(args.rounds):
            f, a = run_round(mode, args.processes, args.steps, args.timeout)
            done, aborted = done + f, aborted + a
            print(f"{mode} round {r + 1}: {f} finished, {a} aborted", flush=True)
        rows.append(f"| {mode} | {done + aborted} | {done} | {aborted} |")
    md = "\n".join([
        "# A CPU mesh in lockstep", "", f"Command: `{command_line()}`  ", f"Machine: {machine()}", "",
        f"{args.rounds} rounds of {args.processes} concurrent processes, each a loop of "
        f"{args.steps:,} jitted data-parallel steps (gradient all-reduce) on 4 forced host devices, "
        "no thread of ours. *async*: JAX's default dispatch; *lockstep*: wait for each step, as "
        "`train` and `finetune` do on a multi-device CPU mesh (`distributed.lockstep`). An aborted "
        "process is XLA's rendezvous timeout (\"Expected 4 threads to join the rendezvous\").", "",
        "| dispatch | processes | finished | aborted |", "|---|---:|---:|---:|", *rows, ""])
    with open(args.out, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
