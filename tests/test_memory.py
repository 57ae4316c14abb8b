"""Memory budgets: exact model sizes without allocating, a sound quick bound, and refusals
that give the figures."""

import pytest
import torch

from attnkit import memory
from attnkit.models import BertConfig, CausalLMConfig, Seq2SeqConfig
from attnkit.models.registry import FAMILIES, build_model
from attnkit.models.vit import ViTConfig


def _presets():
    for cls in (CausalLMConfig, BertConfig, Seq2SeqConfig, ViTConfig):
        for name in cls.presets:
            kw = {"vocab_size": 65} if cls.presets[name].get("vocab_size") == 0 else {}
            yield pytest.param(cls.preset(name, **kw), id=name)
    yield pytest.param(CausalLMConfig.preset("llama-tiny", position="rope", sliding_window=8),
                       id="llama-tiny-window")
    yield pytest.param(Seq2SeqConfig.preset("t5-tiny", position="sinusoidal"), id="t5-sinusoidal")


def _real(model):
    params = {id(p): p for p in model.parameters()}.values()
    return (sum(p.numel() for p in params),
            sum(b.numel() * b.element_size() for b in model.buffers()))


@pytest.mark.parametrize("config", list(_presets()))
def test_footprint_is_exact_and_the_bound_is_above_it(config):
    fam = FAMILIES[config.family]
    for arch in fam.architectures:
        fp = memory.model_footprint(config, arch)
        if config.family in ("causal_lm", "seq2seq", "vit") or arch == "BertForMaskedLM":
            if 4 * memory.size_bound(config) > 1 << 30:  # building gpt2-small etc. costs seconds
                continue
            n, buf = _real(build_model(config, arch, check_memory=False))
            assert (fp.n_params, fp.buffer_bytes) == (n, buf)
        assert memory.size_bound(config) >= fp.n_params + fp.buffer_bytes // 4


def test_sizing_allocates_nothing():
    huge = CausalLMConfig(vocab_size=10**9, max_seq_len=10**9, d_model=4096, n_layers=2,
                          n_heads=32, position="rope")
    fp = memory.model_footprint(huge)  # 4e12 parameters (a tied head) + RoPE tables: shapes only
    assert fp.n_params > 4 * 10**12 and "(1000000000, 4096)" in fp.largest


def test_require_names_both_figures(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 << 30)
    memory.require(4 << 30, "cpu", what="x", fix="y")  # fits
    with pytest.raises(ValueError, match=r"a thing needs ~16.00 GiB, more than the 8.00 GiB of "
                                         r"memory available on cpu; make it smaller"):
        memory.require(16 << 30, "cpu", what="a thing", fix="make it smaller")
    memory.require(memory.SMALL - 1, "cpu", what="x", fix="y")  # small: never looked at


def test_training_estimate_names_the_settings(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 << 30)
    cfg = CausalLMConfig.preset("char-gpt", vocab_size=65, max_seq_len=100_000_000)
    with pytest.raises(ValueError) as e:
        memory.check_training(cfg, "CausalLM", batch=12, seq_len=64, device="cpu",
                              settings="model.max_seq_len=100000000")
    msg = str(e.value)
    assert "model.max_seq_len=100000000" in msg and "pos_emb.emb.weight (100000000, 128)" in msg
    assert "12,800,801,664 parameters" in msg and "more than the 16.00 GiB" in msg
    memory.check_training(CausalLMConfig.preset("char-gpt", vocab_size=65), "CausalLM",
                          batch=12, seq_len=64, device="cpu", settings="")  # the default fits


def test_available_memory_is_read():
    assert memory.available_bytes("cpu") > 0
    assert memory.available_bytes("meta") is None
    if not torch.cuda.is_available():
        assert memory.available_bytes("cuda") is None
