"""`attnkit viz` (attnkit.viz.cli.app) and load_for_viz on HF and attnkit checkpoints."""

import importlib.util
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from attnkit.data.tokenizers import train_wordpiece
from attnkit.interop.hf import save_hf
from attnkit.models import BertConfig, BertForMaskedLM, Seq2SeqConfig, Seq2SeqLM
from attnkit.viz.cli import app
from attnkit.viz.loading import load_for_viz

TEXTS = ["the quick brown fox jumps over the lazy dog", "a cat sat on the mat"] * 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(TEXTS, vocab_size=100)


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory, tok):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hf_bert")
    model = BertForMaskedLM(BertConfig.preset("bert-tiny", vocab_size=tok.vocab_size))
    save_hf(model, d)
    tok.save(d)
    return d


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_png_figures_from_hf_directory(hf_bert, tmp_path):
    out = tmp_path / "figs"
    r = _run("--checkpoint", hf_bert, "--text", "the lazy [MASK]", "--png", out, "--layer",
             "-1", "--head", "1")
    assert r.exit_code == 0, r.output
    assert "BertForMaskedLM" in r.output and "[CLS] the lazy [MASK] [SEP]" in r.output
    assert "prediction at position 3" in r.output  # the MLM head loaded from `architectures`
    assert "layer 1, head 1" in r.output
    for name in ("head", "grid", "rollout", "head_stats"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert not list(out.glob("*.svg"))


def test_svg_json_and_html(hf_bert, tmp_path):
    out = tmp_path / "figs"
    r = _run("-c", hf_bert, "--png", out, "--svg", "--json", tmp_path / "cap.json")
    assert r.exit_code == 0, r.output
    assert (out / "grid.svg").read_text().rstrip().endswith("</svg>")
    data = json.loads((tmp_path / "cap.json").read_text())
    assert data["kinds"]["self"]["layers"] == [0, 1] and data["tokens"][0] == "[CLS]"

    page = tmp_path / "a.html"
    r = _run("-c", hf_bert, "--text", "a cat", "--html", page)
    if importlib.util.find_spec("attnkit.viz.web") is None:
        assert r.exit_code == 2 and "attnkit.viz.web" in r.output
    else:
        assert r.exit_code == 0, r.output
        assert "<html" in page.read_text().lower()


def test_errors(hf_bert, tmp_path):
    r = _run("--text", "x")
    assert r.exit_code == 2 and "--checkpoint DIR is required" in r.output
    r = _run("-c", tmp_path / "nowhere")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = _run("-c", hf_bert, "--layer", "5")
    assert r.exit_code == 2 and "out of range" in r.output
    r = _run("-c", hf_bert, "--svg")
    assert r.exit_code == 2 and "--png" in r.output
    # a model directory without a tokenizer
    bare = tmp_path / "bare"
    save_hf(BertForMaskedLM(BertConfig.preset("bert-tiny", vocab_size=50)), bare)
    r = _run("-c", bare)
    assert r.exit_code == 2 and "no tokenizer found" in r.output
    with pytest.raises(FileNotFoundError, match="tokenizer.save"):
        load_for_viz(bare)


def test_subcommand_skips_the_callback_and_mounting(hf_bert):
    seen = {}

    def probe(ctx: typer.Context) -> None:
        seen.update(ctx.obj)

    app.command("probe-test")(probe)
    try:
        r = _run("--text", "hi", "probe-test")  # no --checkpoint: fine with a subcommand
        assert r.exit_code == 0, r.output
        assert seen["text"] == "hi" and seen["checkpoint"] is None
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands
                                      if c.name != "probe-test"]
    parent = typer.Typer()

    @parent.command()
    def other() -> None:
        """Another command, so `viz` is a sub-group as in the main CLI."""

    parent.add_typer(app, name="viz")
    r = runner.invoke(parent, ["viz", "--checkpoint", str(hf_bert), "--text", "the dog"])
    assert r.exit_code == 0, r.output
    assert "[CLS] the dog [SEP]" in r.output


def test_seq2seq_cross_grid(tok, tmp_path):
    torch.manual_seed(0)
    d = tmp_path / "t5"
    save_hf(Seq2SeqLM(Seq2SeqConfig.preset("t5-tiny", vocab_size=tok.vocab_size)), d)
    tok.save(d)
    r = _run("-c", d, "--text", "the quick fox", "--decoder-text", "a dog", "--kind", "cross",
             "--png", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "decoder tokens" in r.output
    for name in ("head", "grid", "grid_decoder", "grid_cross", "rollout", "head_stats"):
        assert (tmp_path / "out" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


def test_attnkit_training_checkpoint(tok, tmp_path):
    from attnkit.train import checkpoint as ckpt

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig.preset("bert-tiny", vocab_size=tok.vocab_size))
    ckpt.save_checkpoint(tmp_path / "ck", model, tokenizer=tok)
    m, t = load_for_viz(tmp_path / "ck")
    assert isinstance(m, BertForMaskedLM) and not m.training
    assert t.vocab_size == tok.vocab_size and t.encode("the cat") == tok.encode("the cat")
    r = _run("-c", tmp_path / "ck", "--text", "the cat", "--png", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "rollout.png").is_file()
