"""Helpers shared by the decoder-only (GPT-2, LLaMA / Mistral) interop tests.

A module of its own, imported by name (conftest.py files cannot be imported by name when
several directories have one): pytest puts this directory on ``sys.path``.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from attnkit.interop.hf import load_hf, save_hf

TOL = dict(atol=1e-4, rtol=0)


def perturbed(m):
    """``m`` in eval mode with non-trivial norm gains and biases."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def reload_hf(directory):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager").eval()


def padded_batch(vocab_size, B=3, L=11):
    """Random ids with a left-padded row and a right-padded row, plus HF's position ids."""
    ids = torch.randint(0, vocab_size, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, 8:] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@torch.no_grad()
def assert_matches_hf(ours, ref, vocab_size):
    """Logits, every hidden state and every attention map agree on the real (unpadded) tokens
    of a padded batch; without a mask, HF's default arange positions give the same logits."""
    ids, mask, pos = padded_batch(vocab_size)
    want = ref(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
               output_attentions=True)
    got = ours(ids, attention_mask=mask, output_hidden_states=True, return_weights=True)
    real = mask.bool()  # padded query rows are arbitrary on both sides
    torch.testing.assert_close(got.logits[real], want.logits[real], **TOL)
    assert len(got.hidden_states) == len(want.hidden_states)
    for g, w in zip(got.hidden_states, want.hidden_states, strict=True):
        torch.testing.assert_close(g[real], w[real], **TOL)
    assert len(got.attentions) == len(want.attentions)
    for g, w in zip(got.attentions, want.attentions, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g.transpose(1, 2)[real], w.transpose(1, 2)[real], **TOL)
    # no mask at all: HF's default arange positions
    torch.testing.assert_close(ours(ids).logits, ref(ids).logits, **TOL)


@torch.no_grad()
def assert_round_trip(load, save, src, out, vocab_size):
    """``load(src)``, ``save`` it to ``out``: reloading is exact (weights and config) and
    transformers reads ``out`` with the same logits. Returns (ours, transformers' model)."""
    ours = load(src)
    save(ours, out)
    again = load(out)
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.config == ours.config
    ref = reload_hf(out)
    ids = torch.randint(0, vocab_size, (2, 9))
    torch.testing.assert_close(ref(ids).logits, ours(ids).logits, **TOL)
    return ours, ref


@torch.no_grad()
def assert_save_hf_export(m, directory, L):
    """An attnkit model written by ``save_hf`` loads in transformers with the same logits and
    reads back through ``load_hf`` exactly. Returns what ``load_hf`` read."""
    save_hf(m, directory)
    ref = reload_hf(directory)
    ids = torch.randint(0, 256, (2, L))
    torch.testing.assert_close(ref(ids).logits, m(ids).logits, **TOL)
    back = load_hf(directory)
    assert back.config == m.config
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())
    return back


def edit_weights(directory, fn):
    """Apply ``fn`` to the state dict in ``directory/model.safetensors``, in place."""
    state = load_file(directory / "model.safetensors")
    fn(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
