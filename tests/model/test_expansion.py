import copy

import pytest
import torch
from PIL import Image
from transformers import AutoModel

from tinygroundinggpt.model.expansion import OUTPUT_PROJECTIONS, expand_language_model, expansion_plan


def test_the_plan_spreads_new_layers_evenly_after_the_layers_they_copy():
    assert expansion_plan(4, 8) == [
        (0, False),
        (0, True),
        (1, False),
        (1, True),
        (2, False),
        (2, True),
        (3, False),
        (3, True),
    ]
    assert expansion_plan(4, 6) == [(0, False), (1, False), (1, True), (2, False), (3, False), (3, True)]
    assert expansion_plan(4, 5)[-1] == (3, True) and len(expansion_plan(4, 5)) == 5
    assert [n for _, n in expansion_plan(2, 6)] == [False, True, True, False, True, True]
    assert expansion_plan(4, 4) == [(i, False) for i in range(4)]
    with pytest.raises(ValueError, match="cannot expand a 4-layer language model to 3 layers"):
        expansion_plan(4, 3)


def test_expanded_model_computes_exactly_what_the_original_did_and_round_trips(tiny_model, tmp_path):
    model, proc = tiny_model
    grown = copy.deepcopy(model)
    old = model.config.text_config.num_hidden_layers
    new = expand_language_model(grown, old + 3)
    assert len(new) == 3 and len(grown.language_model.model.layers) == old + 3
    assert grown.config.text_config.num_hidden_layers == old + 3
    assert len(grown.config.text_config.layer_types) == old + 3
    sd = grown.language_model.state_dict()
    plan = expansion_plan(old, old + 3)
    for j, (src, is_new) in enumerate(plan):
        for key, value in model.language_model.model.layers[src].state_dict().items():
            target = sd[f"model.layers.{j}.{key}"]
            if is_new and key in OUTPUT_PROJECTIONS:
                assert not target.any(), key
            else:
                assert torch.equal(target, value), (j, key)
    assert grown.language_model.lm_head.weight is grown.language_model.model.embed_tokens.weight  # still tied

    imgs = [Image.new("RGB", (64, 40), (0, 0, 255)), Image.new("RGB", (30, 64), (255, 255, 0))]
    batch = proc(
        ["Output the coordinate of the blue square.", "Where is <object:0>?"], imgs, boxes=[[], [(2, 3, 20, 40)]]
    )
    with torch.no_grad():
        torch.testing.assert_close(grown(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)
    a = model.generate(**batch, max_new_tokens=8, do_sample=False)
    b = grown.generate(**batch, max_new_tokens=8, do_sample=False)  # the KV cache indexes the new layers too
    assert torch.equal(a, b)

    grown.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.text_config.num_hidden_layers == old + 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, grown(**batch).logits, rtol=0, atol=0)
    assert expand_language_model(loaded, old + 3) == []  # already that deep: left as it is
