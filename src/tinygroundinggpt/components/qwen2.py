"""Tiny Qwen2: a ``Qwen2ForCausalLM`` and its tokenizer, pretrained on synthetic-world text.

Saved as Qwen/Qwen2.5-1.5B-Instruct is published: ``config.json``, ``generation_config.json``,
``model.safetensors`` (bf16, tied embeddings) and the tokenizer with the ChatML chat template, so
``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` load it offline.

A document is plain text or a list of chat messages; dialogues are rendered with the tokenizer's own
chat template, so the model learns exactly the layout stage 1 will show it. Documents are joined with
``<|endoftext|>`` and cut into fixed-length blocks (GPT-style packing: no padding is wasted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from tinygroundinggpt.components.tokenizer import EOS, IM_END, train_tokenizer
from tinygroundinggpt.components.training import save_model_16bit, seed_everything, train_steps

Document = str | list[dict[str, str]]


@dataclass
class Qwen2Recipe:
    """Sizes and optimisation of the tiny Qwen2; the defaults are what the shipped checkpoint used."""

    steps: int = 600
    batch_size: int = 32
    block_size: int = 128
    lr: float = 3e-3
    vocab_size: int = 1024
    hidden: int = 160
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 448


@dataclass
class TrainedQwen2:
    model: Qwen2ForCausalLM
    tokenizer: PreTrainedTokenizerFast
    losses: list[float]

    def save(self, out: str | Path) -> None:
        save_model_16bit(self.model, out)
        self.model.generation_config.save_pretrained(out)
        self.tokenizer.save_pretrained(out)


def render(doc: Document, tokenizer: PreTrainedTokenizerFast) -> str:
    """A document as the text the model reads (dialogues through the chat template)."""
    return doc if isinstance(doc, str) else tokenizer.apply_chat_template(doc, tokenize=False)


def pack(docs: Sequence[Document], tokenizer: PreTrainedTokenizerFast, block_size: int) -> torch.Tensor:
    """Token ids of all documents, each followed by ``<|endoftext|>``, as ``(n_blocks, block_size)``."""
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for row in tokenizer([render(d, tokenizer) for d in docs]).input_ids:
        ids.extend(row)
        ids.append(eos_id)
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise ValueError(f"the corpus has {len(ids)} tokens, fewer than one block of {block_size}")
    return torch.tensor(ids[: n_blocks * block_size]).view(n_blocks, block_size)


def qwen2_config(recipe: Qwen2Recipe, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    eos_id, im_end_id = tokenizer.convert_tokens_to_ids([EOS, IM_END])
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        # Qwen2.5-Instruct's ids: bos/pad = <|endoftext|>, eos = <|im_end|> (end of an assistant turn).
        bos_token_id=eos_id,
        eos_token_id=im_end_id,
        pad_token_id=eos_id,
    )


def train_qwen2(docs: Sequence[Document], *, seed: int, recipe: Qwen2Recipe | None = None) -> TrainedQwen2:
    """Train the tokenizer on ``docs`` then the language model on them."""
    recipe = recipe or Qwen2Recipe()
    if not docs:
        raise ValueError("need at least one document")
    gen = seed_everything(seed)
    # The chat template needs a tokenizer object to render with; a first one trained on the raw contents
    # renders the dialogues, and the real one is trained on the rendered text so the template's own
    # words ("system", "assistant", the default system prompt) get merges too.
    contents = [d if isinstance(d, str) else "\n".join(m["content"] for m in d) for d in docs]
    draft = train_tokenizer(contents, vocab_size=recipe.vocab_size)
    tokenizer = train_tokenizer([render(d, draft) for d in docs], vocab_size=recipe.vocab_size)
    blocks = pack(docs, tokenizer, recipe.block_size)
    config = qwen2_config(recipe, tokenizer)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id, config.pad_token_id],
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )
    model.train()

    def loss_at(step: int) -> torch.Tensor:
        batch = blocks[torch.randint(len(blocks), (recipe.batch_size,), generator=gen)]
        return model(input_ids=batch, labels=batch).loss

    losses = train_steps(model.parameters(), loss_at, steps=recipe.steps, lr=recipe.lr, desc="tiny Qwen2")
    model.eval()
    return TrainedQwen2(model, tokenizer, losses)
