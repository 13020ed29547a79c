"""Tiny local models the tests build in seconds, offline: a word list and a one-layer BERT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "red",
    "blue",
    "square",
    "circle",
    "photo",
    "of",
    "city",
    "tokyo",
    "river",
    "night",
    "day",
]


def tiny_bert(folder: Path, hidden: int = 32, words: Sequence[str] = WORDS) -> Path:
    """A randomly initialised one-layer BERT whose vocabulary is ``words`` (and their ``##`` pieces):
    distils in seconds. Texts made of other words embed to zero vectors, so pass the test's own."""
    transformers = pytest.importorskip("transformers")
    import torch

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[f"##{w}" for w in words], "tokyo's"]
    wordpiece = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer()
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    transformers.PreTrainedTokenizerFast(tokenizer_object=wordpiece, **specials).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(folder)
    return folder
