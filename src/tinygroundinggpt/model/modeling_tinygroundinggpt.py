"""TinyGroundingGPT: CLIP + DINOv2 patch features, concatenated channel-wise, an MLP projector, a Qwen2 LLM.

The global image (``<image>``) and every object image (``<object>``, a zoomed crop of a box) go through
the same two towers and projector; their features replace the placeholder tokens' embeddings.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModel, Dinov2Model, GenerationConfig, PreTrainedModel
from transformers.activations import ACT2FN

from tinygroundinggpt.model.configuration_tinygroundinggpt import TinyGroundingGPTConfig


class PlaceholderMismatchError(ValueError):
    """The number of ``<image>``/``<object>`` tokens does not match the features given for them."""


def _normalise(pixel_values: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=pixel_values.device, dtype=pixel_values.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=pixel_values.device, dtype=pixel_values.dtype).view(1, -1, 1, 1)
    return (pixel_values - m) / s


class MultiScaleVisionEncoder(nn.Module):
    """Both towers on the same [0, 1] image, each with its own normalisation; patch features concatenated."""

    def __init__(self, config: TinyGroundingGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIPVisionModel(config.clip_config)
        self.dino = Dinov2Model(config.dino_config) if config.use_dino else None
        if config.image_size % config.clip_config.patch_size:
            raise ValueError(
                f"image_size {config.image_size} is not a multiple of CLIP's patch size {config.clip_config.patch_size}"
            )
        if config.use_dino:
            dino_grid = config.image_size // config.dino_config.patch_size
            if dino_grid != config.grid_size or config.image_size % config.dino_config.patch_size:
                raise ValueError(
                    f"patch grids differ at image_size {config.image_size}: CLIP gives {config.grid_size}x"
                    f"{config.grid_size}, DINOv2 (patch {config.dino_config.patch_size}) gives {dino_grid}x{dino_grid}"
                )

    def unused_parameters(self) -> list[str]:
        """Names of the parameters :meth:`forward` never reads: CLIP's layers after its feature layer and its
        post-LayerNorm (pooler only), DINOv2's layers after its feature layer, its final LayerNorm unless
        ``dino_final_norm``, and its mask token (masked-image training only). A trained tower freezes them: under
        DDP a parameter that never gets a gradient stops the second step."""
        cfg = self.config
        n_clip = len(self.clip.encoder.layers)  # hidden_states[k] is layer k-1's output; [0] the embeddings
        prefixes = [f"clip.encoder.layers.{i}." for i in range(cfg.clip_feature_layer % (n_clip + 1), n_clip)]
        prefixes.append("clip.post_layernorm.")
        if self.dino is not None:
            n_dino = len(self.dino.encoder.layer)
            prefixes += [f"dino.encoder.layer.{i}." for i in range(cfg.dino_feature_layer % (n_dino + 1), n_dino)]
            prefixes += [] if cfg.dino_final_norm else ["dino.layernorm."]
            prefixes.append("dino.embeddings.mask_token")
        return [n for n, _ in self.named_parameters() if any(n == p or n.startswith(p) for p in prefixes)]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` in [0, 1] → ``[N, grid², clip_dim + dino_dim]``."""
        cfg = self.config
        clip_in = _normalise(pixel_values, cfg.clip_image_mean, cfg.clip_image_std).to(self.clip.dtype)
        # DINOv2 interpolates its position embeddings by itself; CLIP only when asked (e.g. 448 px on a 336 px CLIP)
        resized = cfg.image_size != cfg.clip_config.image_size
        clip_out = self.clip(pixel_values=clip_in, output_hidden_states=True, interpolate_pos_encoding=resized)
        feats = [clip_out.hidden_states[cfg.clip_feature_layer][:, 1:]]  # drop CLS
        if self.dino is not None:
            dino_in = _normalise(pixel_values, cfg.dino_image_mean, cfg.dino_image_std).to(self.dino.dtype)
            dino_out = self.dino(pixel_values=dino_in, output_hidden_states=True)
            hidden = dino_out.hidden_states[cfg.dino_feature_layer]
            if cfg.dino_final_norm:
                hidden = self.dino.layernorm(hidden)
            feats.append(hidden[:, 1:])  # drop CLS (plain DINOv2 has no register tokens)
            if feats[0].shape[1] != feats[1].shape[1]:
                raise ValueError(f"CLIP gives {feats[0].shape[1]} patches but DINOv2 gives {feats[1].shape[1]}")
        return torch.cat([f.to(feats[0].dtype) for f in feats], dim=-1)


class MultiModalProjector(nn.Module):
    """LLaVA-1.5's two-layer GELU MLP, optionally with LayerNorms on its input and output."""

    def __init__(self, config: TinyGroundingGPTConfig) -> None:
        super().__init__()
        width = config.text_config.hidden_size
        self.norm = nn.LayerNorm(config.vision_feature_size) if config.projector_layernorm else nn.Identity()
        self.linear_1 = nn.Linear(config.vision_feature_size, width)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(width, width)
        self.out_norm = nn.LayerNorm(width) if config.projector_output_norm else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_norm(self.linear_2(self.act(self.linear_1(self.norm(features)))))

    @torch.no_grad()
    def match_output_norm(self, embeddings: torch.Tensor) -> None:
        """Start visual tokens at the mean norm of the LLM's text embeddings (LayerNorm output has norm √d)."""
        if isinstance(self.out_norm, nn.LayerNorm):
            target = embeddings.float().norm(dim=-1).mean()
            self.out_norm.weight.fill_(float(target) / embeddings.shape[-1] ** 0.5)


class TinyGroundingGPTPreTrainedModel(PreTrainedModel):
    config_class = TinyGroundingGPTConfig
    config: TinyGroundingGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "Dinov2Layer", "Qwen2DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True


class TinyGroundingGPTForConditionalGeneration(TinyGroundingGPTPreTrainedModel):
    """The full model: ``forward`` gives the LM loss, ``generate`` answers with text (and boxes as text)."""

    def __init__(self, config: TinyGroundingGPTConfig) -> None:
        super().__init__(config)
        self.vision_tower = MultiScaleVisionEncoder(config)
        self.projector = MultiModalProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}
        self.post_init()
        if config.freeze_vision_tower:
            self.vision_tower.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        # safetensors only: never a pickle (pytorch_model.bin) in its place
        kwargs.setdefault("use_safetensors", True)
        loaded = super().from_pretrained(path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info=True
        # transformers 5 loads weights into new Parameters that require grad, undoing the freeze of __init__
        if model.config.freeze_vision_tower:
            model.vision_tower.requires_grad_(False)
        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
        try:
            model.language_model.generation_config = GenerationConfig.from_pretrained(path, **hub)
        except OSError:  # saved before checkpoints kept it: the LLM's config gives the defaults
            pass
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs: Any) -> None:
        """Also saves the LLM's generation config (its stop tokens may be several, where its config holds one): this
        class is no ``GenerationMixin``, so transformers saves none for it."""
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            self.language_model.generation_config.save_pretrained(save_directory)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    # --- vision -------------------------------------------------------------------------------------
    @property
    def projector_dtype(self) -> torch.dtype:
        """The projector's dtype: the encoders may run in another (fp32 CLIP/DINOv2 next to a bf16 LLM)."""
        return next(self.projector.parameters()).dtype

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Global images ``[N, 3, S, S]`` → projected features ``[N, grid², hidden]``."""
        return self.projector(self.vision_tower(pixel_values).to(self.projector_dtype))

    def get_object_features(self, object_pixel_values: torch.Tensor) -> torch.Tensor:
        """Zoomed object crops ``[M, 3, S, S]`` → ``[M, object_grid², hidden]`` (pooled before projection)."""
        feats = self.vision_tower(object_pixel_values)
        grid, out = self.config.grid_size, self.config.object_grid
        if out is not None and out != grid:
            n, _, d = feats.shape
            maps = feats.transpose(1, 2).reshape(n, d, grid, grid)
            feats = F.adaptive_avg_pool2d(maps, out).reshape(n, d, out * out).transpose(1, 2)
        return self.projector(feats.to(self.projector_dtype))

    def _scatter(self, embeds: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor | None, what: str) -> torch.Tensor:
        n_tokens = int(mask.sum())
        n_feats = 0 if feats is None else feats.shape[0] * feats.shape[1]
        if n_tokens != n_feats:
            raise PlaceholderMismatchError(
                f"{n_tokens} {what} placeholder tokens in input_ids but {n_feats} {what} feature vectors "
                f"({0 if feats is None else feats.shape[0]} {what}s × "
                f"{0 if feats is None else feats.shape[1]} tokens each): the processor must expand each "
                f"<{what}> to exactly that many tokens"
            )
        if n_tokens == 0:
            return embeds
        # the device too: with device_map="auto" the projector and the embeddings may sit on different GPUs
        return embeds.masked_scatter(
            mask.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]).to(embeds.device, embeds.dtype)
        )

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        object_pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with ``<image>``/``<object>`` positions replaced by projected visual features."""
        embeds = self.get_input_embeddings()(input_ids)
        image_feats = (
            None if pixel_values is None or pixel_values.numel() == 0 else self.get_image_features(pixel_values)
        )
        embeds = self._scatter(embeds, input_ids == self.config.image_token_id, image_feats, "image")
        object_feats = (
            None
            if object_pixel_values is None or object_pixel_values.numel() == 0
            else self.get_object_features(object_pixel_values)
        )
        embeds = self._scatter(embeds, input_ids == self.config.object_token_id, object_feats, "object")
        if self.training and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank must run the vision tower and projector the same number of times per step: DDP waits
            # for the projector's gradient, ZeRO-3 / FSDP gather weights collectively, and a rank whose batch
            # has no images or no objects would skip them (as LLaVA does, a dummy input that adds exactly 0).
            s = self.config.image_size
            dummy = torch.zeros(1, 3, s, s, device=embeds.device)  # what the processor gives: float32 pixels
            for feats, encode in ((image_feats, self.get_image_features), (object_feats, self.get_object_features)):
                if feats is None:
                    embeds = embeds + 0.0 * encode(dummy).float().sum()  # fp32: an fp16 sum may overflow to inf
        return embeds

    # --- language -----------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        object_pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids (with pixel values) or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, object_pixel_values)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        object_pixel_values: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.LongTensor:
        """Generate with the LLM's own ``generate`` (KV cache, batching, sampling) from merged embeddings.

        Returns ``input_ids`` followed by the new tokens (or transformers' output object, with
        ``return_dict_in_generate``), as transformers' VLMs do; inputs must be left-padded for batched generation
        (the processor does this with ``padding_side="left"``). The LLM gets the ids beside the merged embeddings, as
        transformers' VLMs give them: repetition penalties see the prompt, and several sequences per input work.
        """
        embeds = self.embed_inputs(input_ids, pixel_values, object_pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.language_model.generate(
            input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs
        )

    # --- assembly -----------------------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        config: TinyGroundingGPTConfig,
        clip: CLIPVisionModel,
        dino: Dinov2Model | None,
        language_model: PreTrainedModel,
    ) -> TinyGroundingGPTForConditionalGeneration:
        """Wrap three pretrained parts; only the projector is newly initialised."""
        with torch.device("meta"):
            model = cls(config)
        model.vision_tower.clip = clip
        model.vision_tower.dino = dino
        model.language_model = language_model
        model.projector = MultiModalProjector(config).to(dtype=language_model.dtype)
        # transformers' own init, module by module as it initialises missing weights on loading: linear layers
        # normal(text_config.initializer_range) with zero biases, LayerNorms one and zero
        model.projector.apply(model._init_weights)
        model.projector.match_output_norm(language_model.get_input_embeddings().weight)
        if config.freeze_vision_tower:
            model.vision_tower.requires_grad_(False)
        return model
