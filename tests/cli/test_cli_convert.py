"""`attnkit convert`: a random transformers GPT-2 -> attnkit checkpoint -> HF again, same
logits; BERT heads follow `architectures`; errors."""

import pytest
import torch
from _cli_util import cli, error_line

from attnkit.data import train_bpe
from attnkit.train import load_model
from attnkit.train.checkpoint import read_config, tokenizer_dir

transformers = pytest.importorskip("transformers")

TEXTS = ["def add(a, b):\n    return a + b\n", "The with statement wraps a block."] * 8


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    tok = train_bpe(TEXTS, vocab_size=300, min_frequency=1)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32,
                                  n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(d)
    tok.save(d)
    return d, model


def test_hf_to_attnkit_to_hf_keeps_logits(hf_gpt2, tmp_path):
    src, hf = hf_gpt2
    ak, back = tmp_path / "ak", tmp_path / "hf"
    r = cli("convert", "--from", "hf", "--to", "attnkit", src, ak)
    assert r.exit_code == 0, r.stderr
    assert "CausalLM" in r.stdout and "tokenizer bpe" in r.stdout
    assert read_config(ak)["architecture"] == "CausalLM" and tokenizer_dir(ak) is not None
    r = cli("convert", "--from", "attnkit", "--to", "hf", ak, back)
    assert r.exit_code == 0, r.stderr
    assert (back / "tokenizer.json").is_file()

    ids = torch.randint(hf.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    again = transformers.GPT2LMHeadModel.from_pretrained(back).eval()
    with torch.no_grad():
        want = hf(ids).logits
        torch.testing.assert_close(again(ids).logits, want, rtol=0, atol=0)
        torch.testing.assert_close(load_model(ak)(ids).logits, want, rtol=1e-5, atol=1e-5)

    # the directions are detected when not given; generate reads either format
    assert cli("convert", src, tmp_path / "auto").exit_code == 0
    assert read_config(tmp_path / "auto")["architecture"] == "CausalLM"
    for ckpt in (src, ak):
        r = cli("generate", "-k", ckpt, "def ", "-n", 5, "--seed", 0, "--no-stream")
        assert r.exit_code == 0, r.stderr
        assert r.stdout.startswith("def ")


def test_bert_head_from_architectures(tmp_path):
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64)
    transformers.BertForQuestionAnswering(cfg).save_pretrained(tmp_path / "qa")
    r = cli("convert", tmp_path / "qa", tmp_path / "ak")
    assert r.exit_code == 0, r.stderr
    assert "no tokenizer.json" in r.stdout
    assert read_config(tmp_path / "ak")["architecture"] == "BertForQuestionAnswering"


def test_convert_errors(hf_gpt2, tmp_path):
    src, _ = hf_gpt2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not found" in error_line(cli("convert", tmp_path / "nope", tmp_path / "o"))
    line = error_line(cli("convert", src, tmp_path / "full"))
    assert "not empty" in line and "--overwrite" in line
    assert "nothing to convert" in error_line(cli("convert", "--from", "hf", "--to", "hf", src,
                                                  tmp_path / "o"))
    assert "not an attnkit checkpoint" in error_line(cli("convert", "--from", "attnkit", src,
                                                         tmp_path / "o"))
    assert "valid formats" in error_line(cli("convert", "--to", "onnx", src, tmp_path / "o"))
    assert cli("convert", src, tmp_path / "full", "--overwrite").exit_code == 0


def test_overwrite_never_deletes_the_source(hf_gpt2, tmp_path):
    import shutil

    src, _ = hf_gpt2
    inner = tmp_path / "outer" / "hf"
    shutil.copytree(src, inner)
    for dst in (tmp_path / "outer", inner):  # a parent of the source, the source itself
        line = error_line(cli("convert", inner, dst, "--overwrite"))
        assert "overlap" in line and (inner / "config.json").is_file()
