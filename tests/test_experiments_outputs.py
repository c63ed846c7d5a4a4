"""Experiment scripts stay inside what they are given (issue 26): no machine paths as defaults,
and experiments/results/ is written only where it is the script's --out."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SCRIPTS = sorted(EXPERIMENTS.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_no_machine_paths_and_results_only_as_a_default_out(script):
    text = script.read_text()
    # an absolute path of one machine (data folder, scratch under the temp folder, a home)
    machine = re.findall(r"""["'](/(?:tmp|work|home|root|data|mnt|Users)\b[^"']*)["']""", text)
    assert machine == [], f"{script.name}: machine paths {machine}"
    # RESULTS may appear as the default of an argument (the script's output when none is
    # given), or be read; never written to behind --out's back
    for line in text.splitlines():
        if "RESULTS" in line and not line.lstrip().startswith(("from common import", "#")):
            assert re.search(r"default=str\(RESULTS|or str\(RESULTS|RESULTS = ", line), (
                f"{script.name}: RESULTS used outside a default --out: {line.strip()}")


def test_baseline_writes_its_out_and_leaves_the_committed_results_alone(tmp_path, monkeypatch):
    """`baseline.py --out DIR/bl` writes DIR/bl.md and .json only (it used to overwrite
    experiments/results/baseline.md whatever --out said)."""
    from afm_jax.data import synthetic_dataset

    committed = EXPERIMENTS / "results" / "baseline.md"
    before = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    sys.modules.pop("baseline", None)
    import baseline

    monkeypatch.setattr(baseline, "load", lambda name, progress=True: synthetic_dataset(3000))
    monkeypatch.setattr(sys, "argv", ["experiments/baseline.py", "--datasets", "synthetic",
                                      "--models", "lr", "--epochs", "1",
                                      "--out", str(tmp_path / "bl")])
    baseline.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bl.json", "bl.md"]
    assert "| lr |" in (tmp_path / "bl.md").read_text()
    after = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    assert after == before
