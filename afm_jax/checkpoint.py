"""Model directories: everything needed to reload and score a model, no pickle anywhere.

DIR/model.json     model name + config, the fields (FeatureInfo), run config, data spec
DIR/encoder.json   the fitted encoder (when the model was trained from a file)
DIR/params/        the params pytree (orbax); original or compressed, the structure says which
DIR/state/         training state for resuming (orbax CheckpointManager), written by `train`
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from afm_jax.errors import CheckpointError
from afm_jax.models import CTRModel, model_from_json, model_to_json


def _info_to_json(info: Any) -> dict:
    return {"cat_names": list(info.cat_names), "vocab_sizes": [int(v) for v in info.vocab_sizes],
            "num_names": list(info.num_names)}


def _info_from_json(d: dict):
    from afm_jax.data import FeatureInfo
    return FeatureInfo(cat_names=tuple(d["cat_names"]), vocab_sizes=tuple(d["vocab_sizes"]),
                       num_names=tuple(d["num_names"]))


def save_params(path: str | os.PathLike, params: Any) -> None:
    """Write a params pytree atomically (orbax writes to a temporary dir, then renames)."""
    path = Path(path).absolute()
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, jax.tree.map(np.asarray, params), force=True)
    ckptr.wait_until_finished()


def load_params(path: str | os.PathLike) -> Any:
    """The params pytree as saved (nested dicts of arrays), whatever its structure."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no params checkpoint here")
    try:
        return ocp.StandardCheckpointer().restore(path)
    except Exception as e:  # orbax raises many types for a damaged directory
        raise CheckpointError(f"{path}: cannot restore params ({type(e).__name__}: {e})") from e


def save_model_dir(out_dir: str | os.PathLike, model: CTRModel, params: Any, *, encoder=None,
                   extra: dict | None = None) -> Path:
    """Write model.json, encoder.json (if given) and params/ into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": model_to_json(model), "info": _info_to_json(model.info), **(extra or {})}
    tmp = out / "model.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "model.json")
    if encoder is not None:
        encoder.save(out / "encoder.json")
    if (out / "params").exists():
        shutil.rmtree(out / "params")
    save_params(out / "params", params)
    return out


def load_model_dir(model_dir: str | os.PathLike) -> tuple[CTRModel, Any, dict]:
    """(model, params, meta) from a directory written by `save_model_dir` or `train`."""
    d = Path(model_dir)
    meta_path = d / "model.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{d}: not a model directory (no model.json); train one with "
                              "`afm-jax train ... --out DIR`")
    try:
        meta = json.loads(meta_path.read_text())
        model = model_from_json(meta["model"], _info_from_json(meta["info"]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: malformed ({type(e).__name__}: {e})") from e
    return model, load_params(d / "params"), meta


def load_encoder(model_dir: str | os.PathLike):
    from afm_jax.data import Encoder
    path = Path(model_dir) / "encoder.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no encoder.json (was the model trained on a file?)")
    return Encoder.load(path)
