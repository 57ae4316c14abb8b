"""save_hf(model, dir, tokenizer=...): a directory plain transformers runs end to end —
AutoTokenizer, the special-token ids, generation_config.json — and everything checked before
anything is written."""

import json

import pytest
import torch

from attnkit.data import CharTokenizer, train_bpe
from attnkit.generate import GenerationConfig, generate
from attnkit.interop.hf import check_hf_export, save_hf
from attnkit.interop.sentence_transformers import SentencePooling
from attnkit.models import (
    BertConfig,
    BertModel,
    CausalLM,
    CausalLMConfig,
    Seq2SeqConfig,
    Seq2SeqLM,
    ViTConfig,
    ViTForImageClassification,
)
from attnkit.train.checkpoint import read_config, save_checkpoint

transformers = pytest.importorskip("transformers")

CORPUS = ["def add(a, b):\n    return a + b\n", "The with statement wraps a block."] * 8


@pytest.fixture(scope="module")
def char():
    return CharTokenizer.train(CORPUS)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_causal_lm_directory_generates_like_attnkit(preset, char, tmp_path):
    torch.manual_seed(0)
    cfg = CausalLMConfig.preset(preset, vocab_size=char.vocab_size, init_std=0.2)
    model = CausalLM(cfg).eval()
    save_hf(model, tmp_path, tokenizer=char)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert (hf_cfg["bos_token_id"], hf_cfg["eos_token_id"], hf_cfg["pad_token_id"]) == (
        char.bos_id, char.eos_id, char.pad_id)
    gen_cfg = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen_cfg == {"bos_token_id": char.bos_id, "eos_token_id": char.eos_id,
                       "pad_token_id": char.pad_id}

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    prompt = "def add(a"
    enc = tok(prompt, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == char.encode(prompt)
    out = hf.generate(**enc, max_new_tokens=20, do_sample=False)
    ours = generate(model, [char.encode(prompt)],
                    GenerationConfig(max_new_tokens=20, eos_token_id=char.eos_id))[0]
    assert out[0, enc["input_ids"].shape[1]:].tolist() == ours


def test_seq2seq_tokenizer_appends_the_end_token(tmp_path):
    bpe = train_bpe(CORPUS, vocab_size=300, min_frequency=1)
    cfg = Seq2SeqConfig.preset("t5-tiny", vocab_size=bpe.vocab_size, pad_token_id=bpe.pad_id,
                               decoder_start_token_id=bpe.pad_id, eos_token_id=bpe.end_id)
    save_hf(Seq2SeqLM(cfg), tmp_path, tokenizer=bpe)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok("a block")["input_ids"] == bpe.encode("a block") + [bpe.end_id]
    gen_cfg = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen_cfg["decoder_start_token_id"] == bpe.pad_id
    assert gen_cfg["eos_token_id"] == bpe.end_id


def test_everything_is_checked_before_writing(char, tmp_path):
    gpt = CausalLM(CausalLMConfig.preset("gpt2-tiny", vocab_size=char.vocab_size))
    vit = ViTForImageClassification(ViTConfig.preset("vit-tiny", image_size=32, patch_size=16,
                                                     n_layers=1))
    small = CausalLM(CausalLMConfig.preset("gpt2-tiny", vocab_size=char.vocab_size - 1))
    base = Seq2SeqLM(Seq2SeqConfig.preset("transformer-base", vocab_size=50, d_model=32,
                                          n_layers=1, n_decoder_layers=1, n_heads=2, d_ff=64))
    cases = [
        (vit, dict(tokenizer=char), "takes no tokenizer"),
        (small, dict(tokenizer=char), "more than the model's vocab_size"),
        (gpt, dict(sentence_pooling=SentencePooling()), "applies to a BertModel"),
        (base, {}, "cannot be saved as T5"),
    ]
    for model, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            check_hf_export(model, **kwargs)
        with pytest.raises(ValueError, match=message):
            save_hf(model, tmp_path / "out", **kwargs)
        assert not (tmp_path / "out").exists()


def test_sentence_pooling_files_and_checkpoint_entry(tmp_path):
    bert = BertModel(BertConfig.preset("bert-tiny", vocab_size=64))
    save_hf(bert, tmp_path / "hf", sentence_pooling=SentencePooling("cls", True, 32))
    modules = json.loads((tmp_path / "hf" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    save_checkpoint(tmp_path / "ak", bert, extra_config={"sentence_pooling": {"pooling": "cls"}})
    assert read_config(tmp_path / "ak")["sentence_pooling"] == {"pooling": "cls"}
    with pytest.raises(ValueError, match=r"\['model'\] are the checkpoint's own"):
        save_checkpoint(tmp_path / "x", bert, extra_config={"model": {}})


def test_a_new_directory_appears_complete_or_not_at_all(char, tmp_path, monkeypatch):
    import attnkit.interop.tokenizer as tokenizer_module

    model = CausalLM(CausalLMConfig.preset("gpt2-tiny", vocab_size=char.vocab_size))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer_module, "save_hf_tokenizer", crash)
    with pytest.raises(OSError, match="disk full"):
        save_hf(model, tmp_path / "out", tokenizer=char)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory
    monkeypatch.undo()
    (tmp_path / "out").mkdir()  # an empty directory is written like a new one
    save_hf(model, tmp_path / "out", tokenizer=char)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "generation_config.json"}
