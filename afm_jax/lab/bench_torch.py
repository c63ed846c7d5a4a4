"""The PyTorch peer of the scoring benchmark: DeepFM and DCNv2 in plain torch, same params.

Built from an afm_jax params pytree (original or AFM-compressed), so both frameworks compute the
same function on the same numbers (`scores` gives the eager model's, for comparing). Optional: imported
only by `afm_jax.lab.bench` when torch is installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def version() -> str:
    return f"{torch.__version__} on {DEVICE}"


def _t(x: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float32)).to(DEVICE)


class _Linear(torch.nn.Module):
    """x @ W + b, or the AFM factor pair (x @ Wu + bu) @ Wv + bv."""

    def __init__(self, p: dict):
        super().__init__()
        if "kernel" in p:
            self.parts = [(_t(p["kernel"]), _t(p["bias"]))]
        else:
            self.parts = [(_t(p["u"]["kernel"]), _t(p["u"]["bias"])),
                          (_t(p["v"]["kernel"]), _t(p["v"]["bias"]))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w, b in self.parts:
            x = torch.addmm(b, x, w)
        return x


class _Fields(torch.nn.Module):
    """One table per field (+ projection where compressed): cat [B, F] -> [B, F, d]."""

    def __init__(self, embed: dict, names: tuple[str, ...]):
        super().__init__()
        self.tables = [_t(embed[n]["embedding"]) for n in names]
        self.projs = [(_t(embed[n]["proj"]["kernel"]), _t(embed[n]["proj"]["bias"]))
                      if "proj" in embed[n] else None for n in names]

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        out = []
        for i, (t, pr) in enumerate(zip(self.tables, self.projs)):
            e = t[cat[:, i]]
            out.append(e if pr is None else torch.addmm(pr[1], e, pr[0]))
        return torch.stack(out, 1)


class TorchDeepFM(torch.nn.Module):
    def __init__(self, info, params: dict):
        super().__init__()
        self.fields = _Fields(params["embed"], info.cat_names)
        self.w = _t(params["linear"]["weights"])
        self.b = _t(params["linear"]["bias"])
        self.offsets = torch.tensor(np.cumsum((0,) + tuple(info.vocab_sizes[:-1])),
                                    device=DEVICE)
        self.mlp = [_Linear(params["mlp"][f"dense_{i}"]) for i in range(len(params["mlp"]))]
        self.out = _Linear(params["out"])

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        e = self.fields(cat)
        first = self.w[cat + self.offsets].sum(1) + self.b
        s = e.sum(1)
        fm = 0.5 * ((s * s).sum(1) - (e * e).sum((1, 2)))
        h = e.flatten(1)
        for layer in self.mlp:
            h = F.relu(layer(h))
        return torch.sigmoid(first + fm + self.out(h)[:, 0])


class TorchDCNv2(torch.nn.Module):
    def __init__(self, info, params: dict):
        super().__init__()
        self.fields = _Fields(params["embed"], info.cat_names)
        self.cross = [_Linear(params["cross"][f"cross_{i}"]) for i in range(len(params["cross"]))]
        self.mlp = [_Linear(params["mlp"][f"dense_{i}"]) for i in range(len(params["mlp"]))]
        self.out = _Linear(params["out"])

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        x0 = self.fields(cat).flatten(1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        h = x0
        for layer in self.mlp:
            h = F.relu(layer(h))
        return torch.sigmoid(self.out(torch.cat([x, h], 1))[:, 0])


PEERS = {"deepfm": TorchDeepFM, "dcnv2": TorchDCNv2}


def build(name: str, info, params, compile: bool = True) -> dict[str, Any]:
    """{"eager": module, "compiled": torch.compile(module) or None} for the same params."""
    import jax
    host = jax.tree.map(np.asarray, params)
    eager = PEERS[name](info, host).eval()
    compiled = None
    if compile:
        try:
            compiled = torch.compile(eager)
        except Exception:  # torch.compile is not available everywhere
            compiled = None
    return {"eager": eager, "compiled": compiled, "params": host, "name": name}


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def callables(models: dict, batch: dict) -> dict[str, Any]:
    """{"eager": fn, "compiled": fn}: each `fn()` scores `batch` once and waits for the result,
    ready to time (the first call, which compiles, is made here; a model whose first call fails
    is left out)."""
    cat = torch.from_numpy(np.asarray(batch["cat"]).astype(np.int64)).to(DEVICE)
    out: dict[str, Any] = {}
    for kind in ("eager", "compiled"):
        m = models[kind]
        if m is None:
            continue
        try:
            with torch.inference_mode():
                m(cat)
        except Exception:  # a failed compile leaves the compiled row out
            continue

        def call(m=m):
            with torch.inference_mode():
                m(cat)
            _sync()

        out[kind] = call
    return out


def measure(models: dict, batch: dict, repeats: int, time_fn) -> dict[str, float]:
    """Rows/s of the eager and compiled torch models on `batch` (each timed on its own)."""
    n = int(np.shape(batch["cat"])[0])
    out: dict[str, float] = {}
    for kind, call in callables(models, batch).items():
        t = time_fn(call, repeats)
        out[f"torch_{kind}_rows_s"] = n / t.median_s
        out[f"torch_{kind}_spread"] = t.spread
    if DEVICE == "cuda":
        cat = torch.from_numpy(np.asarray(batch["cat"]).astype(np.int64)).to(DEVICE)
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            models["eager"](cat)
        out["torch_peak_bytes"] = float(torch.cuda.max_memory_allocated())
    return out


def scores(models: dict, batch: dict) -> np.ndarray:
    cat = torch.from_numpy(np.asarray(batch["cat"]).astype(np.int64)).to(DEVICE)
    with torch.inference_mode():
        return models["eager"](cat).cpu().numpy()
