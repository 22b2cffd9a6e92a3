import json

from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.boxes import format_box, pixel_to_model
from tinygroundinggpt.data.format import iter_jsonl
from tinygroundinggpt.training.chain import load_checkpoint
from tinygroundinggpt.training.engine import train_stage
from tinygroundinggpt.training.recipe import load_recipe


def test_tiny_model_overfits_grounding_samples_to_their_exact_box_text(world, tiny_ckpt, tmp_path):
    samples = [s for s in iter_jsonl(world / "stage2_tc.jsonl") if s.messages[-1]["content"] == "<box:0>"][:4]
    data = tmp_path / "four.jsonl"
    data.write_text("".join(json.dumps({**s.to_json(), "image": str(world / s.image)}) + "\n" for s in samples))
    model, proc = load_checkpoint(tiny_ckpt)
    recipe = load_recipe(
        "stage2",
        {"data": [{"path": str(data), "weight": 1.0}], "batch_size": 4, "learning_rate": 3e-3, "warmup": 0.0,
         "schedule": "constant", "epochs": 100, "object_augment": {}, "logging_steps": 10},
    )  # fmt: skip
    report = train_stage(recipe, model, proc, tmp_path / "out", disable_tqdm=True)
    assert report["log_history"][-2]["loss"] < 0.05
    pipe = TinyGroundingGPTPipeline(model, proc)
    for s in samples:
        question = s.messages[0]["content"].replace("<image>", "").strip()
        answer = pipe.generate_batch([world / s.image], [question], max_new_tokens=30)[0]
        assert answer == format_box(pixel_to_model(s.boxes[0], s.width, s.height))
