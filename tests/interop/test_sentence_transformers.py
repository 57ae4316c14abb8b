"""sentence-transformers directories: the pooling files written and read back (both
sentence-transformers layouts), and what attnkit cannot run is named."""

import json

import pytest

from attnkit.interop.sentence_transformers import (
    SentencePooling,
    read_sentence_pooling,
    write_sentence_transformers,
)


def test_written_files_read_back(tmp_path):
    for pooling in (SentencePooling(), SentencePooling("cls", False, 128)):
        d = tmp_path / pooling.pooling
        d.mkdir()
        write_sentence_transformers(d, pooling, dim=16)
        assert read_sentence_pooling(d) == pooling
        pool = json.loads((d / "1_Pooling" / "config.json").read_text())
        assert pool["word_embedding_dimension"] == 16
    assert read_sentence_pooling(tmp_path) is None  # no modules.json: a plain HF model


def test_unsupported_pipelines_are_named(tmp_path):
    write_sentence_transformers(tmp_path, SentencePooling(), dim=8)
    modules = json.loads((tmp_path / "modules.json").read_text())
    (tmp_path / "modules.json").write_text(json.dumps(
        modules + [{"idx": 3, "name": "3", "path": "3_Dense",
                    "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ValueError, match=r"modules \['Dense'\] are not supported"):
        read_sentence_pooling(tmp_path)
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 8, "pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match=r"pooling \['max_tokens'\] is not supported"):
        read_sentence_pooling(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(ValueError, match=r"pooling \['max'\] is not supported"):
        read_sentence_pooling(tmp_path)
    (tmp_path / "modules.json").write_text("{not json")
    with pytest.raises(ValueError, match="modules.json is not valid JSON"):
        read_sentence_pooling(tmp_path)
    with pytest.raises(ValueError, match="pooling 'max' is not supported; valid"):
        SentencePooling("max")


def test_reads_the_sentence_transformers_6_layout(tmp_path):
    """Module types under sentence_transformers.base / .sentence_transformer, one
    ``pooling_mode`` name, the length as the tokenizer's ``model_max_length``."""
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "",
         "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 8, "pooling_mode": "cls", "include_prompt": True}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps(
        {"transformer_task": "feature-extraction"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 24}))
    assert read_sentence_pooling(tmp_path) == SentencePooling("cls", False, 24)
