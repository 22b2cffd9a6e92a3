"""Python API: image + question in, answer text + boxes in the original image's pixels out.

```python
from tinygroundinggpt.api import TinyGroundingGPTPipeline
pipe = TinyGroundingGPTPipeline.from_pretrained("path/to/checkpoint")
pred = pipe.predict("photo.jpg", "Output the coordinate of the dog on the left")
pred.text, pred.boxes          # boxes: [(x1, y1, x2, y2), ...] in photo.jpg's pixels
```
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.images import load_image
from tinygroundinggpt.model import TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor
from tinygroundinggpt.model.processing_tinygroundinggpt import TruncationError

ImageLike = str | Path | bytes | Image.Image


class AnswerStream(Iterator):
    """What :meth:`TinyGroundingGPTPipeline.stream` returns: iterate for the pieces. ``close`` may be called from any
    thread, also while another thread waits for the next piece (a server whose client went away): the generation
    stops at its next token."""

    def __init__(self, pieces: Iterator[str | Prediction], closed: threading.Event) -> None:
        self._pieces, self._closed = pieces, closed

    def __next__(self) -> str | Prediction:
        return next(self._pieces)

    def close(self) -> None:
        self._closed.set()
        try:
            self._pieces.close()  # type: ignore[attr-defined]
        except ValueError:  # being iterated in another thread right now: it ends on its own once generation stops
            pass


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes


def _check_options(stop: Sequence[str] | None, seed: int | None) -> None:
    """Checked before generating: a stream must raise before its first piece."""
    if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop)):
        raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ValueError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {seed}")


def _first_stop(text: str, stop: Sequence[str] | None) -> int | None:
    """Where the first of the ``stop`` strings begins in ``text`` (None when none is in it)."""
    found = [i for i in (text.find(s) for s in stop or ()) if i >= 0]
    return min(found) if found else None


@dataclass
class Prediction:
    """A model answer with every box it wrote, converted from the model frame to the user's frames, and the
    token counts an OpenAI-style ``usage`` reports."""

    text: str
    boxes: list[bx.Box] = field(default_factory=list)  # original-image pixels
    boxes_norm: list[bx.Box] = field(default_factory=list)  # normalised to the original width/height
    width: int = 0  # 0 when the prompt had no image
    height: int = 0
    prompt_tokens: int = 0  # the LLM's input, image and object placeholder tokens included
    completion_tokens: int = 0  # the end-of-turn token included when the model wrote one
    finished: bool = True  # False when ``max_new_tokens`` cut the answer off

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "boxes": [list(b) for b in self.boxes],
            "boxes_norm": [list(b) for b in self.boxes_norm],
            "width": self.width,
            "height": self.height,
        }


def answer_boxes(text: str, width: int, height: int) -> tuple[list[bx.Box], list[bx.Box]]:
    """Boxes written by the model (model frame) → (pixel boxes, normalised boxes) of the original image. Four numbers
    outside [0, 1] are no box in the model frame and are left out (:func:`~tinygroundinggpt.boxes.in_model_frame`);
    a box in the padding beside the image clamps to the image's edge, with no area."""
    pixel = [bx.model_to_pixel(b, width, height) for b in bx.model_frame_boxes(text)]
    return pixel, [bx.pixel_to_norm(b, width, height) for b in pixel]


class TinyGroundingGPTPipeline:
    """Batched inference around a model and its processor. One generation runs at a time (a lock around the
    model's ``generate``), so a server or a web demo may share one pipeline between request threads."""

    def __init__(
        self,
        model: TinyGroundingGPTForConditionalGeneration,
        processor: TinyGroundingGPTProcessor,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        if device is None:
            device = "cuda" if torch.cuda.is_available() else next(model.parameters()).device
        self.device = torch.device(device)
        self.model.to(self.device)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, dtype: torch.dtype | None = None
    ) -> TinyGroundingGPTPipeline:
        if dtype is None:  # checkpoints may ship in bf16; CPUs compute fp32 faster and exactly
            on_gpu = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
            dtype = torch.bfloat16 if on_gpu else torch.float32
        model = TinyGroundingGPTForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
        processor = TinyGroundingGPTProcessor.from_pretrained(str(path))
        return cls(model, processor, device)

    def generate_batch(
        self,
        images: Sequence[ImageLike | None],
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        boxes: list[Sequence[Sequence[float]]] | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """One answer per (image, prompt); greedy unless ``do_sample=True`` is passed."""
        return [g.text for g in self.generate_batch_detailed(images, prompts, max_new_tokens, boxes, **generate_kwargs)]

    def generate_batch_detailed(
        self,
        images: Sequence[ImageLike | None],
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        boxes: list[Sequence[Sequence[float]]] | None = None,
        *,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        fit_context: bool = False,
        **generate_kwargs: Any,
    ) -> list[Prediction]:
        """:meth:`generate_batch` as :class:`Prediction` s: boxes in each image's frames, token counts, and
        whether each answer ended on its own.

        ``stop``: strings that end an answer where one first appears, left out of it (OpenAI's ``stop``); ``seed``
        makes sampling repeatable. A prompt that leaves fewer than ``max_new_tokens`` of the LLM's context raises
        :class:`TruncationError`, as one over the processor's ``max_length`` does, unless ``fit_context``: then the
        answer may take what the context leaves (a limit the caller did not choose, as a server's default)."""
        _check_options(stop, seed)
        loaded, batch, max_new_tokens = self._prepare(images, prompts, boxes, max_new_tokens, fit_context)
        out = self._generate(batch, max_new_tokens, stop=stop, seed=seed, **generate_kwargs)
        return self._predictions(out, batch, loaded, stop)

    def stream(
        self,
        image: ImageLike | None,
        prompt: str,
        max_new_tokens: int = 64,
        boxes: Sequence[Sequence[float]] | None = None,
        *,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        fit_context: bool = False,
        **generate_kwargs: Any,
    ) -> AnswerStream:
        """One answer as it is generated: its text in pieces, then its :class:`Prediction`. The image and prompt are
        read and checked before this returns, so a bad input raises here, not midway through the stream; closing
        the stream early stops the generation. ``stop``, ``seed`` and ``fit_context`` as in
        :meth:`generate_batch_detailed`; text that could begin a stop string is held back until it cannot."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        _check_options(stop, seed)
        loaded, batch, max_new_tokens = self._prepare(
            [image], [prompt], None if boxes is None else [boxes], max_new_tokens, fit_context
        )
        hold = max(map(len, stop)) - 1 if stop else 0
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        closed = threading.Event()

        class _Closed(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), closed.is_set(), dtype=torch.bool, device=input_ids.device)

        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["out"] = self._generate(
                    batch, max_new_tokens, stop=stop, seed=seed, streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Closed()]), **generate_kwargs,
                )  # fmt: skip
            except BaseException as exc:  # handed to the reader, which would otherwise wait forever
                outcome["error"] = exc
                streamer.end()

        def pieces() -> Iterator[str | Prediction]:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            held = ""
            try:
                for text in streamer:
                    held += text
                    cut = _first_stop(held, stop)
                    if cut is not None:
                        held = held[:cut]
                        break
                    if len(held) > hold:
                        yield held[: len(held) - hold]
                        held = held[len(held) - hold :]
                if held:
                    yield held
            finally:
                closed.set()  # a reader that stopped early, or a stop string, stops the generation
                worker.join()
            if "error" in outcome:
                raise outcome["error"]
            yield self._predictions(outcome["out"], batch, loaded, stop)[0]

        return AnswerStream(pieces(), closed)

    def _prepare(
        self,
        images: Sequence[ImageLike | None],
        prompts: Sequence[str],
        boxes: list[Sequence[Sequence[float]]] | None,
        max_new_tokens: int,
        fit_context: bool = False,
    ) -> tuple[list[Image.Image | None], dict[str, torch.Tensor], int]:
        """The images loaded, the batch, and how many new tokens it may have."""
        loaded = [None if img is None else load_image(img) for img in images]  # the processor keeps these as they are
        batch = self.processor(list(prompts), loaded, boxes=boxes)
        context = getattr(self.model.config.text_config, "max_position_embeddings", None)
        n_prompt = batch["input_ids"].shape[1]
        if fit_context and context is not None:
            max_new_tokens = min(max_new_tokens, max(context - n_prompt, 1))
        if context is not None and n_prompt + max_new_tokens > context:
            # past its trained positions the LLM writes noise; OpenAI-style servers refuse such a request
            raise TruncationError(
                f"the prompt has {n_prompt} tokens and up to {max_new_tokens} new ones were asked for: more than the "
                f"model's context of {context} tokens"
            )
        return loaded, {k: v.to(self.device) for k, v in batch.items()}, max_new_tokens

    def _stops(self) -> list[int]:
        """The end of turn, the tokenizer's eos (a base model may still write it) and the checkpoint's own stop ids
        (Qwen2.5-Instruct's generation config lists <|endoftext|> beside <|im_end|>)."""
        tok, eot = self.processor.tokenizer, self.processor.end_of_turn_id
        saved = self.model.language_model.generation_config.eos_token_id
        saved = [] if saved is None else [saved] if isinstance(saved, int) else list(saved)
        return list(dict.fromkeys([eot, tok.eos_token_id, *saved]))

    @torch.no_grad()  # grad mode is per thread: stream() generates in a thread of its own
    def _generate(
        self,
        batch: dict[str, torch.Tensor],
        max_new_tokens: int,
        *,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        generate_kwargs.setdefault("do_sample", False)
        if stop:  # transformers stops a row once its text holds one; _predictions cuts the text there
            generate_kwargs.update(stop_strings=list(stop), tokenizer=self.processor.tokenizer)
        with self._lock:  # one generation at a time
            if seed is not None:  # under the lock: no other generation draws from the generator in between
                torch.manual_seed(seed)
            return self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                eos_token_id=self._stops(),
                **generate_kwargs,
            )

    def _predictions(
        self,
        out: torch.Tensor,
        batch: dict[str, torch.Tensor],
        loaded: list[Image.Image | None],
        stop: Sequence[str] | None = None,
    ) -> list[Prediction]:
        stops = self._stops()
        pad = self.processor.tokenizer.pad_token_id
        new = out[:, batch["input_ids"].shape[1] :]
        texts = self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        result = []
        rows = zip(new.tolist(), batch["attention_mask"].sum(1).tolist(), texts, loaded, strict=True)
        for row, n_prompt, text, img in rows:
            # Rows that finished early are padded after their end-of-turn token; the rest ran to the limit.
            ends = [i for i, t in enumerate(row) if t in stops]
            finished = bool(ends)
            n_new = ends[0] + 1 if finished else len(row)
            cut = _first_stop(text, stop)
            if cut is not None:  # a stop string ended it
                text, finished = text[:cut], True
                if not ends:  # padded after the token that completed the stop string
                    while n_new and row[n_new - 1] == pad:
                        n_new -= 1
            text = text.strip()
            width, height = (0, 0) if img is None else img.size
            pixel, norm = answer_boxes(text, width, height) if img is not None else ([], [])
            result.append(Prediction(text, pixel, norm, width, height, n_prompt, n_new, finished))
        return result

    def predict(self, image: ImageLike, question: str, max_new_tokens: int = 64, **kwargs: Any) -> Prediction:
        return self.generate_batch_detailed([image], [question], max_new_tokens=max_new_tokens, **kwargs)[0]
