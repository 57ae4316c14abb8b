"""The training loop: exact resume, Ctrl-C, gradient accumulation, metrics, plot, config."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.models import BertConfig, BertForMaskedLM, CausalLM, CausalLMConfig
from attnkit.train import TrainConfig, Trainer, load_model
from attnkit.train.checkpoint import read_trainer_state
from attnkit.train.losses import compute_loss
from attnkit.train.metrics import read_metrics

VOCAB, SEQ = 48, 12
DATA = torch.randint(VOCAB, (2000,), generator=torch.Generator().manual_seed(0))


class TokenStream:
    """Batch source over the random token tensor ``DATA``. Global batch ``g`` is ``group``
    random windows drawn with a generator seeded by ``(seed, g)``; micro-batches of
    ``batch_size`` rows walk through it. ``ignore_frac`` of the labels become -100.
    ``interrupt_at``: raise KeyboardInterrupt (once) instead of returning batch ``n``."""

    def __init__(self, batch_size, group=None, seed=0, ignore_frac=0.0, interrupt_at=None):
        self.batch_size, self.group = batch_size, group or batch_size
        self.seed, self.ignore_frac, self.interrupt_at = seed, ignore_frac, interrupt_at
        self.n = 0

    def _rows(self, g):
        gen = torch.Generator().manual_seed(self.seed * 7919 + g)
        starts = torch.randint(len(DATA) - SEQ, (self.group,), generator=gen).tolist()
        x = torch.stack([DATA[s:s + SEQ] for s in starts])
        y = x.clone()
        if self.ignore_frac:
            y[torch.rand(x.shape, generator=gen) < self.ignore_frac] = -100
        return x, y

    def next_batch(self):
        if self.interrupt_at is not None and self.n == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        g, j = divmod(self.n, self.group // self.batch_size)
        x, y = self._rows(g)
        rows = slice(j * self.batch_size, (j + 1) * self.batch_size)
        self.n += 1
        return {"input_ids": x[rows], "labels": y[rows]}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def tiny_lm(seed=0, dropout=0.1) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=VOCAB, max_seq_len=SEQ, d_model=32, n_layers=2,
                                   n_heads=2, d_ff=64, dropout=dropout))


def config(out_dir, **kw) -> TrainConfig:
    base = dict(steps=12, batch_size=4, grad_accum=2, lr=3e-3, min_lr=3e-4, warmup_steps=3,
                eval_every=4, eval_batches=2, save_every=0, log_every=1, out_dir=str(out_dir),
                device="cpu", precision="fp32", progress=False, seed=7)
    return TrainConfig(**{**base, **kw})


def run(out_dir, *, model_seed=0, max_steps=None, interrupt_at=None, **kw):
    trainer = Trainer(tiny_lm(model_seed), TokenStream(4, interrupt_at=interrupt_at),
                      TokenStream(4, seed=99), config(out_dir, **kw))
    return trainer, trainer.train(max_steps)


def comparable(records):
    """Metrics without the timing fields."""
    drop = {"tokens_per_s", "ms_per_iter"}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 12-step run."""
    out = tmp_path_factory.mktemp("ref")
    _, summary = run(out)
    return out, summary


# ---- exact resume ----------------------------------------------------------------------------


def test_resume_reproduces_uninterrupted_run_exactly(tmp_path, reference):
    ref, _ = reference
    _, s1 = run(tmp_path, max_steps=6)
    assert s1.step == 6 and not s1.interrupted
    assert read_trainer_state(tmp_path / "last")["step"] == 6
    # fresh objects (other init weights, fresh sources), as a new process would build them
    _, s2 = run(tmp_path, model_seed=123, resume=True)
    assert s2.step == 12
    got, want = read_metrics(tmp_path / "metrics.jsonl"), read_metrics(ref / "metrics.jsonl")
    assert [r["step"] for r in got if r["kind"] == "train"] == list(range(1, 13))
    assert comparable(got) == comparable(want)  # every loss, lr, grad norm, val loss: bit-equal
    assert_same_weights(load_model(tmp_path / "last"), load_model(ref / "last"))
    assert s2.final_loss == reference[1].final_loss


def test_keyboard_interrupt_saves_last_and_resumes_exactly(tmp_path, reference):
    ref, _ = reference
    # steps use batches 2k, 2k+1: batch 13 is the 2nd micro-batch of step 7 -> stop after 6
    _, s1 = run(tmp_path, interrupt_at=13)
    assert s1.interrupted and s1.step == 6
    state = read_trainer_state(tmp_path / "last")
    assert state["step"] == 6 and state["data"] == {"n": 12}  # boundary, not mid-step
    assert (tmp_path / "loss_curve.png").is_file()
    _, s2 = run(tmp_path, model_seed=5, resume=True)
    assert s2.step == 12 and not s2.interrupted
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == \
        comparable(read_metrics(ref / "metrics.jsonl"))
    assert_same_weights(load_model(tmp_path / "last"), load_model(ref / "last"))


def test_interrupt_inside_forward_discards_the_partial_step(tmp_path, reference):
    """A KeyboardInterrupt after a micro-batch's forward/backward (dropout RNG consumed,
    gradients accumulated) rolls back to the step boundary."""
    ref, _ = reference
    trainer = Trainer(tiny_lm(), TokenStream(4), TokenStream(4, seed=99), config(tmp_path))
    calls = {"n": 0}

    def hook(module, args, kwargs, out):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 2 * 9 + 2:  # 2nd micro-batch of step 10
                raise KeyboardInterrupt

    handle = trainer.raw_model.register_forward_hook(hook, with_kwargs=True)
    s1 = trainer.train()
    handle.remove()
    assert s1.interrupted and s1.step == 9
    _, s2 = run(tmp_path, model_seed=5, resume=True)
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == \
        comparable(read_metrics(ref / "metrics.jsonl"))
    assert_same_weights(load_model(tmp_path / "last"), load_model(ref / "last"))


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny_lm(), TokenStream(4), None, config(tmp_path, resume=True))


# ---- gradient accumulation -------------------------------------------------------------------


def test_grad_accumulation_matches_the_big_batch(tmp_path):
    """2 micro-batches of 4 == one batch of 8, with -100 labels making their token counts
    differ (micro-batches are weighted by tokens, not 1/accum)."""
    def train(out, batch, accum):
        src = TokenStream(batch, group=8, ignore_frac=0.3)
        cfg = config(out, steps=3, batch_size=batch, grad_accum=accum, eval_every=0,
                     warmup_steps=0, lr=1e-3)
        return Trainer(tiny_lm(dropout=0.0), src, None, cfg)

    big, small = train(tmp_path / "big", 8, 1), train(tmp_path / "small", 4, 2)
    big.train()
    small.train()
    for (k, a), b in zip(big.raw_model.state_dict().items(),
                         small.raw_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6, msg=k)
    lb = [r["loss"] for r in read_metrics(tmp_path / "big" / "metrics.jsonl")]
    ls = [r["loss"] for r in read_metrics(tmp_path / "small" / "metrics.jsonl")]
    assert lb == pytest.approx(ls, rel=1e-6)
    assert big.tokens_seen == small.tokens_seen == 3 * 8 * SEQ


# ---- outputs ---------------------------------------------------------------------------------


def test_metrics_checkpoints_plot_and_summary(reference):
    out, summary = reference
    recs = read_metrics(out / "metrics.jsonl")
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert set(train[0]) == {"kind", "step", "loss", "lr", "grad_norm", "tokens_per_s",
                             "tokens_seen", "ms_per_iter"}
    assert train[0]["lr"] == pytest.approx(3e-3 / 4) and train[-1]["lr"] < train[3]["lr"]
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["loss"]) for r in train)
    assert train[-1]["tokens_seen"] == 12 * 2 * 4 * SEQ
    for e in evals:
        assert e["val_ppl"] == pytest.approx(math.exp(e["val_loss"]))
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = min(e["val_loss"] for e in evals)
    assert read_trainer_state(out / "best")["best_val_loss"] == best
    assert read_trainer_state(out / "last")["step"] == 12
    assert read_metrics(out / "last" / "metrics.jsonl") == recs
    assert summary.final_loss == train[-1]["loss"]
    assert summary.val_loss == evals[-1]["val_loss"] and summary.best_val_loss == best
    assert summary.val_ppl == pytest.approx(math.exp(summary.val_loss))
    assert summary.tokens_seen == train[-1]["tokens_seen"]
    assert summary.tokens_per_s > 0 and summary.ms_per_iter > 0


def test_log_every_averages_the_interval(tmp_path):
    Trainer(tiny_lm(), TokenStream(4), None,
            config(tmp_path, steps=6, log_every=3, eval_every=0)).train()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [3, 6]


def test_label_smoothing_loss(tmp_path):
    model = tiny_lm(dropout=0.0)
    b = TokenStream(4, ignore_frac=0.2).next_batch()
    logits = model(b["input_ids"]).logits
    want = F.cross_entropy(logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(),
                           ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(compute_loss(model, model, b, 0.1), want)
    # with (almost) no smoothing it is the model's own (shifted) loss
    torch.testing.assert_close(compute_loss(model, model, b, 1e-9), model(**b).loss)


def test_bert_mlm_with_label_smoothing_trains(tmp_path):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=VOCAB, max_position=SEQ, d_model=32,
                                       n_layers=1, n_heads=2, d_ff=64, dropout=0.0,
                                       attn_dropout=0.0))
    s = Trainer(model, TokenStream(4, ignore_frac=0.8), TokenStream(4, seed=3, ignore_frac=0.8),
                config(tmp_path, steps=2, label_smoothing=0.1, eval_every=2)).train()
    assert s.step == 2 and math.isfinite(s.final_loss) and math.isfinite(s.val_loss)
    assert type(load_model(tmp_path / "best")) is BertForMaskedLM


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train_on_cpu(tmp_path, precision):
    trainer = Trainer(tiny_lm(), TokenStream(4), TokenStream(4, seed=3),
                      config(tmp_path, steps=2, precision=precision, eval_every=2))
    s = trainer.train()
    assert math.isfinite(s.final_loss) and math.isfinite(s.val_loss)
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert trainer.raw_model.tok_emb.weight.dtype == torch.float32  # fp32 master weights


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install tensorboard"):
        Trainer(tiny_lm(), TokenStream(4), None, config(tmp_path, tensorboard=True))


# ---- config ----------------------------------------------------------------------------------


def test_config_round_trip_and_errors(tmp_path):
    cfg = config(tmp_path, betas=[0.8, 0.9])
    assert cfg.betas == (0.8, 0.9)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys: \['stepz'\].*valid keys"):
        TrainConfig.from_dict({"stepz": 10})
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="distributed"):
        TrainConfig(distributed="horovod")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
