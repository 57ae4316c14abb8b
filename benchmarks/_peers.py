"""The installed peers the training benchmarks compare attnkit against, built and trained the
way their own users build and train them.

* ``hf-gpt2`` — ``transformers.GPT2LMHeadModel`` from a ``GPT2Config`` (random weights,
  nothing downloaded), ``attn_implementation="sdpa"`` (its fastest on CPU), dropout 0,
  ``activation_function="gelu"`` (exact, as nanoGPT and x-transformers; ``"gelu_new"``, GPT-2's
  tanh form, on request); loss
  ``model(input_ids=x, labels=x).loss`` (HF shifts the labels inside).
* ``x-transformers`` — ``TransformerWrapper(num_tokens, max_seq_len, tie_embedding=True,
  attn_layers=Decoder(dim, depth, heads, attn_dim_head=dim // heads, attn_flash=True))``
  inside ``AutoregressiveWrapper`` (its training API: ``loss = wrapper(x)``, next-token
  cross-entropy over ``x``); everything else at the library's defaults (pre-norm LayerNorm
  without bias, GELU feed-forward ×4, bias-free attention projections, learned absolute
  positions).

Both see the same ``(B, L)`` windows and predict ``L - 1`` targets per window, as attnkit's
``CausalLM(x, labels=x)`` does. Their loop (:class:`PeerLoop`) is the one nanoGPT's
``train.py`` and HF's ``Trainer`` run: learning rate set per step (linear warmup, cosine
decay), forward, backward, ``clip_grad_norm_(1.0)``, AdamW step, ``zero_grad(set_to_none)``.
AdamW's parameter groups follow nanoGPT's ``configure_optimizers`` (weight decay on every
parameter with ≥ 2 dimensions); ``fused=True`` by default, the optimizer HF's ``Trainer``
uses by default since torch 2.8 (``adamw_torch_fused``); ``optimizer="default"`` is torch's
default AdamW (a single-tensor loop on CPU: what nanoGPT gets there).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

PEERS = ("hf-gpt2", "x-transformers")
PEER_OPTIMIZERS = ("fused", "default")
# nanoGPT's train_shakespeare_char.py hyper-parameters, also attnkit's char-gpt recipe up to
# the peak rate (the step's cost does not depend on them).
LR, MIN_LR, WARMUP, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0


def quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    return transformers


#: attnkit activation -> GPT2Config.activation_function
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


def hf_gpt2(shape: dict[str, int], seed: int, activation: str = "gelu",
            dropout: float = 0.0) -> nn.Module:
    """``GPT2LMHeadModel`` with ``shape``'s layers / d_model / heads / vocab / seq_len;
    ``activation`` gelu (exact, nanoGPT's) or gelu_tanh (GPT-2's ``gelu_new``); ``dropout``
    on the embeddings and residual branches (none on attention weights)."""
    transformers = quiet_transformers()
    cfg = transformers.GPT2Config(
        vocab_size=shape["vocab"], n_positions=shape["seq_len"], n_embd=shape["d_model"],
        n_layer=shape["layers"], n_head=shape["heads"],
        activation_function=HF_ACTIVATIONS[activation],
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=0.0, bos_token_id=None,
        eos_token_id=None, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg)


def x_transformers(shape: dict[str, int], seed: int) -> nn.Module:
    """x-transformers' decoder-only LM (``AutoregressiveWrapper``) of the same shape."""
    from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

    torch.manual_seed(seed)
    d, h = shape["d_model"], shape["heads"]
    net = TransformerWrapper(
        num_tokens=shape["vocab"], max_seq_len=shape["seq_len"], tie_embedding=True,
        attn_layers=Decoder(dim=d, depth=shape["layers"], heads=h, attn_dim_head=d // h,
                            attn_flash=True))
    return AutoregressiveWrapper(net)


def build_peer(name: str, shape: dict[str, int], seed: int,
               activation: str = "gelu") -> tuple[nn.Module, Callable]:
    """``(model, loss_fn)`` with ``loss_fn(model, x (B, L)) -> scalar loss``
    (x-transformers' feed-forward is always exact GELU)."""
    if name == "hf-gpt2":
        return hf_gpt2(shape, seed, activation), lambda m, x: m(input_ids=x, labels=x).loss
    if name == "x-transformers":
        return x_transformers(shape, seed), lambda m, x: m(x)
    raise ValueError(f"unknown peer {name!r}; valid: {PEERS}")


def attnkit_twin(hf_model: nn.Module, directory: str) -> nn.Module:
    """attnkit's ``CausalLM`` holding ``hf_model``'s weights (saved as a Hugging Face
    directory with safetensors, loaded with :func:`attnkit.interop.gpt2.load_gpt2`)."""
    from attnkit.interop.gpt2 import load_gpt2

    hf_model.save_pretrained(directory, safe_serialization=True)
    return load_gpt2(directory)


def peer_lr(it: int, total: int, lr: float = LR, min_lr: float = MIN_LR,
            warmup: int = WARMUP) -> float:
    """Linear warmup over ``warmup`` steps, cosine decay to ``min_lr`` at ``total``
    (nanoGPT's ``get_lr``)."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > total:
        return min_lr
    ratio = (it - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def peer_optimizer(model: nn.Module, kind: str, lr: float = LR,
                   betas: tuple[float, float] = BETAS,
                   weight_decay: float = WEIGHT_DECAY) -> torch.optim.AdamW:
    """AdamW, decay on ≥ 2-D parameters (nanoGPT's grouping); ``kind`` fused | default."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if kind == "fused" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **extra)


def optimizer_kind(opt: torch.optim.Optimizer) -> str:
    if opt.defaults.get("fused"):
        return "fused"
    if opt.defaults.get("foreach"):
        return "foreach"
    return "single-tensor" if next(iter(opt.param_groups[0]["params"])).device.type == "cpu" \
        else "default"


class PeerLoop:
    """One training step of a peer per :meth:`step` (see the module docstring)."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Tensor], Tensor],
                 next_x: Callable[[], Tensor], *, optimizer: str = "fused",
                 amp: torch.dtype | None = None, total_steps: int = 5000, lr: float = LR,
                 min_lr: float = MIN_LR, warmup: int = WARMUP, device: torch.device | None = None):
        self.model, self.loss_fn, self.next_x = model, loss_fn, next_x
        self.opt = peer_optimizer(model, optimizer, lr)
        self.amp, self.total, self.it = amp, total_steps, 0
        self.lr, self.min_lr, self.warmup = lr, min_lr, warmup
        self.device_type = (device or next(model.parameters()).device).type
        model.train()

    def _autocast(self) -> Any:
        return nullcontext() if self.amp is None else torch.autocast(self.device_type,
                                                                      dtype=self.amp)

    def step(self) -> Tensor:
        lr = peer_lr(self.it, self.total, self.lr, self.min_lr, self.warmup)
        for g in self.opt.param_groups:
            g["lr"] = lr
        x = self.next_x()
        with self._autocast():
            loss = self.loss_fn(self.model, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.it += 1
        return loss.detach()


class Windows:
    """A pool of random ``(B, L)`` token windows made up front (no variant pays for data
    loading), cycled in order. Doubles as an attnkit ``BatchSource`` (``input_ids`` =
    ``labels`` = the window: ``CausalLM`` shifts inside)."""

    def __init__(self, vocab: int, batch: int, seq_len: int, device: torch.device,
                 pool: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.windows = [torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)
                        for _ in range(pool)]
        self.i = 0

    def next_x(self) -> Tensor:
        x = self.windows[self.i % len(self.windows)]
        self.i += 1
        return x

    def next_batch(self) -> dict[str, Tensor]:
        x = self.next_x()
        return {"input_ids": x, "labels": x}

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def scratch_dir(tmp: str, name: str) -> str:
    path = os.path.join(tmp, name)
    os.makedirs(path, exist_ok=True)
    return path
