"""Optimizer state without pickle: keyed by parameter name, stored as safetensors + JSON.

``optimizer.state_dict()`` numbers parameters by their position in the param groups; here
they are named by ``model.named_parameters()`` instead — the format of
``torch.distributed.checkpoint``'s full optimizer state dict — so a state written by one
process, DDP or FSDP loads under any of them. For the file, every tensor becomes the
safetensors entry ``state/<param name>/<key>`` (or ``param_groups/<i>/<key>`` for a tensor
hyper-parameter); the rest (param groups, non-tensor state) is JSON in the metadata, tuples
tagged so they come back as tuples.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["optimizer_state_by_name", "load_optimizer_state", "to_tensors", "from_tensors",
           "METADATA_KEY"]

METADATA_KEY = "attnkit.optimizer"


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer
                            ) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter indices replaced by ``model``'s names."""
    names = _param_names(model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"the optimizer holds {len(missing)} parameter(s) that are not "
                         f"parameters of the model (indices {missing[:10]})")
    sd = optimizer.state_dict()
    by_idx = [names[id(p)] for p in params]
    return {
        "state": {by_idx[i]: s for i, s in sd["state"].items()},
        "param_groups": [{**g, "params": [by_idx[i] for i in g["params"]]}
                         for g in sd["param_groups"]],
    }


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: Mapping[str, Any]) -> None:
    """Load a by-name state into ``optimizer``, whose param groups must hold the same names
    (raises ValueError listing the differences)."""
    names = _param_names(model)
    live = [[names.get(id(p), "?") for p in g["params"]] for g in optimizer.param_groups]
    saved = [list(g["params"]) for g in state["param_groups"]]
    if [sorted(g) for g in live] != [sorted(g) for g in saved]:
        diff = sorted(set(sum(live, [])) ^ set(sum(saved, [])))
        raise ValueError(
            f"optimizer param groups do not match the saved state: {len(live)} live groups of "
            f"sizes {[len(g) for g in live]} vs {len(saved)} saved of sizes "
            f"{[len(g) for g in saved]}; parameters in only one of them: {diff[:20]}")
    index = {n: i for i, n in enumerate(sum(live, []))}
    optimizer.load_state_dict({
        "state": {index[n]: s for n, s in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                         for g in state["param_groups"]],
    })


def _encode(v: Any) -> Any:
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    return v


def _decode(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"__tuple__"}:
        return tuple(_decode(x) for x in v["__tuple__"])
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


def to_tensors(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A by-name state as ``(tensors, safetensors metadata)``; tensors are CPU, contiguous."""
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pname, st in state["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"state/{pname}/{k}"] = v.detach().to("cpu").contiguous()
            else:
                plain.setdefault(pname, {})[k] = _encode(v)
    groups = []
    for i, g in enumerate(state["param_groups"]):
        out = {}
        for k, v in g.items():
            if isinstance(v, Tensor):  # e.g. a tensor learning rate
                tensors[f"param_groups/{i}/{k}"] = v.detach().to("cpu").contiguous()
                out[k] = {"__tensor__": f"param_groups/{i}/{k}"}
            else:
                out[k] = _encode(v)
        groups.append(out)
    try:
        meta = json.dumps({"state": plain, "param_groups": groups})
    except (TypeError, ValueError) as e:
        raise TypeError(f"optimizer state is not JSON-serialisable: {e}") from e
    return tensors, {"format": "pt", METADATA_KEY: meta}


def from_tensors(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`to_tensors` (raises ValueError without the attnkit metadata)."""
    if METADATA_KEY not in metadata:
        raise ValueError(f"no '{METADATA_KEY}' metadata: not an attnkit optimizer file")
    spec = json.loads(metadata[METADATA_KEY])
    state: dict[str, dict[str, Any]] = {n: {k: _decode(v) for k, v in s.items()}
                                        for n, s in spec["state"].items()}
    for key, t in tensors.items():
        if key.startswith("state/"):
            pname, _, k = key[len("state/"):].rpartition("/")
            state.setdefault(pname, {})[k] = t
    groups = [{k: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v
               else _decode(v) for k, v in g.items()} for g in spec["param_groups"]]
    return {"state": state, "param_groups": groups}
