"""T5 checkpoints (Hugging Face ``T5ForConditionalGeneration`` layout) <-> :class:`Seq2SeqLM`.

Name map (HF ``{stack}.block.{i}.layer.{j}.`` -> attnkit ``{stack}.layers.{i}.``)::

    encoder  layer.0.SelfAttention.{q,k,v}     attn.qkv          rows concatenated [q | k | v]
             layer.0.SelfAttention.o           attn.out_proj
             layer.0.layer_norm                norm1
             layer.1.DenseReluDense.wi         ffn.w1            (relu / gelu)
             layer.1.DenseReluDense.wi_0/wi_1  ffn.w1 / ffn.w3   (gated-gelu, gated-silu)
             layer.1.DenseReluDense.wo         ffn.w2
             layer.1.layer_norm                norm2
    decoder  layer.0 as above (self-attention)
             layer.1.EncDecAttention.q         cross_attn.q_proj
             layer.1.EncDecAttention.{k,v}     cross_attn.kv_proj  rows concatenated [k | v]
             layer.1.EncDecAttention.o         cross_attn.out_proj
             layer.1.layer_norm                norm_cross
             layer.2.*                         the feed-forward, as encoder layer.1

plus ``shared`` -> ``embed``, ``{stack}.final_layer_norm`` -> ``{stack}.final_norm``,
``{stack}.block.0.layer.0.SelfAttention.relative_attention_bias`` -> ``{stack}_bias.embedding``
(T5 computes the bias in layer 0 only and shares it with every layer) and, untied,
``lm_head`` -> ``lm_head``.

Head and scaling: T5 v1.0 ties the head to ``shared`` and multiplies the decoder output by
``d_model^-0.5``; v1.1 / mT5 have a separate ``lm_head`` and no rescaling. transformers 5
keeps ``tie_word_embeddings`` only as the default of ``scale_decoder_outputs`` and decides
tying by the checkpoint: a stored ``lm_head.weight`` that differs from ``shared.weight`` is
untied. We read both the same way. Accepted on load: ``encoder/decoder.embed_tokens.weight``
copies of ``shared`` and the unused ``decoder.block.0.layer.1.EncDecAttention.
relative_attention_bias.weight`` older exports carry (ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnkit.interop.common import (
    drop_keys,
    incompatible,
    load_fused,
    load_state,
    read_config,
    save_checkpoint,
    split_fused,
)
from attnkit.models.seq2seq import Seq2SeqConfig, Seq2SeqLM

__all__ = ["load_t5", "save_t5", "config_from_hf", "config_to_hf", "weight_map"]

_FF_FROM_HF = {"relu": "relu", "gelu": "gelu", "gated-gelu": "geglu", "gated-silu": "swiglu"}
_FF_TO_HF = {v: k for k, v in _FF_FROM_HF.items()}
_IGNORED = [r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"]
_EMBED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(hf: dict[str, Any], *, tied: bool = True) -> Seq2SeqConfig:
    """A :class:`Seq2SeqConfig` from a T5 ``config.json`` dict; ``tied``: the checkpoint has no
    separate ``lm_head`` (see the module docstring)."""
    if hf.get("model_type") not in ("t5", "mt5"):
        raise ValueError(f"not a T5 config: model_type={hf.get('model_type')!r}")
    ff = hf.get("feed_forward_proj", "relu")
    problems = []
    if ff not in _FF_FROM_HF:
        problems.append(f"feed_forward_proj={ff!r} (supported: {sorted(_FF_FROM_HF)})")
    if not hf.get("is_encoder_decoder", True):
        problems.append("is_encoder_decoder=False (only T5ForConditionalGeneration is supported)")
    incompatible("unsupported T5 config", problems)
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    pad = hf.get("pad_token_id")
    pad = 0 if pad is None else pad
    start = hf.get("decoder_start_token_id")
    eos = hf.get("eos_token_id", 1)
    return Seq2SeqConfig(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_layers=hf["num_layers"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        n_heads=hf["num_heads"], d_ff=hf["d_ff"], head_dim=hf["d_kv"], position="relative",
        relative_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        activation=_FF_FROM_HF[ff], norm="rmsnorm", norm_position="pre",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), bias=False, attn_scale=1.0,
        dropout=hf.get("dropout_rate", 0.1), tie_embeddings=tied,
        scale_embeddings="output" if scale else "none", pad_token_id=pad,
        decoder_start_token_id=pad if start is None else start,
        eos_token_id=eos[0] if isinstance(eos, list) else eos)


def config_to_hf(cfg: Seq2SeqConfig) -> dict[str, Any]:
    """The T5 ``config.json`` dict for ``cfg``; a ValueError lists what T5 can't express."""
    need = {"position": "relative", "norm": "rmsnorm", "norm_position": "pre", "bias": False,
            "attn_scale": 1.0}
    problems = [f"{k}={getattr(cfg, k)!r} (T5 needs {v!r})" for k, v in need.items()
                if getattr(cfg, k) != v]
    if cfg.activation not in _FF_TO_HF:
        problems.append(f"activation={cfg.activation!r} (T5 supports {sorted(_FF_TO_HF)})")
    if cfg.scale_embeddings == "input":
        problems.append("scale_embeddings='input' (T5 can only rescale the decoder output)")
    incompatible("this model cannot be saved as T5", problems)
    scale = cfg.scale_embeddings == "output"
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
        "d_kv": cfg.head_dim or cfg.d_model // cfg.n_heads, "d_ff": cfg.d_ff,
        "num_layers": cfg.n_layers, "num_decoder_layers": cfg.n_decoder_layers,
        "num_heads": cfg.n_heads, "relative_attention_num_buckets": cfg.relative_num_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "dropout_rate": cfg.dropout, "layer_norm_epsilon": cfg.norm_eps,
        "initializer_factor": 1.0, "feed_forward_proj": _FF_TO_HF[cfg.activation],
        "is_encoder_decoder": True, "use_cache": True, "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id, "decoder_start_token_id": cfg.decoder_start_token_id,
        # transformers < 5 reads tie_word_embeddings as "tied and rescaled"; 5.x reads the
        # explicit scale_decoder_outputs and ties by comparing lm_head with shared.
        "tie_word_embeddings": scale, "scale_decoder_outputs": scale,
    }


def weight_map(cfg: Seq2SeqConfig) -> list[tuple[tuple[str, ...], str]]:
    """``(hf_names, attnkit_name)`` for every tensor; several HF names are concatenated along
    dim 0 (the fused projections). The tied head has no row."""
    gated = cfg.activation in ("geglu", "swiglu")
    ffn = ([("DenseReluDense.wi_0", "ffn.w1"), ("DenseReluDense.wi_1", "ffn.w3")] if gated
           else [("DenseReluDense.wi", "ffn.w1")]) + [("DenseReluDense.wo", "ffn.w2")]
    rows: list[tuple[tuple[str, ...], str]] = [(("shared.weight",), "embed.weight")]
    for stack, n in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        rows.append(((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",),
                     f"{stack}_bias.embedding.weight"))
        for i in range(n):
            hf, ours = f"{stack}.block.{i}.layer.", f"{stack}.layers.{i}."
            sa = f"{hf}0.SelfAttention."
            qkv = tuple(f"{sa}{x}.weight" for x in "qkv")
            rows += [(qkv, f"{ours}attn.qkv.weight"),
                     ((f"{sa}o.weight",), f"{ours}attn.out_proj.weight"),
                     ((f"{hf}0.layer_norm.weight",), f"{ours}norm1.weight")]
            j = 1
            if stack == "decoder":
                ca = f"{hf}1.EncDecAttention."
                rows += [((f"{ca}q.weight",), f"{ours}cross_attn.q_proj.weight"),
                         ((f"{ca}k.weight", f"{ca}v.weight"), f"{ours}cross_attn.kv_proj.weight"),
                         ((f"{ca}o.weight",), f"{ours}cross_attn.out_proj.weight"),
                         ((f"{hf}1.layer_norm.weight",), f"{ours}norm_cross.weight")]
                j = 2
            rows += [((f"{hf}{j}.{h}.weight",), f"{ours}{o}.weight") for h, o in ffn]
            rows.append(((f"{hf}{j}.layer_norm.weight",), f"{ours}norm2.weight"))
        rows.append(((f"{stack}.final_layer_norm.weight",), f"{stack}.final_norm.weight"))
    if not cfg.tie_embeddings:
        rows.append((("lm_head.weight",), "lm_head.weight"))
    return rows


def _normalise(state: dict[str, Tensor], directory: str | Path) -> tuple[dict[str, Tensor], bool]:
    """Drop ignored keys and embedding copies; decide whether the head is tied."""
    state = drop_keys(state, _IGNORED)
    if "shared.weight" not in state and _EMBED_COPIES[0] in state:
        state["shared.weight"] = state[_EMBED_COPIES[0]]
    shared = state.get("shared.weight")
    for k in _EMBED_COPIES:
        t = state.pop(k, None)
        if t is not None and shared is not None and not torch.equal(t, shared):
            raise ValueError(f"T5 checkpoint {directory}: {k} differs from shared.weight; "
                             f"attnkit shares one embedding between encoder and decoder")
    head = state.get("lm_head.weight")
    tied = head is None or (shared is not None and torch.equal(head, shared))
    if tied:
        state.pop("lm_head.weight", None)
    return state, tied


def load_t5(directory: str | Path, *, dtype: torch.dtype | None = None) -> Seq2SeqLM:
    """A :class:`Seq2SeqLM` from a HF T5 directory (``config.json`` + safetensors weights).

    Parameters keep float32 unless ``dtype`` is given. The model is returned in eval mode.
    """
    hf = read_config(directory)
    state, tied = _normalise(load_state(directory), directory)
    cfg = config_from_hf(hf, tied=tied)
    return load_fused(Seq2SeqLM(cfg), weight_map(cfg), state, f"T5 checkpoint {directory}",
                      family="T5", dtype=dtype)


def save_t5(model: Seq2SeqLM, directory: str | Path, *,
            extra_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a HF T5 checkpoint that ``T5ForConditionalGeneration`` loads.

    ``extra_config`` is merged into ``config.json``. Weights keep the model's dtype. A tied,
    non-rescaling model also stores ``lm_head.weight`` (a copy of ``shared``) so that
    transformers < 5, which unties whenever ``tie_word_embeddings`` is false, reads it too.
    """
    cfg = model.config
    hf = config_to_hf(cfg)
    tensors = split_fused(weight_map(cfg), dict(model.named_parameters()))
    if cfg.tie_embeddings and not hf["tie_word_embeddings"]:
        tensors["lm_head.weight"] = model.embed.weight
    return save_checkpoint(directory, hf, tensors, dtype=model.embed.weight.dtype,
                           extra_config=extra_config)
