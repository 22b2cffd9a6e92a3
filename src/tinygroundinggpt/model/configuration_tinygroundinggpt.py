"""Configuration of TinyGroundingGPT: CLIP vision + DINOv2 + Qwen2 sub-configs and the glue between them."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, CLIPVisionConfig, Dinov2Config, PreTrainedConfig, Qwen2Config

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _sub(cfg: Any, cls: type[PreTrainedConfig]) -> PreTrainedConfig:
    if cfg is None:
        return cls()
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        model_type = cfg.pop("model_type", None)
        if model_type and model_type != cls.model_type:
            return AutoConfig.for_model(model_type, **cfg)
        return cls(**cfg)
    return cfg


class TinyGroundingGPTConfig(PreTrainedConfig):
    r"""Configuration of a TinyGroundingGPT model.

    Args:
        clip_config: CLIP *vision* tower config (``CLIPVisionConfig``).
        dino_config: DINOv2 config (``Dinov2Config``).
        text_config: the LLM config (``Qwen2Config`` for the paper's Qwen2.5 models).
        clip_feature_layer: index into CLIP's ``hidden_states``; the paper uses the second-to-last layer (-2),
            which is the output of encoder layer N-1 (CLIP has no final norm on patch tokens there).
        dino_feature_layer: index into DINOv2's ``hidden_states`` (-1 = the last layer, as the paper).
        dino_final_norm: apply DINOv2's final LayerNorm to that layer. With ``dino_feature_layer=-1`` and
            ``True`` the features equal ``Dinov2Model(...).last_hidden_state`` (after the final LayerNorm);
            ``hidden_states[-1]`` alone is *before* it.
        use_dino: ``False`` gives the CLIP-only ablation (paper Table 10).
        image_size: side of the square image both encoders see (after pad-to-square and resize).
        object_grid: object-image features are average-pooled to ``object_grid``×``object_grid`` tokens
            (``None`` keeps the full patch grid).
        projector_layernorm: LayerNorm on the projector input (off for the paper presets).
        projector_output_norm: LayerNorm on the projector output, its gain initialised so visual tokens start
            at the LLM's mean text-embedding norm. Small models trained for minutes otherwise grow visual
            norms far past the text's while the projector's gradients vanish (the LLM learns to ignore
            the image); off for the paper presets.
        image_token_id / object_token_id: ids of ``<image>`` and ``<object>`` in the tokenizer.
    """

    model_type = "tinygroundinggpt"
    sub_configs = {"clip_config": CLIPVisionConfig, "dino_config": Dinov2Config, "text_config": AutoConfig}

    def __init__(
        self,
        clip_config: dict | CLIPVisionConfig | None = None,
        dino_config: dict | Dinov2Config | None = None,
        text_config: dict | PreTrainedConfig | None = None,
        clip_feature_layer: int = -2,
        dino_feature_layer: int = -1,
        dino_final_norm: bool = True,
        use_dino: bool = True,
        image_size: int = 336,
        clip_image_mean: tuple[float, ...] = CLIP_MEAN,
        clip_image_std: tuple[float, ...] = CLIP_STD,
        dino_image_mean: tuple[float, ...] = IMAGENET_MEAN,
        dino_image_std: tuple[float, ...] = IMAGENET_STD,
        object_grid: int | None = None,
        projector_hidden_act: str = "gelu",
        projector_layernorm: bool = False,
        projector_output_norm: bool = False,
        freeze_vision_tower: bool = True,
        image_token_id: int | None = None,
        object_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.clip_config = _sub(clip_config, CLIPVisionConfig)
        self.dino_config = _sub(dino_config, Dinov2Config)
        self.text_config = _sub(text_config, Qwen2Config)
        self.clip_feature_layer = clip_feature_layer
        self.dino_feature_layer = dino_feature_layer
        self.dino_final_norm = dino_final_norm
        self.use_dino = use_dino
        self.image_size = image_size
        self.clip_image_mean = list(clip_image_mean)
        self.clip_image_std = list(clip_image_std)
        self.dino_image_mean = list(dino_image_mean)
        self.dino_image_std = list(dino_image_std)
        self.object_grid = object_grid
        self.projector_hidden_act = projector_hidden_act
        self.projector_layernorm = projector_layernorm
        self.projector_output_norm = projector_output_norm
        self.freeze_vision_tower = freeze_vision_tower
        self.image_token_id = image_token_id
        self.object_token_id = object_token_id
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Patches per side of the image grid (both encoders must agree; checked in the model)."""
        return self.image_size // self.clip_config.patch_size

    @property
    def image_seq_length(self) -> int:
        return self.grid_size**2

    @property
    def object_seq_length(self) -> int:
        g = self.object_grid or self.grid_size
        return g * g

    @property
    def vision_feature_size(self) -> int:
        return self.clip_config.hidden_size + (self.dino_config.hidden_size if self.use_dino else 0)
