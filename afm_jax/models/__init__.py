"""Model registry: `build_model(name, info, **config)` and the JSON form of a model."""

from __future__ import annotations

import dataclasses
from typing import Any

from afm_jax.errors import AfmError
from afm_jax.models.autoint import AutoInt, AutoIntConfig
from afm_jax.models.base import CTRModel, with_precision
from afm_jax.models.dcn import DCN, DCNConfig
from afm_jax.models.dcnv2 import DCNv2, DCNv2Config
from afm_jax.models.deepfm import DeepFM, DeepFMConfig
from afm_jax.models.din import DIN, DINConfig
from afm_jax.models.fibinet import FiBiNET, FiBiNETConfig
from afm_jax.models.fm import FM, FMConfig
from afm_jax.models.gdcn import GDCN, GDCNConfig
from afm_jax.models.lr import LR, LRConfig
from afm_jax.models.nfm import NFM, NFMConfig
from afm_jax.models.pnn import PNN, PNNConfig
from afm_jax.models.wide_deep import WideDeep, WideDeepConfig
from afm_jax.models.xdeepfm import XDeepFM, XDeepFMConfig

REGISTRY: dict[str, tuple[type[CTRModel], type]] = {
    "lr": (LR, LRConfig),
    "fm": (FM, FMConfig),
    "deepfm": (DeepFM, DeepFMConfig),
    "wide_deep": (WideDeep, WideDeepConfig),
    "dcn": (DCN, DCNConfig),
    "dcnv2": (DCNv2, DCNv2Config),
    "fibinet": (FiBiNET, FiBiNETConfig),
    "nfm": (NFM, NFMConfig),
    "autoint": (AutoInt, AutoIntConfig),
    "gdcn": (GDCN, GDCNConfig),
    "xdeepfm": (XDeepFM, XDeepFMConfig),
    "pnn": (PNN, PNNConfig),
    "din": (DIN, DINConfig),
}
# models that read a behaviour sequence (a bag sharing another field's table): data without one
# cannot train them, so tests over "every model" on single-valued fields leave them out
NEEDS_SEQUENCE = frozenset({"din"})


def model_name(model: CTRModel) -> str:
    for name, (cls, _) in REGISTRY.items():
        if type(model) is cls:
            return name
    raise AfmError(f"{type(model).__name__} is not in the model registry")


def build_model(name: str, info: Any, **config: Any) -> CTRModel:
    """A registered model for the fields in `info`; `config` overrides the config defaults."""
    if name not in REGISTRY:
        raise AfmError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    cls, config_cls = REGISTRY[name]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise AfmError(f"model {name!r} has no config field(s) {unknown}; known: {sorted(known)}")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return cls(info=info, config=config_cls(**config))


def model_to_json(model: CTRModel) -> dict[str, Any]:
    return {"name": model_name(model), "config": dataclasses.asdict(model.config)}


def model_from_json(d: dict[str, Any], info: Any) -> CTRModel:
    return build_model(d["name"], info, **d.get("config", {}))


__all__ = ["REGISTRY", "CTRModel", "build_model", "model_from_json", "model_to_json", "model_name",
           "with_precision"]
