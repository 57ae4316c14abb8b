"""attnkit.viz.analysis against hand-computed examples and brute force."""

import itertools
import math

import pytest
import torch

from attnkit.viz.analysis import (
    attention_flow,
    entropy,
    head_similarity,
    head_stats,
    max_flow,
    mean_distance,
    residual_attention,
    rollout,
    top_attended,
)

# Two layers, two tokens, two heads. Head means: A1 = [[1, 0], [.5, .5]], A2 = [[.5, .5], [0, 1]].
W = torch.tensor([
    [[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]],
    [[[0.5, 0.5], [0.0, 1.0]], [[0.5, 0.5], [0.0, 1.0]]],
])


def test_rollout_two_layers_by_hand():
    # Ã1 = .5·A1 + .5·I = [[1, 0], [.25, .75]];  Ã2 = [[.75, .25], [0, 1]]
    # R = Ã2 Ã1 = [[.75 + .0625, .1875], [.25, .75]]
    expected = torch.tensor([[0.8125, 0.1875], [0.25, 0.75]])
    torch.testing.assert_close(rollout(W), expected)
    torch.testing.assert_close(rollout(W.mean(1)), expected)  # head-fused input
    every = rollout(W, return_all=True)
    assert every.shape == (2, 2, 2)
    torch.testing.assert_close(every[0], torch.tensor([[1.0, 0.0], [0.25, 0.75]]))
    torch.testing.assert_close(every[1], expected)


def test_rollout_properties():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(4, 3, 6, 6), -1)
    r = rollout(w)
    torch.testing.assert_close(r.sum(-1), torch.ones(6))
    eye = torch.eye(5).expand(3, 2, 5, 5)  # attending to oneself only: nothing mixes
    torch.testing.assert_close(rollout(eye), torch.eye(5))
    torch.testing.assert_close(rollout(w, residual=0.0), w.mean(1)[3] @ w.mean(1)[2]
                               @ w.mean(1)[1] @ w.mean(1)[0])
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(w, head_fusion="median")


def test_flow_two_layers_by_hand():
    # capacities Ã1 (layer 0 -> 1), Ã2 (1 -> 2) as in the rollout example:
    # a0->a2: a0→a1→a2 min(1, .75) + a0→b1→a2 min(.25, .25) = 1
    # b0->a2: b0→b1→a2 min(.75, .25) = .25;  a0->b2: a0→b1→b2 = .25;  b0->b2: .75
    raw = torch.tensor([[1.0, 0.25], [0.25, 0.75]])
    torch.testing.assert_close(attention_flow(W, normalize=False), raw)
    torch.testing.assert_close(attention_flow(W), raw / raw.sum(-1, keepdim=True))
    torch.testing.assert_close(attention_flow(W, outputs=1, normalize=False), raw[1])
    torch.testing.assert_close(attention_flow(W, outputs=[1, 0], normalize=False), raw[[1, 0]])


def _brute_force_min_cut(caps, source, sink):
    """Max-flow = min cut: try every set S of nodes holding the source and not the sink."""
    sizes = [caps[0].shape[1]] + [c.shape[0] for c in caps]
    nodes = [(layer, i) for layer, n in enumerate(sizes) for i in range(n)]
    s, t = (0, source), (len(caps), sink)
    inner = [v for v in nodes if v not in (s, t)]
    best = math.inf
    for bits in itertools.product((0, 1), repeat=len(inner)):
        S = {s} | {v for v, b in zip(inner, bits, strict=True) if b}
        cut = sum(float(c[i, j]) for layer, c in enumerate(caps)
                  for i in range(c.shape[0]) for j in range(c.shape[1])
                  if (layer, j) in S and (layer + 1, i) not in S)
        best = min(best, cut)
    return best


def test_max_flow_vs_brute_force_min_cut():
    g = torch.Generator().manual_seed(1)
    caps = [torch.rand(3, 3, generator=g), torch.rand(3, 3, generator=g)]
    caps[0][0, 2] = 0.0  # a missing edge
    for source, sink in itertools.product(range(3), range(3)):
        assert max_flow(caps, source, sink) == pytest.approx(
            _brute_force_min_cut(caps, source, sink), abs=1e-9)


def test_flow_vs_networkx():
    nx = pytest.importorskip("networkx")
    torch.manual_seed(0)
    w = torch.softmax(3 * torch.randn(3, 2, 5, 5), -1)
    a = residual_attention(w)
    G = nx.DiGraph()
    for layer in range(3):
        for i, j in itertools.product(range(5), range(5)):
            G.add_edge((layer, j), (layer + 1, i), capacity=float(a[layer, i, j]))
    ref = torch.tensor([[nx.maximum_flow_value(G, (0, j), (3, i)) for j in range(5)]
                        for i in range(5)])
    torch.testing.assert_close(attention_flow(w, normalize=False), ref.float())


def test_flow_limit():
    w = torch.full((1, 1, 65, 65), 1 / 65)
    with pytest.raises(ValueError, match="max_tokens"):
        attention_flow(w)


def test_entropy():
    n = 7
    uniform = torch.full((2, 3, n, n), 1.0 / n)
    torch.testing.assert_close(entropy(uniform), torch.full((2, 3), math.log(n)))
    torch.testing.assert_close(entropy(torch.eye(n)), torch.tensor(0.0))  # one-hot: 0·log 0 = 0
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])  # rows: log 2 and 0
    torch.testing.assert_close(entropy(p), torch.tensor(math.log(2) / 2))


def test_mean_distance():
    torch.testing.assert_close(mean_distance(torch.eye(4)), torch.tensor(0.0))
    uniform = torch.full((3, 3), 1 / 3)  # rows: (0+1+2)/3, (1+0+1)/3, (2+1+0)/3
    torch.testing.assert_close(mean_distance(uniform), torch.tensor(8 / 9))
    prev = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0]])  # "previous token" head
    torch.testing.assert_close(mean_distance(prev), torch.tensor(2 / 3))
    coords = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(mean_distance(prev, coords), torch.tensor(10 / 3))
    with pytest.raises(ValueError, match="square"):
        mean_distance(torch.full((2, 3), 1 / 3))


def test_top_attended():
    w = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    out = top_attended(w, ["a", "b", "c"], k=2, query_tokens=["x", "y"])
    assert out[0] == {"query": 0, "query_token": "x",
                      "top": [{"index": 1, "token": "b", "weight": 0.7},
                              {"index": 2, "token": "c", "weight": 0.2}]}
    assert [t["token"] for t in out[1]["top"]] == ["a", "c"]
    with pytest.raises(ValueError):
        top_attended(w, ["a", "b"])


def test_head_similarity():
    eye = torch.eye(3)
    uni = torch.full((3, 3), 1 / 3)
    shift = eye[[1, 2, 0]]  # disjoint from eye row by row
    sim = head_similarity(torch.stack([eye, eye, shift, uni])[None])  # (1 layer, 4 heads)
    assert sim.shape == (4, 4)
    torch.testing.assert_close(sim.diagonal(), torch.ones(4))
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(sim, sim.T)
    # P = [1, 0], Q = [.5, .5], M = [.75, .25]: JSD = ½ log(4/3) + ¼ log(2/3) + ¼ log 2
    jsd = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    p = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])
    assert head_similarity(p)[0, 1] == pytest.approx(1 - jsd / math.log(2), abs=1e-6)
    cos = head_similarity(torch.stack([eye, shift, uni]), metric="cosine")
    assert cos[0, 1] == pytest.approx(0.0) and cos[0, 2] == pytest.approx(1 / math.sqrt(3))


def test_head_stats_shapes():
    w = torch.softmax(torch.randn(3, 4, 5, 5), -1)
    st = head_stats(w)
    assert st["entropy"].shape == st["distance"].shape == (3, 4)
    assert "distance" not in head_stats(torch.softmax(torch.randn(3, 4, 2, 5), -1))
