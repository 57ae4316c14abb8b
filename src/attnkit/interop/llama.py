"""LLaMA / Mistral checkpoints (Hugging Face ``LlamaForCausalLM`` layout) <-> :class:`CausalLM`.

Name map for layer ``i`` (HF ``model.layers.{i}.`` -> attnkit ``stack.layers.{i}.``)::

    input_layernorm.weight                  norm1.weight            RMSNorm gain
    self_attn.{q,k,v}_proj.{weight,bias}    attn.qkv.{weight,bias}  concatenated [q | k | v]
    self_attn.o_proj.{weight,bias}          attn.out_proj.{weight,bias}
    post_attention_layernorm.weight         norm2.weight
    mlp.gate_proj / up_proj / down_proj     ffn.w1 / ffn.w3 / ffn.w2   (SwiGLU)

plus ``model.embed_tokens`` -> ``tok_emb``, ``model.norm`` -> ``stack.final_norm`` and, when
untied, ``lm_head``. With GQA, ``k_proj``/``v_proj`` have ``n_kv_heads·head_dim`` rows. Biases
exist when ``attention_bias`` (q/k/v/o) and ``mlp_bias`` are set; attnkit has one ``bias``
flag, so the two must agree. RoPE uses the "rotate_half" pairing on both sides.

Config: ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (4.x) are
read; RoPE types "default" and "linear" are supported (others, e.g. "dynamic", "yarn",
"llama3", are a ValueError). ``model_type="mistral"`` adds ``sliding_window`` (each query sees
the ``sliding_window`` most recent positions, itself included); a model with a sliding window
is saved as Mistral, which has no biases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attnkit.interop.common import (
    FusedRows,
    drop_keys,
    incompatible,
    load_fused,
    load_state,
    read_config,
    require,
    save_checkpoint,
    split_fused,
)
from attnkit.models.causal_lm import CausalLM, CausalLMConfig

__all__ = ["load_llama", "save_llama", "config_from_hf", "config_to_hf", "weight_map"]

MODEL_TYPES = ("llama", "mistral")
_IGNORED = [r"\.rotary_emb\.inv_freq$"]


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None, str | None]:
    """``(theta, attnkit rope_scaling, problem)`` from either config generation."""
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    src = params if params else legacy
    kind = src.get("rope_type", src.get("type", "default"))
    if kind == "default":
        return float(theta), None, None
    if kind == "linear":
        return float(theta), {"type": "linear", "factor": float(src["factor"])}, None
    return float(theta), None, f"RoPE type {kind!r} (supported: 'default', 'linear')"


def config_from_hf(hf: dict[str, Any]) -> CausalLMConfig:
    """A :class:`CausalLMConfig` from a LLaMA or Mistral ``config.json`` dict."""
    mt = hf.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"not a LLaMA/Mistral config: model_type={mt!r} (supported: "
                         f"{MODEL_TYPES})")
    require(hf, ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads"], mt)
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (LLaMA's SwiGLU needs 'silu')")
    theta, scaling, rope_problem = _rope_from_hf(hf)
    if rope_problem:
        problems.append(rope_problem)
    attn_bias = bool(hf.get("attention_bias", False)) if mt == "llama" else False
    mlp_bias = bool(hf.get("mlp_bias", False)) if mt == "llama" else False
    if attn_bias != mlp_bias:
        problems.append(f"attention_bias={attn_bias} with mlp_bias={mlp_bias} (attnkit has one "
                        f"bias flag; they must agree)")
    incompatible(f"unsupported {mt} config", problems)
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // h
    window = hf.get("sliding_window") if mt == "mistral" else None
    return CausalLMConfig(
        vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        d_model=d, n_layers=hf["num_hidden_layers"], n_heads=h,
        n_kv_heads=hf.get("num_key_value_heads") or h, d_ff=hf["intermediate_size"],
        head_dim=None if head_dim * h == d else head_dim,
        position="rope", rope_base=theta, rope_scaling=scaling, activation="swiglu",
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), norm_position="pre",
        bias=attn_bias, dropout=0.0, attn_dropout=hf.get("attention_dropout", 0.0),
        tie_embeddings=hf.get("tie_word_embeddings", False), sliding_window=window,
        init_std=hf.get("initializer_range", 0.02))


def config_to_hf(cfg: CausalLMConfig) -> dict[str, Any]:
    """The LLaMA (or, with a sliding window, Mistral) ``config.json`` dict for ``cfg``."""
    need = {"position": "rope", "activation": "swiglu", "norm": "rmsnorm", "norm_position": "pre"}
    problems = [f"{k}={getattr(cfg, k)!r} (LLaMA needs {v!r})" for k, v in need.items()
                if getattr(cfg, k) != v]
    rs = cfg.rope_scaling
    if rs is not None and rs["type"] != "linear":
        problems.append(f"rope_scaling type {rs['type']!r} (HF's 'dynamic' NTK differs from "
                        f"attnkit's static 'ntk'; only 'linear' maps exactly)")
    mistral = cfg.sliding_window is not None
    if mistral and cfg.bias:
        problems.append("bias=True with sliding_window (Mistral has no biases)")
    incompatible("this model cannot be saved as LLaMA/Mistral", problems)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if rs is not None:
        rope = {"rope_type": "linear", "factor": float(rs["factor"]), "rope_theta": cfg.rope_base}
    hf: dict[str, Any] = {
        "architectures": ["MistralForCausalLM" if mistral else "LlamaForCausalLM"],
        "model_type": "mistral" if mistral else "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff if cfg.d_ff is not None else 4 * cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads or cfg.n_heads, "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": cfg.attn_dropout,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta / rope_scaling
        "rope_parameters": rope, "rope_theta": cfg.rope_base,
        "rope_scaling": None if rs is None else {"type": "linear", "factor": float(rs["factor"])},
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }
    if mistral:
        hf["sliding_window"] = cfg.sliding_window
    else:
        hf["attention_bias"] = hf["mlp_bias"] = cfg.bias
    return hf


def weight_map(cfg: CausalLMConfig) -> list[tuple[str, list[str]]]:
    """``(attnkit_name, [hf_name, ...])``; several HF names are concatenated along dim 0."""
    rows: list[tuple[str, list[str]]] = [
        ("tok_emb.weight", ["model.embed_tokens.weight"]),
        ("stack.final_norm.weight", ["model.norm.weight"])]
    params = ["weight", "bias"] if cfg.bias else ["weight"]
    for i in range(cfg.n_layers):
        hf, ours = f"model.layers.{i}.", f"stack.layers.{i}."
        rows += [(f"{ours}norm1.weight", [f"{hf}input_layernorm.weight"]),
                 (f"{ours}norm2.weight", [f"{hf}post_attention_layernorm.weight"])]
        for p in params:
            rows += [
                (f"{ours}attn.qkv.{p}", [f"{hf}self_attn.{n}_proj.{p}" for n in "qkv"]),
                (f"{ours}attn.out_proj.{p}", [f"{hf}self_attn.o_proj.{p}"]),
                (f"{ours}ffn.w1.{p}", [f"{hf}mlp.gate_proj.{p}"]),
                (f"{ours}ffn.w3.{p}", [f"{hf}mlp.up_proj.{p}"]),
                (f"{ours}ffn.w2.{p}", [f"{hf}mlp.down_proj.{p}"])]
    if not cfg.tie_embeddings:
        rows.append(("lm_head.weight", ["lm_head.weight"]))
    return rows


def _split_sizes(cfg: CausalLMConfig) -> list[int]:
    """Rows of q, k, v in the fused ``qkv`` projection."""
    dh = cfg.resolved_head_dim
    return [cfg.n_heads * dh, (cfg.n_kv_heads or cfg.n_heads) * dh,
            (cfg.n_kv_heads or cfg.n_heads) * dh]


def _fused_rows(cfg: CausalLMConfig) -> FusedRows:
    """:func:`weight_map` as ``(hf_names, attnkit_name)`` rows (the order ``common`` uses)."""
    return [(hfs, ours) for ours, hfs in weight_map(cfg)]


def load_llama(directory: str | Path, *, dtype: torch.dtype | None = None) -> CausalLM:
    """A :class:`CausalLM` from a HF LLaMA / Mistral directory (config.json + safetensors).

    Parameters stay float32 unless ``dtype`` is given; the model is returned in eval mode.
    """
    cfg = config_from_hf(read_config(directory))
    state = drop_keys(load_state(directory), _IGNORED)
    if cfg.tie_embeddings:  # HF ties lm_head to embed_tokens and ignores a stored copy
        state.pop("lm_head.weight", None)
    return load_fused(CausalLM(cfg), _fused_rows(cfg), state, f"LLaMA checkpoint {directory}",
                      family="LLaMA", dtype=dtype, sizes=_split_sizes(cfg))


def save_llama(model: CausalLM, directory: str | Path, *,
               extra_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a HF LLaMA (or Mistral) checkpoint ``AutoModelForCausalLM`` loads.

    ``extra_config`` is merged into ``config.json`` (e.g. token ids). Weights keep their dtype.
    """
    cfg = model.config
    hf = config_to_hf(cfg)
    tensors = split_fused(_fused_rows(cfg), dict(model.named_parameters()), _split_sizes(cfg))
    return save_checkpoint(directory, hf, tensors, dtype=model.tok_emb.weight.dtype,
                           extra_config=extra_config)
