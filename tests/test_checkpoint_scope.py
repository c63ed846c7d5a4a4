"""Process-wide state is scoped to the call (issue 25, item 5): the hooks that drop a failed orbax
restore's late reports are installed only around the restore, and `train` closes the
CheckpointManager it opens, however training ends."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest

import afm_jax.checkpoint as checkpoint
from afm_jax.errors import AfmError, CheckpointError

train_mod = importlib.import_module("afm_jax.train")  # the module; `afm_jax.train` is the function


def _report(message: str) -> types.SimpleNamespace:
    """An object shaped like sys.UnraisableHookArgs."""
    return types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError(message),
                                 exc_traceback=None, err_msg=None, object=None)


@pytest.fixture
def recording_hooks():
    """Recording hooks in place of the process's, put back after the test."""
    saved = sys.unraisablehook, sys.excepthook
    unraisable, excepts = [], []
    sys.unraisablehook = unraisable.append
    sys.excepthook = lambda kind, value, tb: excepts.append(value)
    hooks = sys.unraisablehook, sys.excepthook
    yield hooks, unraisable, excepts
    sys.unraisablehook, sys.excepthook = saved


def test_filter_only_inside_the_block(recording_hooks):
    (unraisable_hook, except_hook), unraisable, excepts = recording_hooks
    with checkpoint.discarding_closed_loop_reports():
        assert sys.unraisablehook is not unraisable_hook and sys.excepthook is not except_hook
        sys.unraisablehook(_report("Event loop is closed"))     # a straggler: dropped
        sys.unraisablehook(_report("something else"))           # passed on
        sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
        sys.excepthook(ValueError, ValueError("other"), None)
    assert sys.unraisablehook is unraisable_hook and sys.excepthook is except_hook
    assert [str(r.exc_value) for r in unraisable] == ["something else"]
    assert [str(e) for e in excepts] == ["other"]


def test_hooks_restored_when_the_block_raises(recording_hooks):
    (unraisable_hook, except_hook), unraisable, _ = recording_hooks
    with pytest.raises(KeyError):
        with checkpoint.discarding_closed_loop_reports(quiet_s=0.05):
            raise KeyError("x")
    assert sys.unraisablehook is unraisable_hook and sys.excepthook is except_hook
    sys.unraisablehook(_report("Event loop is closed"))  # outside: reaches the previous hook
    assert len(unraisable) == 1


def test_load_params_leaves_the_hooks_as_they_were(tmp_path, recording_hooks):
    """After a restore that succeeds and after one that fails, the hooks are the original ones."""
    (unraisable_hook, except_hook), unraisable, excepts = recording_hooks
    params = {"a": {"kernel": np.arange(60_000, dtype=np.float32).reshape(300, 200)},
              "b": np.ones((50_000,), np.float32)}
    checkpoint.save_params(tmp_path / "p", params)
    got = checkpoint.load_params(tmp_path / "p")
    np.testing.assert_array_equal(got["a"]["kernel"], params["a"]["kernel"])
    assert sys.unraisablehook is unraisable_hook and sys.excepthook is except_hook
    largest = max((f for f in (tmp_path / "p").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot restore params"):
        checkpoint.load_params(tmp_path / "p")
    assert sys.unraisablehook is unraisable_hook and sys.excepthook is except_hook
    assert [str(r.exc_value) for r in unraisable] == [] and excepts == []


def _tiny_run(tmp_path, monkeypatch):
    """A 1-epoch train call on 2,000 synthetic rows whose CheckpointManagers are recorded."""
    from afm_jax.data import synthetic_dataset
    from afm_jax.models import build_model
    from afm_jax.train import TrainConfig

    managers = []
    real = train_mod._state_manager

    def recorded(out_dir):
        manager = real(out_dir)
        managers.append(manager)
        closes = []
        close = manager.close
        manager.close = lambda: (closes.append(1), close())[1]
        manager.closes = closes
        return manager

    monkeypatch.setattr(train_mod, "_state_manager", recorded)
    ds = synthetic_dataset(2000, seed=0)
    model = build_model("lr", ds.info)
    return managers, (lambda: train_mod.train(model, ds, TrainConfig(epochs=1, batch_size=512),
                                              out_dir=str(tmp_path / "run"), progress=False))


def test_train_closes_its_checkpoint_manager(tmp_path, monkeypatch):
    managers, run = _tiny_run(tmp_path, monkeypatch)
    run()
    assert len(managers) == 1 and managers[0].closes == [1]
    # and when training fails midway
    managers.clear()

    def boom(*args, **kwargs):
        raise AfmError("injected failure")

    monkeypatch.setattr(train_mod, "_run_epochs", boom)
    with pytest.raises(AfmError, match="injected failure"):
        run()
    assert len(managers) == 1 and managers[0].closes == [1]
