"""SCE (paper eq. 2): textual inversion of one style token S* and one token S^ per
defect class. Only the new embedding rows train; the CLIP vocabulary stays frozen.

The new rows live in their own parameter (`SCEEmbedding.new`) next to the frozen
table, so the optimizer (and its weight decay) never touches an original row.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

STYLE_TOKEN = "<pdig-style>"


def class_token(name: str) -> str:
    return f"<pdig-{name}>"


def build_prompt(class_names: list[str], style: bool = True, words: bool = False) -> str:
    """The paper's "A photo of {} with {} and {}": style token, then one token per class.
    With `words=True` (no trained tokens) the plain class names are used instead."""
    names = list(dict.fromkeys(class_names))
    if words:
        subject = "an electroluminescence image of a solar cell"
        parts = [re.sub(r"[_-]+", " ", n) for n in names]
    else:
        subject = STYLE_TOKEN if style else "an image"
        parts = [class_token(n) for n in names]
    if not parts:
        return f"A photo of {subject}"
    if len(parts) == 1:
        return f"A photo of {subject} with {parts[0]}"
    return f"A photo of {subject} with {', '.join(parts[:-1])} and {parts[-1]}"


class SCEEmbedding(nn.Module):
    """A token-embedding table = frozen original rows + trainable new rows."""

    def __init__(self, base: nn.Embedding, num_new: int, init: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("base_weight", base.weight.detach().clone(), persistent=False)
        self.num_base = base.weight.shape[0]
        if init is None:
            init = base.weight.detach().mean(0, keepdim=True).repeat(num_new, 1)
        self.new = nn.Parameter(init.detach().clone().to(base.weight.dtype))

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base_weight, self.new.to(self.base_weight.dtype)], 0)

    @property
    def embedding_dim(self) -> int:
        return self.base_weight.shape[1]

    @property
    def num_embeddings(self) -> int:
        return self.num_base + self.new.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


def add_tokens(tokenizer, text_encoder, class_names: list[str], init_words: dict[str, str] | None = None) -> tuple[list[str], SCEEmbedding]:
    """Add S* and one S^ per class to the tokenizer, and swap the text encoder's
    token embedding for an `SCEEmbedding`. New rows start at the embedding of an
    init word ("electroluminescence" for the style, the class name for a class) as
    in textual inversion. Returns the new tokens (style first) and the module."""
    tokens = [STYLE_TOKEN] + [class_token(n) for n in class_names]
    present = [t for t in tokens if t in tokenizer.get_vocab()]
    if present:
        raise ValueError(f"tokens already in the tokenizer: {present}")
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    base = text_encoder.get_input_embeddings()
    if isinstance(base, SCEEmbedding):
        raise ValueError("the text encoder already has SCE tokens")
    if ids != list(range(base.weight.shape[0], base.weight.shape[0] + len(tokens))):
        raise ValueError(f"unexpected token ids for the new tokens: {ids}")
    words = {STYLE_TOKEN: "electroluminescence"} | {class_token(n): re.sub(r"[_-]+", " ", n) for n in class_names}
    words |= {class_token(k): v for k, v in (init_words or {}).items()}
    init = torch.stack([_word_embedding(tokenizer, base.weight, words[t]) for t in tokens])
    emb = SCEEmbedding(base, len(tokens), init)
    text_encoder.set_input_embeddings(emb)
    return tokens, emb


def _word_embedding(tokenizer, table: torch.Tensor, word: str) -> torch.Tensor:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    ids = [i for i in ids if i < table.shape[0]] or [tokenizer.convert_tokens_to_ids("a</w>")]
    return table[ids].detach().mean(0)


def token_indices(tokenizer, prompt: str, token: str) -> list[int]:
    """Positions of `token` in the tokenized prompt (with the start token at 0)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    return [i for i, t in enumerate(ids) if t == tid]


def word_indices(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions of the (possibly multi-token) `word` in the tokenized prompt."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    sub = tokenizer(word, add_special_tokens=False).input_ids
    for i in range(1, len(ids) - len(sub) + 1):
        if ids[i : i + len(sub)] == sub:
            return list(range(i, i + len(sub)))
    return []
