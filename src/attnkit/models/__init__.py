"""Model families built from the attention core and the layers."""

from attnkit.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from attnkit.models.causal_lm import CausalLM, CausalLMConfig
from attnkit.models.config import ModelConfig
from attnkit.models.seq2seq import Seq2SeqConfig, Seq2SeqLM
from attnkit.models.stacks import TransformerStack
from attnkit.models.vit import ViTConfig, ViTForImageClassification

__all__ = [
    "ModelConfig", "TransformerStack", "CausalLM", "CausalLMConfig", "BertConfig", "BertModel",
    "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
    "BertForQuestionAnswering", "Seq2SeqConfig", "Seq2SeqLM", "ViTConfig",
    "ViTForImageClassification",
]
