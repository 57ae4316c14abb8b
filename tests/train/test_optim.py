"""AdamW param groups, the warmup + cosine schedule, gradient clipping."""

import json
import math

import pytest
import torch
from torch import nn

from attnkit.models import BertConfig, BertForMaskedLM, CausalLM, CausalLMConfig
from attnkit.train.optim import (
    WarmupCosine,
    clip_grad_norm,
    make_optimizer,
    param_groups,
    warmup_cosine,
)


def names_by_group(model: nn.Module, wd: float = 0.1) -> dict[str, set[str]]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {ids[id(p)] for p in g["params"]} for g in param_groups(model, wd)}


def lm(**kw) -> CausalLM:
    cfg = dict(vocab_size=50, max_seq_len=16, d_model=32, n_layers=2, n_heads=2, d_ff=64)
    return CausalLM(CausalLMConfig(**{**cfg, **kw}))


def test_gpt_groups_decay_only_linear_weights():
    model = lm()
    g = names_by_group(model)
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    linear.discard("lm_head.weight")  # tied to the token table: an embedding, not decayed
    assert g["decay"] == linear
    assert {"tok_emb.weight", "pos_emb.emb.weight", "stack.final_norm.weight",
            "stack.final_norm.bias", "stack.layers.0.attn.qkv.bias"} <= g["no_decay"]
    assert all(n.endswith(("bias", "norm1.weight", "norm2.weight", "final_norm.weight",
                           "tok_emb.weight", "pos_emb.emb.weight")) for n in g["no_decay"])
    # every parameter exactly once (the tied head is the token table)
    assert g["decay"].isdisjoint(g["no_decay"])
    assert len(g["decay"]) + len(g["no_decay"]) == len(list(model.parameters()))
    groups = param_groups(model, 0.1)
    assert [x["weight_decay"] for x in groups] == [0.1, 0.0]


def test_untied_llama_head_is_decayed_rmsnorm_is_not():
    g = names_by_group(lm(position="rope", norm="rmsnorm", activation="swiglu", bias=False,
                          tie_embeddings=False))
    assert "lm_head.weight" in g["decay"] and "stack.layers.0.ffn.w3.weight" in g["decay"]
    assert {"stack.layers.0.norm1.weight", "tok_emb.weight"} <= g["no_decay"]


def test_bert_embeddings_and_decoder_bias_not_decayed():
    g = names_by_group(BertForMaskedLM(BertConfig(vocab_size=60, max_position=16, d_model=32,
                                                  n_layers=1, n_heads=2, d_ff=64)))
    assert {"bert.embeddings.word.weight", "bert.embeddings.position.emb.weight",
            "bert.embeddings.token_type.weight", "decoder_bias",
            "bert.embeddings.norm.weight"} <= g["no_decay"]
    assert "transform.weight" in g["decay"]


def test_frozen_parameters_are_left_out():
    model = lm()
    model.tok_emb.weight.requires_grad_(False)
    g = names_by_group(model)
    assert "tok_emb.weight" not in g["decay"] | g["no_decay"]


def test_make_optimizer_fused_when_available_else_foreach():
    model = lm()
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    assert opt.defaults["fused"] or opt.defaults["foreach"]
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert make_optimizer(model, 1e-3, fused=False).defaults["foreach"] is True
    # weight decay is decoupled: with zero gradients, decayed weights shrink by lr·wd, others not
    opt = make_optimizer(model, 0.1, 0.5, fused=False)
    w0 = model.stack.layers[0].ffn.w1.weight.detach().clone()
    b0 = model.stack.layers[0].ffn.w1.bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model.stack.layers[0].ffn.w1.weight, w0 * (1 - 0.1 * 0.5))
    assert torch.equal(model.stack.layers[0].ffn.w1.bias, b0)


@pytest.mark.parametrize("step, expected", [
    (0, 1 / 11), (4, 5 / 11), (9, 10 / 11),  # warmup ramp
    (10, 1.0),  # peak
    (55, 0.1 + 0.9 * 0.5),  # half-way through the cosine
    (100, 0.1), (150, 0.1),  # floor at min_lr, and after
])
def test_schedule_values(step, expected):
    assert warmup_cosine(step, warmup_steps=10, total_steps=100, min_ratio=0.1) == \
        pytest.approx(expected, abs=1e-12)


def test_scheduler_drives_param_groups_and_round_trips_as_json():
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": [model.weight], "lr": 1.0},
                             {"params": [model.bias], "lr": 0.5}], lr=1.0)
    sched = WarmupCosine(opt, warmup_steps=10, total_steps=100, min_lr=0.1)
    seen = []
    for _ in range(60):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0][0] == pytest.approx(1 / 11) and seen[10][0] == pytest.approx(1.0)
    assert seen[55][0] == pytest.approx(0.55)
    assert seen[55][1] == pytest.approx(0.5 * 0.55)  # other groups keep their ratio
    state = json.loads(json.dumps(sched.state_dict()))
    opt2 = torch.optim.AdamW([{"params": [model.weight], "lr": 1.0},
                              {"params": [model.bias], "lr": 0.5}], lr=1.0)
    sched2 = WarmupCosine(opt2, warmup_steps=10, total_steps=100, min_lr=0.1)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert math.isclose(sched.get_last_lr()[0], warmup_cosine(61, warmup_steps=10,
                                                              total_steps=100, min_ratio=0.1))


def test_scheduler_rejects_bad_arguments():
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="min_lr"):
        WarmupCosine(opt, warmup_steps=1, total_steps=10, min_lr=1.0)


def test_clip_grad_norm():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    norm = clip_grad_norm([a, b], 1.0)
    assert isinstance(norm, torch.Tensor)
    assert norm.item() == pytest.approx(math.sqrt(9 * 3 + 16 * 4))
    assert torch.cat([a.grad, b.grad]).norm().item() == pytest.approx(1.0, rel=1e-5)
    a.grad = torch.full((3,), 0.1)
    b.grad = None
    clip_grad_norm([a, b], 1.0)  # below the threshold: untouched
    torch.testing.assert_close(a.grad, torch.full((3,), 0.1))
