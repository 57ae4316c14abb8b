"""GPT-2 checkpoints (Hugging Face ``GPT2LMHeadModel`` layout) <-> :class:`CausalLM`.

Name map for layer ``i`` (HF ``transformer.h.{i}.`` -> attnkit ``stack.layers.{i}.``)::

    ln_1.{weight,bias}          norm1.{weight,bias}
    attn.c_attn.{weight,bias}   attn.qkv.{weight,bias}        fused [q | k | v], Conv1D: W.T
    attn.c_proj.{weight,bias}   attn.out_proj.{weight,bias}   Conv1D: W.T
    ln_2.{weight,bias}          norm2.{weight,bias}
    mlp.c_fc.{weight,bias}      ffn.w1.{weight,bias}          Conv1D: W.T
    mlp.c_proj.{weight,bias}    ffn.w2.{weight,bias}          Conv1D: W.T

plus ``transformer.wte`` -> ``tok_emb``, ``transformer.wpe`` -> ``pos_emb.emb``,
``transformer.ln_f`` -> ``stack.final_norm`` and, when untied, ``lm_head``. HF's ``Conv1D``
stores weights as ``(in, out)`` (``y = x W + b``) where ``nn.Linear`` stores ``(out, in)``.
The fused ``c_attn`` output is ``[q | k | v]``, exactly the layout of attnkit's ``qkv``.

Accepted on load: keys with or without the ``transformer.`` prefix (the original OpenAI
export has none) and the ``attn.bias`` / ``attn.masked_bias`` causal-mask buffers old exports
carry (ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnkit.interop.common import (
    check_keys,
    checked_params,
    drop_keys,
    finish_load,
    incompatible,
    load_state,
    read_config,
    require,
    save_checkpoint,
)
from attnkit.models.causal_lm import CausalLM, CausalLMConfig

__all__ = ["load_gpt2", "save_gpt2", "config_from_hf", "config_to_hf", "weight_map"]

_ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                "relu": "relu"}
_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_IGNORED = [r"(^|\.)attn\.(masked_)?bias$", r"(^|\.)crossattention\.(masked_)?bias$"]


def config_from_hf(hf: dict[str, Any]) -> CausalLMConfig:
    """A :class:`CausalLMConfig` from a GPT-2 ``config.json`` dict."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"not a GPT-2 config: model_type={hf.get('model_type')!r}")
    require(hf, ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"], "GPT-2")
    act = hf.get("activation_function", "gelu_new")
    problems = []
    if act not in _ACT_FROM_HF:
        problems.append(f"activation_function={act!r} (supported: {sorted(_ACT_FROM_HF)})")
    if hf.get("add_cross_attention", False):
        problems.append("add_cross_attention=True (cross-attention GPT-2 is not a causal LM)")
    if not hf.get("scale_attn_weights", True):
        problems.append("scale_attn_weights=False")
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True")
    incompatible("unsupported GPT-2 config", problems)
    # reorder_and_upcast_attn only changes the precision of the scores: fp32 math is the same.
    d = hf["n_embd"]
    return CausalLMConfig(
        vocab_size=hf["vocab_size"], max_seq_len=hf["n_positions"], d_model=d,
        n_layers=hf["n_layer"], n_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
        position="learned", activation=_ACT_FROM_HF[act], norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_position="pre", bias=True,
        dropout=hf.get("resid_pdrop", 0.1), attn_dropout=hf.get("attn_pdrop", 0.1),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        init_std=hf.get("initializer_range", 0.02))


def config_to_hf(cfg: CausalLMConfig) -> dict[str, Any]:
    """The GPT-2 ``config.json`` dict for ``cfg``; a ValueError lists what GPT-2 can't express."""
    problems = []
    need = {"position": "learned", "norm": "layernorm", "norm_position": "pre", "bias": True,
            "sliding_window": None}
    problems += [f"{k}={getattr(cfg, k)!r} (GPT-2 needs {v!r})" for k, v in need.items()
                 if getattr(cfg, k) != v]
    if cfg.activation not in _ACT_TO_HF:
        problems.append(f"activation={cfg.activation!r} (GPT-2 supports {sorted(_ACT_TO_HF)})")
    if cfg.n_kv_heads not in (None, cfg.n_heads):
        problems.append(f"n_kv_heads={cfg.n_kv_heads} (GPT-2 has no grouped-query attention)")
    if cfg.d_model % cfg.n_heads or cfg.resolved_head_dim != cfg.d_model // cfg.n_heads:
        problems.append(f"head_dim={cfg.resolved_head_dim} (GPT-2 needs d_model / n_heads)")
    incompatible("this model cannot be saved as GPT-2", problems)
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff if cfg.d_ff is not None else 4 * cfg.d_model,
        "activation_function": _ACT_TO_HF[cfg.activation],
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attn_dropout,
        "layer_norm_epsilon": cfg.norm_eps, "initializer_range": cfg.init_std,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "add_cross_attention": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }


def weight_map(cfg: CausalLMConfig) -> list[tuple[str, str, bool]]:
    """``(hf_name, attnkit_name, transposed)`` for every tensor of a GPT-2 checkpoint."""
    rows = [("transformer.wte.weight", "tok_emb.weight", False),
            ("transformer.wpe.weight", "pos_emb.emb.weight", False),
            ("transformer.ln_f.weight", "stack.final_norm.weight", False),
            ("transformer.ln_f.bias", "stack.final_norm.bias", False)]
    per_layer = [("ln_1", "norm1", False), ("attn.c_attn", "attn.qkv", True),
                 ("attn.c_proj", "attn.out_proj", True), ("ln_2", "norm2", False),
                 ("mlp.c_fc", "ffn.w1", True), ("mlp.c_proj", "ffn.w2", True)]
    for i in range(cfg.n_layers):
        for hf, ours, conv in per_layer:
            for p in ("weight", "bias"):
                rows.append((f"transformer.h.{i}.{hf}.{p}", f"stack.layers.{i}.{ours}.{p}",
                             conv and p == "weight"))
    if not cfg.tie_embeddings:
        rows.append(("lm_head.weight", "lm_head.weight", False))
    return rows


def _normalise(state: dict[str, Tensor], tied: bool) -> dict[str, Tensor]:
    """Add the ``transformer.`` prefix when absent, drop mask buffers and a tied head."""
    state = drop_keys(state, _IGNORED)
    if not any(k.startswith("transformer.") for k in state):
        state = {(k if k.startswith("lm_head.") else f"transformer.{k}"): v
                 for k, v in state.items()}
    if tied:  # HF ties lm_head to wte and ignores a stored copy; so do we
        state.pop("lm_head.weight", None)
    return state


def load_gpt2(directory: str | Path, *, dtype: torch.dtype | None = None) -> CausalLM:
    """A :class:`CausalLM` from a HF GPT-2 directory (``config.json`` + safetensors weights).

    Parameters keep the model's float32 unless ``dtype`` is given (stored bf16/fp16 values are
    represented exactly in float32). The model is returned in eval mode.
    """
    cfg = config_from_hf(read_config(directory))
    state = _normalise(load_state(directory), cfg.tie_embeddings)
    model = CausalLM(cfg)
    rows = weight_map(cfg)
    params = checked_params(model, (o for _, o, _ in rows), "GPT-2")
    expected = {hf: tuple(reversed(params[o].shape)) if t else tuple(params[o].shape)
                for hf, o, t in rows}
    check_keys(expected, state, f"GPT-2 checkpoint {directory}")
    with torch.no_grad():
        for hf, ours, transposed in rows:
            t = state[hf]
            params[ours].copy_(t.T if transposed else t)
    return finish_load(model, dtype)


def save_gpt2(model: CausalLM, directory: str | Path, *,
              extra_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a HF GPT-2 checkpoint that ``AutoModelForCausalLM`` loads.

    ``extra_config`` is merged into ``config.json`` (e.g. ``bos_token_id``/``eos_token_id``,
    which attnkit does not track). Weights keep the model's dtype.
    """
    cfg = model.config
    hf = config_to_hf(cfg)
    params = dict(model.named_parameters())
    tensors = {h: (params[o].T if t else params[o]) for h, o, t in weight_map(cfg)}
    return save_checkpoint(directory, hf, tensors, dtype=model.tok_emb.weight.dtype,
                           extra_config=extra_config)
