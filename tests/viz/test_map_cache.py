"""The server's store of captured layers: one capture per layer and input, maps equal to the
model's own weights, least-recently-used eviction under the byte budget, a clear error past
it, and one capture for concurrent requests."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
import torch

from attnkit.models import CausalLM, CausalLMConfig
from attnkit.viz.map_cache import BudgetError, MapCache, layer_bytes

TEXT = "the quick brown fox jumps over the lazy dog " * 12


@pytest.fixture(scope="module")
def lm(wordpiece):
    torch.manual_seed(0)
    cfg = CausalLMConfig(vocab_size=wordpiece.vocab_size, max_seq_len=256, d_model=32,
                         n_layers=3, n_heads=2, d_ff=64)
    return CausalLM(cfg).eval()


@contextmanager
def counting(model):
    """A list that grows by one per forward pass of ``model`` inside the block."""
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def test_maps_equal_the_models_own_weights_and_are_kept(lm, wordpiece):
    cache = MapCache(lm, wordpiece, max_tokens=256, budget=64 * 2**20)
    with counting(lm) as calls:
        entry = cache.get(TEXT, None, "self", 1, 2)
        assert cache.get(TEXT, None, "self", 1, 2) is entry  # kept
        cache.get(TEXT, None, "self", 2, 2)
        cache.get(TEXT + " more", None, "self", 1, 2)
    assert len(calls) == 3 and len(cache) == 3
    ids = wordpiece.encode(TEXT)
    n = len(ids)
    assert entry.heads.shape == (2, n, n) and entry.heads.dtype == torch.float16
    assert entry.meta.tokens and len(entry.meta.tokens) == n and entry.meta.weights == {}
    with torch.no_grad():
        ref = lm(torch.tensor([ids]), return_weights=True).attentions[1][0]  # (H, n, n)
    torch.testing.assert_close(entry.heads.float(), ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(entry.mean.float(), ref.mean(0), rtol=1e-3, atol=1e-4)
    assert entry.nbytes == layer_bytes(2, n, n)
    assert torch.equal(entry.map(1), entry.heads[1])
    assert entry.map("mean") is entry.mean and entry.map("mean", [0, 1]) is entry.mean
    assert torch.equal(entry.map("mean", [1]), entry.heads[[1]])


def test_least_recently_used_is_dropped_at_the_budget(lm, wordpiece):
    n = len(wordpiece.encode(TEXT))
    cache = MapCache(lm, wordpiece, max_tokens=256, budget=2 * layer_bytes(2, n, n) + 10)
    a = cache.get(TEXT, None, "self", 0, 2)
    cache.get(TEXT, None, "self", 1, 2)
    assert cache.get(TEXT, None, "self", 0, 2) is a  # now the most recent
    cache.get(TEXT, None, "self", 2, 2)  # drops layer 1, not layer 0
    assert len(cache) == 2 and cache.nbytes <= cache.budget
    with counting(lm) as calls:
        assert cache.get(TEXT, None, "self", 0, 2) is a and not calls
        cache.get(TEXT, None, "self", 1, 2)
    assert len(calls) == 1


def test_a_layer_over_the_budget_is_a_clear_error(lm, wordpiece):
    cache = MapCache(lm, wordpiece, max_tokens=256, budget=10_000)
    with pytest.raises(BudgetError, match=r"one self layer of this input \(2 heads x \d+ x \d+ "
                                          r"tokens\) needs .* MiB, over the server's memory "
                                          r"budget .* --max-tokens .* --memory-budget"):
        cache.get(TEXT, None, "self", 0, 2)
    assert len(cache) == 0


def test_concurrent_requests_for_one_layer_capture_it_once(lm, wordpiece):
    cache = MapCache(lm, wordpiece, max_tokens=256, budget=64 * 2**20)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(TEXT, None, "self", 2, 2)))
               for _ in range(6)]
    with counting(lm) as calls:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(calls) == 1 and all(g is got[0] for g in got)
