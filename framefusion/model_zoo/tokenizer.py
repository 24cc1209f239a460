"""A tiny byte-level BPE tokenizer, trained in milliseconds, that stands in for a family's real one.

Random-weight models need a tokenizer only to turn a prompt into ids and to own the family's special
tokens (chat markers, the image/video placeholders the processor expands). Byte-level BPE can encode
any text, so prompts in any language still work; the merges are learnt from a few sentences only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Sentences close to what users ask about videos, so common words become single tokens.
TRAINING_SENTENCES = (
    "What is happening in this video?",
    "Describe the video in one sentence.",
    "A person walks a dog along the beach at sunset.",
    "The camera pans slowly across a busy city street.",
    "How many people appear in the clip, and what are they doing?",
    "A red car stops at the traffic light, then turns left.",
)

# 256 byte symbols plus up to this many merges: enough for the sentences above, still tiny.
BPE_VOCAB_SIZE = 512


def build_tokenizer(
    special_tokens: Sequence[str],
    named_tokens: Mapping[str, str],
    *,
    eos_token: str,
    pad_token: str,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and add `special_tokens` after the learnt vocabulary, in order.

    `named_tokens` become tokenizer attributes (e.g. {"video_token": "<|video_pad|>"} gives
    `tokenizer.video_token` and `tokenizer.video_token_id`), which the processors read.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    missing = {eos_token, pad_token, *named_tokens.values()} - set(special_tokens)
    if missing:
        raise ValueError(f"tokens {sorted(missing)} must be listed in special_tokens")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_SENTENCES, trainer=trainer)
    # normalized=False: the markers must match verbatim, never after byte-level rewriting.
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special_tokens])

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos_token,
        pad_token=pad_token,
        extra_special_tokens=dict(named_tokens),
    )
