"""Run lmms-eval's tasks on TinyGroundingGPT (optional: needs ``pip install lmms-eval``).

lmms-eval does not import third-party models by itself, so hand it an instance::

    from lmms_eval.evaluator import simple_evaluate
    from tinygroundinggpt.eval.lmms_adapter import TinyGroundingGPTLMMs

    results = simple_evaluate(model=TinyGroundingGPTLMMs(pretrained="path/to/ckpt"), tasks=["mmmu_val"])

Importing this module also registers the model as ``tinygroundinggpt`` in lmms-eval's registry for
code that imports it before calling lmms-eval. Generation tasks only: the model is greedy and
single-image, so a request's first image is used; log-likelihood and multi-round requests are refused.
In lmms-eval's box-answer tasks (``*bbox_rec*``: RefCOCO/+/g REC) boxes in answers are rewritten from the model's
frame (the image padded to a square) into lmms-eval's (normalised to the image's own width and height), which its
scorer compares them in; other tasks get the answer as written (four numbers there need not be a box).
Data parallelism is lmms-eval's own (``accelerate launch -m lmms_eval``): each process takes its rank.
"""

from __future__ import annotations

import logging
from typing import Any

try:
    from lmms_eval.api.model import lmms
    from lmms_eval.api.registry import register_model
except ImportError as exc:  # lmms-eval is optional; nothing else in the package imports this module
    raise ImportError("the lmms-eval adapter needs lmms-eval: pip install lmms-eval") from exc

from PIL import Image
from tqdm.auto import tqdm

from tinygroundinggpt.boxes import model_text_to_norm
from tinygroundinggpt.eval.runner import answers_or_refusals
from tinygroundinggpt.images import load_image

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"  # some lmms-eval prompts carry it; our pipeline inserts the image itself
BOX_ANSWER_TASKS = "bbox_rec"  # in the name of every lmms-eval task scored on a box the model writes


def cut_at_stop(text: str, until: str | list[str] | None) -> str:
    """The text up to the first stop string (lmms-eval's ``until``)."""
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


@register_model("tinygroundinggpt")
class TinyGroundingGPTLMMs(lmms):
    def __init__(
        self, pretrained: str, batch_size: int | str = 8, device: str | None = None, max_new_tokens: int = 128, **_: Any
    ) -> None:
        super().__init__()
        from accelerate import PartialState

        from tinygroundinggpt.api import TinyGroundingGPTPipeline

        state = PartialState()
        self._rank, self._world_size = state.process_index, state.num_processes
        self.pretrained = pretrained
        self.pipe = TinyGroundingGPTPipeline.from_pretrained(pretrained, device=device or str(state.device))
        self.batch_size = int(batch_size)
        self.default_max_new_tokens = max_new_tokens

    def _first_image(self, request: Any) -> Image.Image | None:
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        images = [v for v in visuals or [] if isinstance(v, Image.Image)]
        # as stored, as lmms-eval scores it: the pipeline would otherwise turn an image with an EXIF orientation
        return load_image(images[0], exif_orientation=False) if images else None

    def _answers(self, images: list[Image.Image | None], prompts: list[str], max_new_tokens: int) -> list[str]:
        """Task lengths are limits, not needs: an answer gets at most what the model's context leaves. A prompt the
        model cannot take at all answers "" (scored as wrong, with a warning) rather than ending the run."""

        def generate(imgs: list[Image.Image | None], texts: list[str]) -> list[str]:
            return self.pipe.generate_batch(imgs, texts, max_new_tokens=max_new_tokens, fit_context=True)

        answers = []
        for answer in answers_or_refusals(generate, images, prompts):
            if not isinstance(answer, str):
                logger.warning("answered with nothing: %s", answer)
            answers.append(answer if isinstance(answer, str) else "")
        return answers

    def generate_until(self, requests: list[Any]) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        # Requests with the same generation settings share batches; answers return in request order.
        groups: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            gen = req.args[1] or {}
            groups.setdefault(int(gen.get("max_new_tokens", self.default_max_new_tokens)), []).append(i)
        bar = tqdm(total=len(requests), desc="tinygroundinggpt", disable=self.rank != 0)
        for max_new_tokens, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                prompts = [requests[i].args[0].replace(IMAGE_PLACEHOLDER, "").strip() for i in chunk]
                images = [self._first_image(requests[i]) for i in chunk]
                outs = self._answers(images, prompts, max_new_tokens)
                for i, image, out in zip(chunk, images, outs, strict=True):
                    if image is not None and BOX_ANSWER_TASKS in requests[i].args[4]:
                        out = model_text_to_norm(out, image.width, image.height)
                    answers[i] = cut_at_stop(out, (requests[i].args[1] or {}).get("until"))
                bar.update(len(chunk))
        bar.close()
        return [a or "" for a in answers]

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError("TinyGroundingGPTLMMs runs generation tasks only (output_type: generate_until)")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("TinyGroundingGPTLMMs runs single-round generation tasks only")
