"""Model directories: everything needed to reload and score a model, no pickle anywhere.

DIR/model.json     model name + config, the fields (FeatureInfo), run config, data spec
DIR/encoder.json   the fitted encoder (when the model was trained from a file)
DIR/params/        the params pytree (orbax); original or compressed, the structure says which
DIR/state/         training state for resuming (orbax CheckpointManager), written by `train`
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from afm_jax import forms
from afm_jax.errors import CheckpointError, DataError
from afm_jax.models import CTRModel, model_from_json, model_to_json


def _info_to_json(info: Any) -> dict:
    """Any object with the FeatureInfo fields, as FeatureInfo's JSON."""
    from afm_jax.data import FeatureInfo
    return FeatureInfo(cat_names=tuple(info.cat_names),
                       vocab_sizes=tuple(int(v) for v in info.vocab_sizes),
                       num_names=tuple(info.num_names),
                       bags=tuple(getattr(info, "bags", ()))).to_json()


def save_params(path: str | os.PathLike, params: Any) -> None:
    """Write a params pytree atomically (orbax writes to a temporary dir, then renames)."""
    path = Path(path).absolute()
    with ocp.StandardCheckpointer() as ckptr:  # close() waits for the write and frees its threads
        ckptr.save(path, jax.tree.map(np.asarray, params), force=True)
        ckptr.wait_until_finished()


def load_params(path: str | os.PathLike) -> Any:
    """The params pytree as saved (nested dicts of arrays), whatever its structure."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no params checkpoint here")
    with discarding_closed_loop_reports(), ocp.StandardCheckpointer() as ckptr:
        try:
            return ckptr.restore(path)
        except Exception as e:  # orbax raises many types for a damaged directory
            raise CheckpointError(f"{path}: cannot restore params ({type(e).__name__}: {e})") from e


def _is_closed_loop_report(exc: BaseException | None) -> bool:
    # whichever object reports it (a callback, a future, none), the message is the same
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


@contextlib.contextmanager
def discarding_closed_loop_reports(quiet_s: float = 0.2, max_wait_s: float = 2.0) -> Iterator[None]:
    """Around an orbax restore: keep a failed one from printing tracebacks after its error.

    orbax runs a restore's reads in an event loop of its own and closes that loop as soon as one
    read fails; the reads still in flight (tensorstore) then complete into the closed loop and
    each reports `RuntimeError: Event loop is closed` through `sys.unraisablehook` (some through
    `sys.excepthook`), from tensorstore's threads, after the error has been raised. Their results
    are discarded either way, so for the duration of the block those reports are dropped and every
    other one goes to the hook that was there before. When the block raises, it first waits for
    the stragglers: until none has come for `quiet_s` seconds (at most `max_wait_s`). On the way
    out, in every case, the previous hooks are put back (unless someone replaced ours meanwhile).
    """
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook
    last_report = [time.monotonic()]

    def unraisable(report: sys.UnraisableHookArgs) -> None:
        if _is_closed_loop_report(report.exc_value):
            last_report[0] = time.monotonic()
        else:
            previous_unraisable(report)

    def excepthook(kind, value, tb) -> None:
        if _is_closed_loop_report(value):
            last_report[0] = time.monotonic()
        else:
            previous_except(kind, value, tb)

    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    try:
        yield
    except BaseException:
        deadline = time.monotonic() + max_wait_s
        last_report[0] = time.monotonic()
        while time.monotonic() < min(deadline, last_report[0] + quiet_s):
            time.sleep(quiet_s / 10)
        raise
    finally:
        if sys.unraisablehook is unraisable:
            sys.unraisablehook = previous_unraisable
        if sys.excepthook is excepthook:
            sys.excepthook = previous_except


def save_model_dir(out_dir: str | os.PathLike, model: CTRModel, params: Any, *, encoder=None,
                   extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write model.json, encoder.json (if given) and params/ as the directory `out_dir`,
    atomically (`outputs.atomic_dir`: into a temporary sibling, renamed when complete). An
    existing `out_dir` is an OutputError unless `overwrite`.

    In a multi-process run every process calls this (orbax saves params together); only
    process 0 writes the JSON files. Params must be host arrays (`distributed.host_params`).
    """
    from afm_jax.outputs import atomic_dir

    with atomic_dir(out_dir, overwrite) as tmp:
        write_model_dir(tmp, model, params, encoder=encoder, extra=extra)
    return Path(out_dir)


def write_model_dir(out_dir: str | os.PathLike, model: CTRModel, params: Any, *, encoder=None,
                    extra: dict | None = None) -> Path:
    """Write model.json, encoder.json (if given) and params/ into the directory `out_dir` as it
    is: the step inside `save_model_dir`'s atomic write (and train's), not atomic alone."""
    from afm_jax.distributed import is_primary, sync

    out = Path(out_dir)
    if is_primary():
        out.mkdir(parents=True, exist_ok=True)
        meta = {"model": model_to_json(model), "info": _info_to_json(model.info), **(extra or {})}
        tmp = out / "model.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, out / "model.json")
        if encoder is not None:
            encoder.save(out / "encoder.json")
        if (out / "params").exists():
            shutil.rmtree(out / "params")
    sync("afm_jax.save_model_dir")
    save_params(out / "params", params)
    return out


def load_model_dir(model_dir: str | os.PathLike) -> tuple[CTRModel, Any, dict]:
    """(model, params, meta) from a directory written by `save_model_dir` or `train`."""
    from afm_jax.data import FeatureInfo

    d = Path(model_dir)
    meta_path = d / "model.json"
    if not meta_path.is_file():
        raise CheckpointError(_not_a_model_dir(d))
    try:
        meta = json.loads(meta_path.read_text())
        model = model_from_json(meta["model"], FeatureInfo.from_json(meta["info"]))
    except (json.JSONDecodeError, KeyError, TypeError, DataError) as e:
        raise CheckpointError(f"{meta_path}: malformed ({type(e).__name__}: {e})") from e
    params = load_params(d / "params")
    validate_params(model, params, where=str(d / "params"))
    return model, params, meta


def _not_a_model_dir(d: Path) -> str:
    """Why `d` is not a model directory, and what to do, by what it is instead."""
    if not d.exists():
        return f"{d}: no such model directory; train one with `afm-jax train ... --out DIR`"
    if not d.is_dir():
        return f"{d}: a file, not a model directory; give the directory `afm-jax train` wrote"
    if (d / "signature.json").is_file() or (d / "scorer.jaxexport").is_file():
        return (f"{d}: an exported scorer, not a model directory; load it with "
                "afm_jax.inference.load_exported, or give the model directory it was exported from")
    if d.name.endswith(".partial") or (d / "state").is_dir():
        return (f"{d}: an unfinished training run, not a model directory; run the same "
                "`afm-jax train` command again to resume and finish it")
    return (f"{d}: not a model directory (no model.json); train one with "
            "`afm-jax train ... --out DIR`")


def load_encoder(model_dir: str | os.PathLike):
    from afm_jax.data import Encoder
    path = Path(model_dir) / "encoder.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no encoder.json (was the model trained on a file?)")
    return Encoder.load(path)


def validate_params(model: CTRModel, params: Any, where: str = "params") -> None:
    """Raise CheckpointError naming the first path where `params` cannot be this model's.

    Accepted per site: the full form, an AFM form (factor pair, compressed or folded table),
    their int8 storage (afm_jax/quantize.py) or TT-Rec cores (`forms` tells them apart); every other leaf must have the shape a fresh init
    gives. Packed params are checked per field (`packing.unpack`).
    """
    import jax.numpy as jnp

    from afm_jax.packing import unpack
    from afm_jax.pooling import example_input

    params = unpack(model, params)
    info = model.info
    expected = jax.eval_shape(model.init, jax.random.key(0), example_input(info),
                              jnp.zeros((len(info.num_names),), jnp.float32))["params"]
    fold_target = getattr(model, "FOLD_INTO", None)

    def fail(path: str, msg: str) -> None:
        raise CheckpointError(f"{where}: at {path!r}: {msg}. Is this checkpoint of another "
                              f"model or config than {type(model).__name__} {model.config}?")

    def shape(x: Any) -> tuple[int, ...]:
        return tuple(np.shape(x))

    def dtype(x: Any) -> np.dtype:
        return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype

    def check_int8_linear(got: Any, path: str) -> None:
        if forms.is_int8(got) and (dtype(got["kernel_q"]) != np.int8 or
                                   shape(got["kernel_scale"]) != forms.kernel_shape(got)[1:]):
            fail(path, "int8 Linear needs int8 kernel_q and kernel_scale [out]")

    def check(exp: Any, got: Any, path: str) -> None:
        if not isinstance(exp, dict):
            if isinstance(got, dict) or shape(got) != tuple(exp.shape):
                fail(path, f"expected shape {tuple(exp.shape)}, found "
                     f"{'a subtree' if isinstance(got, dict) else shape(got)}")
            return
        if not isinstance(got, dict):
            fail(path, "expected a subtree, found an array")
        if forms.linear_form(exp) == "full":  # a Linear: full or factor pair
            n_in, n_out = exp["kernel"].shape
            if path == fold_target and forms.linear_form(got) == "full":
                n_in = forms.kernel_shape(got)[0]  # folded rows: the input dim may shrink
            form = forms.linear_form(got)
            if form == "factor":
                first = forms.first_factor_key(got)
                if not all(forms.linear_form(got[f]) == "full" for f in (first, "v")):
                    fail(path, "factor pair whose factors are not {kernel, bias} (or int8)")
                k = forms.kernel_shape(got["v"])[0]
                ok = (forms.kernel_shape(got["v"]) == (k, n_out)
                      and shape(got["v"]["bias"]) == (n_out,)
                      and forms.kernel_shape(got[first])[1:] == (k,)
                      and shape(got[first]["bias"]) == (k,)
                      and (path == fold_target or forms.kernel_shape(got[first])[0] == n_in))
                if not ok:
                    fail(path, f"factor pair does not fit a {n_in}x{n_out} layer")
                for f in (first, "v"):
                    check_int8_linear(got[f], f"{path}/{f}")
                return
            if form != "full":
                fail(path, f"expected {{kernel, bias}} or a factor pair, found keys {sorted(got)}")
            if forms.kernel_shape(got) != (n_in, n_out) or shape(got["bias"]) != (n_out,):
                fail(path, f"expected a {n_in}x{n_out} layer, found kernel "
                     f"{forms.kernel_shape(got)}")
            check_int8_linear(got, path)
            return
        if forms.table_form(exp) == "full":  # a field's table: full, compressed, folded or TT
            v, d = exp["embedding"].shape
            form = forms.table_form(got, d)
            if form == "tt":
                if forms.table_width(got) != d or np.prod([shape(got[c])[0]
                                                           for c in forms.TT_KEYS]) < v:
                    fail(path, f"TT cores do not cover a {v}x{d} table")
                return
            if form not in ("full", "compressed", "folded"):
                fail(path, f"expected a table, found keys {sorted(got)}")
            if forms.embedding_shape(got)[0] != v:
                fail(path, f"expected a table with {v} rows")
            k = forms.embedding_shape(got)[1]
            if forms.is_int8(got) and (dtype(got["embedding_q"]) != np.int8
                                       or shape(got["embedding_scale"]) != (v,)):
                fail(path, f"int8 table needs int8 embedding_q and embedding_scale [{v}]")
            if form == "compressed":
                if shape(got["proj"]["kernel"]) != (k, d) or shape(got["proj"]["bias"]) != (d,):
                    fail(path, f"projection does not map rank {k} to dim {d}")
            elif form == "folded" and fold_target is None:
                fail(path, f"table of dim {k} without a projection; this model needs dim {d}")
            return
        missing, extra = sorted(set(exp) - set(got)), sorted(set(got) - set(exp))
        if missing or extra:
            fail(path or "/", f"missing {missing}, unexpected {extra}")
        for key in exp:
            check(exp[key], got[key], f"{path}/{key}" if path else key)

    check(expected, params, "")
