"""Processor: images → [0, 1] square tensors, conversations → token ids + labels for TinyGroundingGPT.

* The global image is padded to a centred square with the CLIP mean colour and resized; the model
  normalises it per encoder.
* ``<box:i>`` in text becomes the box in the model frame (:mod:`tinygroundinggpt.boxes`); ``<object:i>``
  becomes an ``<object>`` token backed by the zoomed crop of box ``i``.
* The chat template is the tokenizer's own (Qwen2.5 ChatML); labels cover exactly the assistant replies
  (+ the end-of-turn token), located by rendering the template on conversation prefixes — never by
  re-tokenising pieces, which is where LLaVA-style "tokenization mismatch" comes from.
* ``<image>``/``<object>`` are expanded to their feature-token counts *after* tokenisation, and
  truncation never cuts through such a run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.data.format import (
    BOX_REF_RE,
    IMAGE_TOKEN,
    OBJECT_REF_RE,
    OBJECT_TOKEN,
    Sample,
    SampleError,
    reference_problem,
)
from tinygroundinggpt.images import crop_box, load_image, pad_to_square

IGNORE_INDEX = -100


END_OF_TURN = "<|im_end|>"


class TruncationError(ValueError):
    """A conversation that cannot be cut to ``max_length`` without losing everything it is for."""


# A prompt longer than this many characters per token of ``max_length`` is refused before it is tokenised (a token
# spans a few characters; the longest, runs of spaces or of one letter, a few dozen): tokenising megabytes of text
# costs seconds and gigabytes only to be refused after.
MAX_CHARS_PER_TOKEN = 32


@dataclass
class Encoded:
    """One processed conversation, before batching."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor  # [n_images, 3, S, S]
    object_pixel_values: torch.Tensor  # [n_objects, 3, S, S]
    object_boxes: list[bx.Box] = field(default_factory=list)  # pixel boxes of the objects, in order
    # Characters (start, end) of each labelled token within its assistant reply, in order; the end-of-turn
    # token lies just past its reply's end. Tells which answer tokens are part of a box (interpretability).
    reply_offsets: list[tuple[int, int]] = field(default_factory=list)


class TinyGroundingGPTProcessor(ProcessorMixin):
    """Tokenizer + image handling for TinyGroundingGPT (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Any = None,
        chat_template: str | None = None,
        image_size: int = 336,
        image_seq_length: int = 576,
        object_seq_length: int = 576,
        pad_fill: Sequence[int] = (122, 116, 104),
        image_position: str = "first",
        object_margin: float = 0.0,
        object_jitter: float = 0.0,
        max_length: int = 2048,
        system_prompt: str | None = None,
        **kwargs: Any,
    ) -> None:
        if image_position not in ("first", "last", "as_written"):
            raise ValueError(f"image_position must be 'first', 'last' or 'as_written', got {image_position!r}")
        self.image_size = image_size
        self.image_seq_length = image_seq_length
        self.object_seq_length = object_seq_length
        self.pad_fill = tuple(int(v) for v in pad_fill)
        self.image_position = image_position
        self.object_margin = object_margin
        self.object_jitter = object_jitter
        self.max_length = max_length
        self.system_prompt = system_prompt
        if chat_template is None and tokenizer is not None:
            chat_template = tokenizer.chat_template
        super().__init__(tokenizer, chat_template=chat_template, **kwargs)

    # --- token ids ----------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def object_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(OBJECT_TOKEN)

    # --- images -------------------------------------------------------------------------------------
    def image_to_tensor(self, img: Image.Image) -> torch.Tensor:
        """Pad to a centred square (mean colour), resize to ``image_size``, scale to [0, 1]."""
        square = pad_to_square(img, self.pad_fill).resize((self.image_size, self.image_size), Image.BICUBIC)
        arr = np.asarray(square, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def object_to_tensor(
        self, img: Image.Image, box: Sequence[float], rng: random.Random | None = None
    ) -> torch.Tensor:
        """Crop a pixel box, zoom it to the encoder resolution. ``rng`` turns on train-time augmentation."""
        box = bx.validate_pixel_box(box, img.width, img.height, what="object box")
        if rng is not None:
            if self.object_margin > 0:
                box = bx.expand_box(box, rng.uniform(0, self.object_margin), img.width, img.height)
            if self.object_jitter > 0:
                box = bx.jitter_box(box, rng, self.object_jitter, img.width, img.height)
        return self.image_to_tensor(crop_box(img, box))

    # --- text ---------------------------------------------------------------------------------------
    def render_messages(
        self, messages: list[dict[str, str]], pixel_boxes: Sequence[Sequence[float]], width: int, height: int
    ) -> tuple[list[dict[str, str]], list[int]]:
        """Replace ``<box:i>`` by model-frame box text and ``<object:i>`` by ``<object>``.

        Returns the rendered messages and the box index of every ``<object>`` in order of appearance.
        """
        model_boxes = [bx.pixel_to_model(b, width, height) for b in pixel_boxes] if pixel_boxes else []
        object_order: list[int] = []
        out = []
        for m in messages:
            text = BOX_REF_RE.sub(lambda mt: bx.format_box(model_boxes[int(mt.group(1))]), m["content"])

            def _obj(mt: Any) -> str:
                object_order.append(int(mt.group(1)))
                return OBJECT_TOKEN

            text = OBJECT_REF_RE.sub(_obj, text)
            out.append({"role": m["role"], "content": text})
        return self._place_image(out), object_order

    def _place_image(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.image_position == "as_written":
            return messages
        for m in messages:
            if m["role"] == "user" and IMAGE_TOKEN in m["content"]:
                rest = m["content"].replace(IMAGE_TOKEN, "", 1).strip()
                m["content"] = f"{IMAGE_TOKEN}\n{rest}" if self.image_position == "first" else f"{rest}\n{IMAGE_TOKEN}"
                break
        return messages

    @property
    def end_of_turn_token(self) -> str:
        """What closes a reply: ChatML's ``<|im_end|>`` where the tokenizer has it (an instruct Qwen2.5's eos, but a
        base Qwen2.5's eos is ``<|endoftext|>``, which the template never writes), else the eos token."""
        tok = self.tokenizer
        found = tok.convert_tokens_to_ids(END_OF_TURN)
        return END_OF_TURN if isinstance(found, int) and found != tok.unk_token_id else tok.eos_token

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.end_of_turn_token)

    def _template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def tokenize_conversation(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """Template → ids, with labels on assistant replies and their end-of-turn token only, and each labelled
        token's characters within its reply (:attr:`Encoded.reply_offsets`)."""
        full = self._template(messages, add_generation_prompt)
        eos = self.end_of_turn_token
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self._template(messages[:k], add_generation_prompt=True)
            if not full.startswith(prefix) or not full.startswith(m["content"], len(prefix)):
                raise ValueError("the chat template does not render conversation prefixes as prefixes")
            start = len(prefix)
            end = start + len(m["content"])
            if eos and full.startswith(eos, end):
                end += len(eos)
            spans.append((start, end))
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [IGNORE_INDEX] * len(ids)
        offsets = []
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            start = next((s for s, e in spans if b > a and s <= a and b <= e), None)
            if start is not None:
                labels[i] = ids[i]
                offsets.append((a - start, b - start))
        return ids, labels, offsets

    def _expand(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """Repeat each placeholder to its token count; return the runs as (start, end) for truncation."""
        counts = {self.image_token_id: self.image_seq_length, self.object_token_id: self.object_seq_length}
        out_ids, out_labels, runs = [], [], []
        for t, lab in zip(ids, labels, strict=True):
            n = counts.get(t)
            if n is None:
                out_ids.append(t)
                out_labels.append(lab)
            else:
                runs.append((len(out_ids), len(out_ids) + n))
                out_ids.extend([t] * n)
                out_labels.extend([IGNORE_INDEX] * n)
        return out_ids, out_labels, runs

    # --- whole samples ------------------------------------------------------------------------------
    def encode(
        self,
        messages: list[dict[str, str]],
        image: Image.Image | None = None,
        pixel_boxes: Sequence[Sequence[float]] = (),
        *,
        add_generation_prompt: bool = False,
        rng: random.Random | None = None,
    ) -> Encoded:
        """One conversation (with ``<image>``, ``<box:i>``, ``<object:i>``) → :class:`Encoded`.

        ``rng`` enables train-time object augmentation; leave it ``None`` at inference. ``pixel_boxes`` must lie
        inside the image as given: an inverted or outside box is an error, not repaired into another box.
        """
        if image is None:
            if any(BOX_REF_RE.search(m["content"]) or OBJECT_REF_RE.search(m["content"]) for m in messages):
                raise ValueError("the conversation has <box:i> / <object:i> but no image was given")
            rendered, object_order = self.render_messages(messages, (), 0, 0)
        else:
            width, height = image.size
            pixel_boxes = [
                bx.validate_pixel_box(b, width, height, what=f"box {i} of the {width}x{height} image")
                for i, b in enumerate(pixel_boxes)
            ]
            rendered, object_order = self.render_messages(messages, pixel_boxes, width, height)
        ids, labels, offsets = self.tokenize_conversation(rendered, add_generation_prompt)
        # Counted on the tokens, not the text: a literal <image>/<object> (in any turn or the system prompt) is a
        # placeholder too, and one with no image behind it would fail only in the model's forward.
        n_images = ids.count(self.image_token_id)
        if n_images and image is None:
            raise ValueError("the conversation has <image> but no image was given")
        if n_images > 1:
            raise ValueError(f"the conversation has {n_images} <image> placeholders; one global image is supported")
        if image is not None and not n_images:  # the image would be dropped without a word
            if any(BOX_REF_RE.search(m["content"]) for m in messages):
                raise ValueError(
                    "the conversation has <box:i> but no <image>: its boxes would be in the frame of an image the "
                    "model does not see"
                )
            if not object_order:
                raise ValueError("an image was given but the conversation has no <image> or <object:i> to show it")
        n_objects = ids.count(self.object_token_id)
        if n_objects != len(object_order):
            raise ValueError(
                f"the conversation has {n_objects} <object> placeholders but {len(object_order)} object images "
                "(<object:i>); a literal <object> in text has no object image"
            )
        ids, labels, runs = self._expand(ids, labels)
        if len(ids) > self.max_length:
            ids, labels, runs = self._truncate(ids, labels, runs)
        n_img_kept = sum(1 for start, _ in runs if ids[start] == self.image_token_id)
        n_obj_kept = sum(1 for start, _ in runs if ids[start] == self.object_token_id)
        object_order = object_order[:n_obj_kept]
        s = self.image_size
        pixel_values = (
            self.image_to_tensor(image).unsqueeze(0) if n_img_kept else torch.zeros(0, 3, s, s, dtype=torch.float32)
        )
        obj_boxes = [tuple(pixel_boxes[i]) for i in object_order]
        object_pixel_values = (
            torch.stack([self.object_to_tensor(image, b, rng) for b in obj_boxes])
            if obj_boxes
            else torch.zeros(0, 3, s, s, dtype=torch.float32)
        )
        offsets = offsets[: sum(lab != IGNORE_INDEX for lab in labels)]  # truncation drops labels from the end
        return Encoded(ids, labels, pixel_values, object_pixel_values, obj_boxes, offsets)  # type: ignore[arg-type]

    def _truncate(
        self, ids: list[int], labels: list[int], runs: list[tuple[int, int]]
    ) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        cut = self.max_length
        for start, end in runs:
            if start < cut < end:  # never split a run: drop it whole
                cut = start
        if all(lab == IGNORE_INDEX for lab in labels):
            # A prompt to answer (no labels): cutting it would drop the image or the turn to answer and the model
            # would silently continue the user's text.
            raise TruncationError(f"the prompt has {len(ids)} tokens, more than max_length {self.max_length}")
        if all(lab == IGNORE_INDEX for lab in labels[:cut]):
            raise TruncationError(
                f"max_length {self.max_length} cuts off every assistant token of a {len(ids)}-token conversation"
            )
        return ids[:cut], labels[:cut], [(s, e) for s, e in runs if e <= cut]

    def encode_sample(
        self, sample: Sample, image_root: str | None = None, *, rng: random.Random | None = None
    ) -> Encoded:
        """A stored :class:`Sample` (image path relative to ``image_root``) → :class:`Encoded`."""
        image = None
        if sample.image is not None:
            path = Path(image_root) / sample.image if image_root else Path(sample.image)
            image = load_image(path, exif_orientation=False)  # the frame its boxes were written in
            # the stored size is the frame the boxes were written in: another image puts them elsewhere
            if sample.width is not None and (sample.width, sample.height) != image.size:
                raise SampleError(
                    f"{path}: the sample says {sample.width}x{sample.height} but the image is "
                    f"{image.width}x{image.height}"
                )
            sample.check_boxes(image.width, image.height)
        return self.encode(sample.messages, image, sample.boxes, rng=rng)

    # --- batching -----------------------------------------------------------------------------------
    def collate(self, items: Sequence[Encoded], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a list of :class:`Encoded` into a batch (left padding for generation)."""
        pad_id = self.tokenizer.pad_token_id
        longest = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for i, e in enumerate(items):
            n = len(e.input_ids)
            sl = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
            ids[i, sl] = torch.tensor(e.input_ids)
            labels[i, sl] = torch.tensor(e.labels)
            mask[i, sl] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "pixel_values": torch.cat([e.pixel_values for e in items]),
            "object_pixel_values": torch.cat([e.object_pixel_values for e in items]),
        }

    def user_turn(self, text: str, *, with_image: bool) -> list[dict[str, str]]:
        """A single-turn prompt as messages; ``with_image`` adds ``<image>`` unless the text has its own (it is
        then placed per ``image_position``)."""
        if with_image and IMAGE_TOKEN not in text:
            text = f"{IMAGE_TOKEN}\n{text}"
        return [{"role": "user", "content": text}]

    def __call__(
        self,
        text: str | list[str],
        images: Image.Image | list[Image.Image | None] | None = None,
        boxes: list[Sequence[Sequence[float]]] | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Single-turn prompts → a left-padded generation batch.

        Each prompt is one user turn; an image is placed per ``image_position`` when the prompt has no
        ``<image>`` of its own. ``boxes[i]`` are pixel boxes that the prompt's ``<box:j>``/``<object:j>`` name.
        """
        texts = [text] if isinstance(text, str) else list(text)
        imgs = images if isinstance(images, list) else [images] * len(texts)
        if len(imgs) != len(texts):
            raise ValueError(f"{len(texts)} prompts but {len(imgs)} images")
        items = []
        for i, (t, img) in enumerate(zip(texts, imgs, strict=True)):
            if len(t) > self.max_length * MAX_CHARS_PER_TOKEN:
                raise TruncationError(
                    f"prompt {i} has {len(t)} characters, more than max_length {self.max_length} tokens can hold "
                    f"(at most {self.max_length * MAX_CHARS_PER_TOKEN} are read)"
                )
            problem = reference_problem(t, len(boxes[i]) if boxes else 0, img is not None)
            if problem:  # found here, not as an IndexError deep in rendering
                raise ValueError(f"prompt {i} ({t[:80]!r}): {problem}")
            items.append(
                self.encode(
                    self.user_turn(t, with_image=img is not None),
                    None if img is None else load_image(img),
                    boxes[i] if boxes else (),
                    add_generation_prompt=True,
                )
            )
        batch = self.collate(items, padding_side="left")
        batch.pop("labels")
        return batch

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)
