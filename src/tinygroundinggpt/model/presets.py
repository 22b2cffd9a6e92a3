"""Model presets and assembly from three pretrained checkpoints.

* Paper sizes (1.5B / 3B / 7B): CLIP ViT-L/14-336 + DINOv2-L/14 + Qwen2.5-Instruct. ``assemble`` loads them by
  Hub id (from the local HF cache) or local path; ``paper_config`` builds the same architecture from
  configs alone (random weights, for benchmarks) without touching the network.
* Tiny sizes: the shipped tiny CLIP / DINOv2 / Qwen2 assembled by path (same code), or fully random
  tiny configs for tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    GenerationConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)
from transformers.utils import cached_file

from tinygroundinggpt.assets import TINY
from tinygroundinggpt.data.format import IMAGE_TOKEN, OBJECT_TOKEN
from tinygroundinggpt.images import mean_fill
from tinygroundinggpt.model.configuration_tinygroundinggpt import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TinyGroundingGPTConfig,
)
from tinygroundinggpt.model.modeling_tinygroundinggpt import TinyGroundingGPTForConditionalGeneration
from tinygroundinggpt.model.processing_tinygroundinggpt import TinyGroundingGPTProcessor

CLIP_ID = "openai/clip-vit-large-patch14-336"
DINO_ID = "facebook/dinov2-large"
PAPER_LLMS = {
    "1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "3b": "Qwen/Qwen2.5-3B-Instruct",
    "7b": "Qwen/Qwen2.5-7B-Instruct",
}
ASSETS = TINY
TINY_COMPONENTS = {"clip": ASSETS / "clip", "dino": ASSETS / "dinov2", "llm": ASSETS / "qwen2"}

# Published architectures, so the paper sizes can be built without downloading anything.
_CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    patch_size=14, image_size=336, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip
_DINO_L = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14,
    image_size=518, layerscale_value=1.0,
)  # fmt: skip
_QWEN25 = {
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip
PAPER_LLM_WIDTHS = {size: spec["hidden_size"] for size, spec in _QWEN25.items()}
# Qwen2.5's tokenizer holds 151,665 tokens; <image> and <object> are added after them.
_QWEN25_PLACEHOLDER_IDS = (151665, 151666)


def paper_config(size: str, *, use_dino: bool = True, object_grid: int | None = None) -> TinyGroundingGPTConfig:
    """The paper's architecture at ``size`` ('1.5b', '3b', '7b') from configs alone (no download)."""
    if size not in _QWEN25:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(_QWEN25)}")
    text = Qwen2Config(max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, **_QWEN25[size])
    return TinyGroundingGPTConfig(
        clip_config=CLIPVisionConfig(**_CLIP_L_336),
        dino_config=Dinov2Config(**_DINO_L),
        text_config=text,
        use_dino=use_dino,
        image_size=336,
        object_grid=object_grid,
        image_token_id=_QWEN25_PLACEHOLDER_IDS[0],
        object_token_id=_QWEN25_PLACEHOLDER_IDS[1],
    )


def add_placeholder_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer (e.g. Qwen2.5's) the ``<image>``/``<object>`` special tokens if it lacks them."""
    missing = [t for t in (IMAGE_TOKEN, OBJECT_TOKEN) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer


def build_processor(
    tokenizer: PreTrainedTokenizerBase, config: TinyGroundingGPTConfig, **kwargs: Any
) -> TinyGroundingGPTProcessor:
    """A processor whose token counts and image size match ``config``."""
    return TinyGroundingGPTProcessor(
        tokenizer,
        image_size=config.image_size,
        image_seq_length=config.image_seq_length,
        object_seq_length=config.object_seq_length,
        pad_fill=mean_fill(tuple(config.clip_image_mean)),  # type: ignore[arg-type]
        **kwargs,
    )


def _image_norm(path: str, default_mean: tuple, default_std: tuple) -> tuple[list[float], list[float]]:
    """Mean/std from a checkpoint's ``preprocessor_config.json`` (the encoder's own normalisation)."""
    resolved = cached_file(path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if resolved is None:
        return list(default_mean), list(default_std)
    cfg = json.loads(Path(resolved).read_text())
    return list(cfg.get("image_mean", default_mean)), list(cfg.get("image_std", default_std))


def assemble(
    clip: str | Path = CLIP_ID,
    dino: str | Path | None = DINO_ID,
    llm: str | Path = PAPER_LLMS["1.5b"],
    *,
    image_size: int | None = None,
    object_grid: int | None = None,
    projector_layernorm: bool = False,
    projector_output_norm: bool = False,
    dtype: torch.dtype | None = None,
    processor_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor]:
    """Build a new TinyGroundingGPT from three pretrained checkpoints (Hub ids or local paths).

    The projector (and any added embedding rows) is freshly initialised from ``seed``, without touching the
    caller's random state; ``dino=None`` gives the CLIP-only ablation. Loading goes through transformers' own
    ``from_pretrained`` (safetensors), so ``HF_HUB_OFFLINE=1`` works with a populated cache or local folders.
    """
    # Unseeded, two runs of one chain started from different projectors and ended far apart (demo.md).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip, llm = str(clip), str(llm)
        language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
        # One dtype for all three: CLIP and DINOv2 are published in fp32, Qwen2.5 in bf16.
        dtype = dtype or language_model.dtype
        clip_model = CLIPVisionModel.from_pretrained(clip, dtype=dtype)
        dino_model = Dinov2Model.from_pretrained(str(dino), dtype=dtype) if dino is not None else None
        # Greedy with the LLM's own stop tokens: an instruct model's published sampling and repetition penalty would
        # otherwise apply to a freshly assembled model (and not after save / load), and a penalty on repeated
        # digits harms box text.
        gen = language_model.generation_config
        language_model.generation_config = GenerationConfig(
            bos_token_id=gen.bos_token_id, eos_token_id=gen.eos_token_id, pad_token_id=gen.pad_token_id
        )
        tokenizer = add_placeholder_tokens(AutoTokenizer.from_pretrained(llm))
        if len(tokenizer) > language_model.get_input_embeddings().num_embeddings:
            language_model.resize_token_embeddings(len(tokenizer))
        clip_mean, clip_std = _image_norm(clip, CLIP_MEAN, CLIP_STD)
        dino_mean, dino_std = (
            _image_norm(str(dino), IMAGENET_MEAN, IMAGENET_STD) if dino else (IMAGENET_MEAN, IMAGENET_STD)
        )
        config = TinyGroundingGPTConfig(
            clip_config=clip_model.config,
            dino_config=dino_model.config if dino_model is not None else None,
            text_config=language_model.config,
            use_dino=dino_model is not None,
            image_size=image_size or clip_model.config.image_size,
            clip_image_mean=clip_mean,
            clip_image_std=clip_std,
            dino_image_mean=dino_mean,
            dino_image_std=dino_std,
            object_grid=object_grid,
            projector_layernorm=projector_layernorm,
            projector_output_norm=projector_output_norm,
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            object_token_id=tokenizer.convert_tokens_to_ids(OBJECT_TOKEN),
        )
        model = TinyGroundingGPTForConditionalGeneration.from_components(config, clip_model, dino_model, language_model)
        return model, build_processor(tokenizer, config, **(processor_kwargs or {}))


def preset_components(preset: str) -> dict[str, Any]:
    """Component checkpoints and assembly options of a preset ('tiny', '1.5b', '3b', '7b')."""
    if preset == "tiny":
        return {
            **TINY_COMPONENTS,
            "object_grid": 4,
            "projector_layernorm": True,
            "projector_output_norm": True,
            "dtype": torch.float32,  # the components ship in bf16; CPU training wants fp32
            "processor_kwargs": {"image_position": "last"},  # the question first: image tokens can read it
        }
    if preset in PAPER_LLMS:
        return {"clip": CLIP_ID, "dino": DINO_ID, "llm": PAPER_LLMS[preset]}
    raise ValueError(f"unknown preset {preset!r}; choose tiny or one of {sorted(PAPER_LLMS)}")


def assemble_preset(
    preset: str, **overrides: Any
) -> tuple[TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor]:
    """Assemble a preset's components (``overrides`` replace checkpoints or options; ``dino=None`` drops DINOv2)."""
    spec = {**preset_components(preset), **overrides}
    if preset == "tiny":
        missing = [
            str(spec[k]) for k in ("clip", "dino", "llm") if spec[k] and not Path(spec[k], "config.json").is_file()
        ]
        if missing:
            raise FileNotFoundError(f"tiny components not found: {missing}; build them with `tgg components all`")
    return assemble(spec.pop("clip"), spec.pop("dino"), spec.pop("llm"), **spec)


def tiny_random(
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    vision_width: int = 32,
    text_width: int = 64,
    layers: int = 2,
    object_grid: int | None = 2,
    use_dino: bool = True,
    seed: int = 0,
) -> tuple[TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor]:
    """A tiny model with random weights around ``tokenizer`` (for tests and benchmarks)."""
    tokenizer = add_placeholder_tokens(tokenizer)
    heads = max(1, vision_width // 16)
    config = TinyGroundingGPTConfig(
        clip_config=CLIPVisionConfig(
            hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=layers,
            num_attention_heads=heads, patch_size=patch_size, image_size=image_size,
        ),
        dino_config=Dinov2Config(
            hidden_size=vision_width, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=2,
            patch_size=patch_size, image_size=image_size,
        ),
        text_config=Qwen2Config(
            hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer), tie_word_embeddings=True,
            max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ),
        use_dino=use_dino,
        image_size=image_size,
        object_grid=object_grid,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        object_token_id=tokenizer.convert_tokens_to_ids(OBJECT_TOKEN),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = TinyGroundingGPTForConditionalGeneration(config)
    return model, build_processor(tokenizer, config)
