"""``torch.compile(fullgraph=True)`` of every model family's forward and training step has no
graph breaks, and ``torch.export.export`` of the causal LM runs like the eager model.

``torch._dynamo.explain`` traces without compiling (cheap): one graph, no breaks. The training
step (train mode, dropout on, labels -> loss) is also compiled with ``fullgraph=True`` through
AOTAutograd (``backend="aot_eager"``: the backward is traced too, nothing is code-generated)
and its loss and gradients compared with eager ones (dropout 0 there, so both runs compute the
same function). Inputs carry padding masks where the family takes them: under compilation the
models apply a given mask unconditionally instead of checking it on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from attnkit.models import (
    BertConfig,
    BertForMaskedLM,
    CausalLM,
    CausalLMConfig,
    Seq2SeqConfig,
    Seq2SeqLM,
    ViTConfig,
    ViTForImageClassification,
)
from attnkit.train.losses import compute_loss

V = 96  # vocabulary of the token models


def _tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, V, shape, generator=torch.Generator().manual_seed(seed))


def _pad(mask: torch.Tensor, row: int, n: int, left: bool = False) -> torch.Tensor:
    mask = mask.clone()
    if left:
        mask[row, :n] = 0
    else:
        mask[row, -n:] = 0
    return mask


def _causal(preset: str) -> Callable[[float], tuple[torch.nn.Module, dict, dict]]:
    def make(dropout: float):
        cfg = CausalLMConfig.preset(preset, vocab_size=V, dropout=dropout, attn_dropout=dropout)
        ids = _tokens(2, 16)
        am = _pad(torch.ones(2, 16, dtype=torch.long), 0, 5, left=True)  # left-padded prompt
        return CausalLM(cfg), {"input_ids": ids, "attention_mask": am}, {
            "input_ids": ids, "labels": ids}
    return make


def _bert(dropout: float):
    cfg = BertConfig.preset("bert-tiny", vocab_size=V, dropout=dropout, attn_dropout=dropout)
    ids = _tokens(2, 16)
    am = _pad(torch.ones(2, 16, dtype=torch.long), 1, 6)
    labels = torch.full((2, 16), -100)
    labels[:, [2, 7]] = ids[:, [2, 7]]
    return BertForMaskedLM(cfg), {"input_ids": ids, "attention_mask": am}, {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _seq2seq(preset: str, **small: Any):
    def make(dropout: float):
        cfg = Seq2SeqConfig.preset(preset, vocab_size=V, dropout=dropout, **small)
        src, tgt = _tokens(2, 12), _tokens(2, 7, seed=1)
        am = _pad(torch.ones(2, 12, dtype=torch.long), 1, 4)
        return Seq2SeqLM(cfg), {"input_ids": src, "attention_mask": am,
                                "decoder_input_ids": tgt}, {
            "input_ids": src, "attention_mask": am, "labels": tgt}
    return make


def _vit(dropout: float):
    cfg = ViTConfig.preset("vit-tiny", image_size=32, patch_size=8, d_model=32, n_layers=2,
                           n_heads=2, d_ff=64, num_labels=5, dropout=dropout,
                           attn_dropout=dropout)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return ViTForImageClassification(cfg), {"pixel_values": x}, {
        "pixel_values": x, "labels": torch.tensor([1, 3])}


FAMILIES = {
    "gpt2": _causal("gpt2-tiny"),
    "llama": _causal("llama-tiny"),
    "bert-mlm": _bert,
    "t5": _seq2seq("t5-tiny"),
    "transformer-base": _seq2seq("transformer-base", d_model=32, n_layers=1,
                                 n_decoder_layers=1, n_heads=2, d_ff=64),
    "vit": _vit,
}


def _explain(fn: Callable[..., Any], **kwargs: Any):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(**kwargs)


def _breaks(ex) -> str:
    return "; ".join(f"{r.reason} at {r.user_stack[-1].filename}:{r.user_stack[-1].lineno}"
                     for r in ex.break_reasons if r.user_stack) or "(no reasons)"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_is_one_graph(family):
    model, inputs, _ = FAMILIES[family](0.1)
    model.eval()
    with torch.no_grad():
        ex = _explain(model, **inputs)
        assert (ex.graph_count, ex.graph_break_count) == (1, 0), _breaks(ex)
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(**inputs).logits, model(**inputs).logits,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_is_one_graph(family):
    model, _, batch = FAMILIES[family](0.1)  # dropout on: the training path
    model.train()

    def step(**b: Any) -> torch.Tensor:
        return compute_loss(model, model, b)

    ex = _explain(step, **batch)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), _breaks(ex)


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_training_step_matches_eager(family):
    """fullgraph through AOTAutograd: the backward is traced as well; loss and gradients
    equal the eager ones."""
    model, _, batch = FAMILIES[family](0.0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(forward: Callable[..., Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = compute_loss(forward, model, batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    want_loss, want = grads(model)
    got_loss, got = grads(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for p, g, w in zip(params, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=lambda m, p=p: f"{p.shape}: {m}")


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_export_causal_lm_matches_eager(preset):
    """``torch.export.export`` with a dynamic batch and length; the exported program (which
    returns a :class:`CausalLMOutput`) runs shapes it was not traced with, padded or not."""
    cfg = CausalLMConfig.preset(preset, vocab_size=V)
    model = CausalLM(cfg).eval()
    ids = _tokens(2, 16)
    am = _pad(torch.ones(2, 16, dtype=torch.long), 0, 5, left=True)
    B = torch.export.Dim("B", max=8)
    L = torch.export.Dim("L", min=2, max=cfg.max_seq_len)
    ep = torch.export.export(model, (ids,), {"attention_mask": am},
                             dynamic_shapes={"input_ids": {0: B, 1: L},
                                             "attention_mask": {0: B, 1: L}})
    run = ep.module()
    for b, n, pad in ((2, 16, 5), (3, 9, 2), (1, 40, 0)):
        x = _tokens(b, n, seed=n)
        mask = _pad(torch.ones(b, n, dtype=torch.long), 0, pad, left=True) if pad else \
            torch.ones(b, n, dtype=torch.long)
        out = run(x, attention_mask=mask)
        assert type(out).__name__ == "CausalLMOutput"
        with torch.no_grad():
            want = model(x, attention_mask=mask).logits
        keep = mask.bool()  # padded positions' logits are not defined to match
        torch.testing.assert_close(out.logits[keep], want[keep], rtol=1e-5, atol=1e-5)


def test_causal_lm_export_without_mask():
    cfg = CausalLMConfig.preset("gpt2-tiny", vocab_size=V)
    model = CausalLM(cfg).eval()
    ids = _tokens(1, 12)
    L = torch.export.Dim("L", min=2, max=cfg.max_seq_len)
    ep = torch.export.export(model, (ids,), dynamic_shapes={"input_ids": {1: L}})
    x = _tokens(1, 30, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)

