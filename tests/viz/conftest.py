"""Shared fixtures of the visualization tests: a WordPiece tokenizer and a tiny causal LM
saved as a Hugging Face checkpoint, loaded the way `attnkit viz` loads one."""

import pytest
import torch

from attnkit.data.tokenizers import train_wordpiece
from attnkit.interop.hf import save_hf
from attnkit.models import CausalLM, CausalLMConfig
from attnkit.viz.loading import load_for_viz

CORPUS = ["The animal didn't cross the street because it was too tired.",
          "The quick brown fox jumps over the lazy dog.",
          "Attention lets every token look at every other token."] * 4


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(CORPUS, vocab_size=120)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, wordpiece):
    """A 2-layer, 4-head causal LM saved as a HF checkpoint with its WordPiece tokenizer."""
    d = tmp_path_factory.mktemp("tiny-lm")
    torch.manual_seed(0)
    save_hf(CausalLM(CausalLMConfig.preset("gpt2-tiny", vocab_size=wordpiece.vocab_size)), d)
    wordpiece.save(d)
    return d


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """:func:`tiny_dir` loaded back with load_for_viz: ``(model, tokenizer)``."""
    return load_for_viz(tiny_dir)
