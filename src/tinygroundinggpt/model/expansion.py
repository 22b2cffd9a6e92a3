"""Block expansion of the language model (LLaMA Pro, Wu et al. 2024): more decoder layers, same function.

Each new layer is a copy of the layer it follows with its two output projections (attention ``o_proj`` and MLP
``down_proj``) set to zero, so it adds nothing to the residual stream and the expanded model computes exactly what
the original did; training then grows the new layers from there. This gives a trained checkpoint more capacity
without starting its training over.
"""

from __future__ import annotations

import copy

from transformers import AutoModelForCausalLM

from tinygroundinggpt.model.modeling_tinygroundinggpt import TinyGroundingGPTForConditionalGeneration

# the projections that write into the residual stream; zero, they make a decoder layer the identity
OUTPUT_PROJECTIONS = ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")


def expansion_plan(old_layers: int, new_layers: int) -> list[tuple[int, bool]]:
    """The expanded stack as (source layer, is new) pairs: the added layers spread evenly, each after the layer it
    copies (4 → 8: one after every layer; 4 → 6: after layers 1 and 3)."""
    if new_layers < old_layers:
        raise ValueError(f"cannot expand a {old_layers}-layer language model to {new_layers} layers (fewer)")
    added = new_layers - old_layers
    after = [0] * old_layers
    for m in range(added):
        after[-(-(m + 1) * old_layers // added) - 1] += 1  # ceil: the last added layer follows the last layer
    plan: list[tuple[int, bool]] = []
    for i, n in enumerate(after):
        plan += [(i, False)] + [(i, True)] * n
    return plan


def expand_language_model(model: TinyGroundingGPTForConditionalGeneration, num_layers: int) -> list[int]:
    """Grow ``model.language_model`` to ``num_layers`` decoder layers in place; returns the new layers' indices
    (empty when it already has that many). The model's outputs are unchanged by the expansion."""
    lm = model.language_model
    old_cfg = lm.config
    plan = expansion_plan(old_cfg.num_hidden_layers, num_layers)
    if len(plan) == old_cfg.num_hidden_layers:
        return []
    state = lm.state_dict()
    prefix = "model.layers."
    if not any(k.startswith(prefix) for k in state) or not any(k.endswith(OUTPUT_PROJECTIONS[0]) for k in state):
        raise ValueError(
            f"{type(lm).__name__} is not a decoder of the Llama/Qwen2 layout (model.layers.N.self_attn.o_proj, "
            "mlp.down_proj): block expansion does not know which projections to zero"
        )
    cfg = copy.deepcopy(old_cfg)
    cfg.num_hidden_layers = num_layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [old_cfg.layer_types[src] for src, _ in plan]
    grown = AutoModelForCausalLM.from_config(cfg, dtype=lm.dtype).to(lm.device)
    new_state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    for j, (src, new) in enumerate(plan):
        src_prefix = f"{prefix}{src}."
        for key, value in state.items():
            if key.startswith(src_prefix):
                name = key[len(src_prefix) :]
                tensor = value.detach().clone()
                if new and name in OUTPUT_PROJECTIONS:
                    tensor.zero_()
                new_state[f"{prefix}{j}.{name}"] = tensor
    grown.load_state_dict(new_state, strict=True)
    grown.generation_config = copy.deepcopy(lm.generation_config)
    model.language_model = grown
    model.config.text_config = grown.config
    return [j for j, (_, new) in enumerate(plan) if new]
