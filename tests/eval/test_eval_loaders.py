"""Each benchmark reads small files written in its published format; the judged tasks talk to an
OpenAI-compatible endpoint (a mock transport under the real openai client)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import openai
import pytest
from PIL import Image

from tinygroundinggpt.eval.benchmarks.judged import LLAVA_REVIEW_SYSTEM, REVIEW_SYSTEM
from tinygroundinggpt.eval.judge import Judge
from tinygroundinggpt.eval.task import DataError, EvalOptions, get_task


def _png(size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_refcoco_from_refer_files(tmp_path, write_refcoco):
    write_refcoco(tmp_path)
    items = get_task("refcoco_testA").load(tmp_path)
    assert [it.id for it in items] == ["7-100", "7-101"]
    assert items[0].prompt == "Output the coordinate of left man"
    assert items[0].reference["box"] == [10.0, 20.0, 110.0, 70.0]  # COCO xywh → x1 y1 x2 y2 pixels
    assert (items[0].width, items[0].height) == (640, 480)
    assert items[0].image.endswith("coco/train2014/COCO_train2014_000000000001.jpg")
    lmms = get_task("refcoco_testA", EvalOptions(rec_prompt="lmms")).load(tmp_path)[0].prompt
    assert lmms.startswith("Bounding box coordinates are specified") and lmms.endswith("left man")


def test_refcocog_reads_umd_refs_and_missing_files_say_where(tmp_path, write_refcoco):
    write_refcoco(tmp_path, "refcocog", "refs(umd).p")
    assert [it.id for it in get_task("refcocog_val").load(tmp_path)] == ["8-102"]
    with pytest.raises(DataError, match=r"refcoco\+/refs\(unc\)\.p"):
        get_task("refcoco+_val").load(tmp_path)


def test_pope_question_file(tmp_path):
    (tmp_path / "pope").mkdir()
    lines = [
        {
            "question_id": 1,
            "image": "COCO_val2014_000000000042.jpg",
            "text": "Is there a dog in the image?",
            "label": "yes",
        }
    ]
    (tmp_path / "pope" / "coco_pope_adversarial.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (item,) = get_task("pope_adversarial").load(tmp_path)
    assert item.prompt.startswith("Is there a dog in the image?\n") and item.reference == {"label": "yes"}
    assert item.image.endswith("coco/val2014/COCO_val2014_000000000042.jpg")


def test_vqav2_and_gqa_files(tmp_path):
    (tmp_path / "vqav2").mkdir()
    (tmp_path / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({"questions": [{"question_id": 5, "image_id": 42, "question": "How many?"}]})
    )
    answers = [{"answer": "2", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]
    (tmp_path / "vqav2" / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps({"annotations": [{"question_id": 5, "image_id": 42, "answers": answers}]})
    )
    (item,) = get_task("vqav2_val").load(tmp_path)
    assert item.image.endswith("COCO_val2014_000000000042.jpg") and len(item.reference["answers"]) == 10
    assert get_task("vqav2_val").score("Two.", item) == {"accuracy": 1.0}
    (tmp_path / "gqa").mkdir()
    gqa = {"20968379": {"imageId": "n288870", "question": "Is it red?", "answer": "no", "fullAnswer": "No, it is not."}}
    (tmp_path / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(gqa))
    (item,) = get_task("gqa_testdev").load(tmp_path)
    assert item.id == "20968379" and item.image.endswith("gqa/images/n288870.jpg")


def test_scienceqa_keeps_test_questions_with_images(tmp_path):
    root = tmp_path / "scienceqa"
    root.mkdir()

    def problem(question, choices, answer, hint, image, split):
        return {
            "question": question,
            "choices": choices,
            "answer": answer,
            "hint": hint,
            "image": image,
            "split": split,
        }

    problems = {
        "1": problem("Which is a mammal?", ["frog", "cat"], 1, "Look.", "image.png", "test"),
        "2": problem("No image here", ["a", "b"], 0, "", None, "test"),
        "3": problem("Train", ["a", "b"], 0, "", "image.png", "train"),
    }
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": ["1", "2"], "train": ["3"]}))
    task = get_task("scienceqa_img")
    (item,) = task.load(tmp_path)
    assert item.prompt == "Context: Look.\nWhich is a mammal?\nA. frog\nB. cat\n" + (
        "Answer with the option's letter from the given choices directly."
    )
    assert item.image.endswith("scienceqa/test/1/image.png")
    assert task.score("B", item)["accuracy"] == 1
    # LLaVA's rule reads no option text: "cat" is a miss there, right only in the lenient reading beside it
    assert task.score("cat", item) == {"accuracy": 0, "accuracy_lenient": 1, "unparseable": 1}
    assert task.score("maybe", item) == {"accuracy": 0, "accuracy_lenient": 0, "unparseable": 1}
    agg = task.aggregate([task.score("B", item), task.score("cat", item)])
    assert (agg["accuracy"], agg["accuracy_lenient"], agg["unparseable"]) == (50.0, 100.0, 1)


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_mme_folder_layouts(tmp_path, layout):
    folder = tmp_path / "mme" / "artwork"
    qdir, idir = (folder, folder) if layout == "flat" else (folder / "questions_answer_YES_NO", folder / "images")
    qdir.mkdir(parents=True, exist_ok=True)
    idir.mkdir(parents=True, exist_ok=True)
    (idir / "10002.jpg").write_bytes(_png())
    (qdir / "10002.txt").write_text(
        "Is this by Monet? Please answer yes or no.\tYes\nIs this by Dali? Please answer yes or no.\tNo\n"
    )
    task = get_task("mme")
    items = task.load(tmp_path)
    assert [it.id for it in items] == ["artwork/10002/0", "artwork/10002/1"]
    assert items[0].image == str(idir / "10002.jpg") and items[1].reference["answer"] == "no"
    # asked as LLaVA-1.5 and lmms-eval ask it
    assert items[0].prompt == "Is this by Monet?\nAnswer the question using a single word or phrase."
    agg = task.aggregate([task.score("Yes", items[0]), task.score("No", items[1])])
    assert agg["perception"] == 200.0 and agg["artwork/acc+"] == 100.0


def _mmbench_tsv(path, rows):
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_mmbench_generates_rotations_when_the_file_has_only_originals(tmp_path):
    (tmp_path / "mmbench").mkdir()
    img = base64.b64encode(_png()).decode()
    row = {"index": 3, "question": "What animal?", "hint": "nan", "A": "dog", "B": "cat", "C": "cow", "D": "nan"}
    _mmbench_tsv(tmp_path / "mmbench" / "mmbench_dev_en.tsv", [dict(row, answer="B", category="animals", image=img)])
    task = get_task("mmbench_en_dev")
    items = task.load(tmp_path)
    assert [it.id for it in items] == ["3", "1000003", "2000003"]
    assert [it.reference["answer"] for it in items] == ["B", "A", "C"]  # "cat" moves with each rotation
    assert items[1].prompt.startswith("What animal?\nA. cat\nB. cow\nC. dog\n")
    assert Image.open(io.BytesIO(items[2].image)).size == (32, 24)
    right = [task.score(it.reference["answer"], it) for it in items]
    assert task.aggregate(right)["circular_accuracy"] == 100.0
    one_wrong = right[:2] + [task.score("A", items[2])]
    assert task.aggregate(one_wrong)["circular_accuracy"] == 0.0


def test_mmbench_rotations_follow_the_right_option_when_two_options_read_the_same(tmp_path):
    (tmp_path / "mmbench").mkdir()
    img = base64.b64encode(_png()).decode()
    row = {"index": 5, "question": "How many?", "hint": "nan", "A": "2", "B": "2", "C": "5", "D": "nan"}
    _mmbench_tsv(tmp_path / "mmbench" / "mmbench_dev_en.tsv", [dict(row, answer="B", category="count", image=img)])
    items = get_task("mmbench_en_dev").load(tmp_path)
    assert [it.reference["answer"] for it in items] == ["B", "A", "C"]


def test_mmbench_uses_shipped_rotations(tmp_path):
    (tmp_path / "mmbench").mkdir()
    img = base64.b64encode(_png()).decode()
    rows = [
        {"index": 4, "question": "Q", "A": "x", "B": "y", "answer": "A", "image": img},
        {"index": 1000004, "question": "Q", "A": "y", "B": "x", "answer": "B", "image": ""},
        {"index": 2000004, "question": "Q", "A": "x", "B": "y", "answer": "A", "image": "4"},  # VLMEvalKit's reference
    ]
    _mmbench_tsv(tmp_path / "mmbench" / "MMBench_DEV_EN.tsv", rows)
    items = get_task("mmbench_en_dev").load(tmp_path)
    assert [it.id for it in items] == ["4", "1000004", "2000004"]
    assert items[1].image == items[2].image == items[0].image == _png()
    rows[0]["image"] = "7"  # every row a reference, none to an image
    _mmbench_tsv(tmp_path / "mmbench" / "MMBench_DEV_EN.tsv", rows)
    with pytest.raises(DataError, match="question 4 has no image .it refers to row 7, which has none"):
        get_task("mmbench_en_dev").load(tmp_path)


def mock_judge(tmp_path, reply, calls, base_url="http://judge.local/v1"):
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        body = {
            "id": "x", "object": "chat.completion", "created": 0, "model": "judge",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
        }  # fmt: skip
        return httpx.Response(200, json=body)

    client = openai.OpenAI(
        base_url=base_url, api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    return Judge("judge", client=client, cache_path=tmp_path / "judge_cache.jsonl")


def test_llava_bench_judged_through_an_openai_compatible_endpoint(tmp_path):
    root = tmp_path / "llava-bench-in-the-wild"
    root.mkdir()
    (root / "questions.jsonl").write_text(
        json.dumps({"question_id": 0, "image": "001.jpg", "text": "What is it?", "category": "conv"}) + "\n"
    )
    (root / "context.jsonl").write_text(
        json.dumps({"id": "001", "image": "001.jpg", "caption": "A ramen bowl."}) + "\n"
    )
    (root / "answers_gpt4.jsonl").write_text(json.dumps({"question_id": 0, "text": "Ramen."}) + "\n")
    calls: list = []
    judge = mock_judge(tmp_path, "8 6\nThe second answer is vaguer.", calls)
    task = get_task("llava_bench", EvalOptions(judge=judge))
    (item,) = task.load(tmp_path)
    s = task.score("Noodles.", item)
    assert s == {"category": "conv", "unparseable": 0, "reference_score": 8.0, "model_score": 6.0}
    content = calls[0]["messages"][1]["content"]
    assert "[Context]\nA ramen bowl." in content and "[Assistant 2]\nNoodles." in content
    assert calls[0]["messages"][0] == {"role": "system", "content": REVIEW_SYSTEM}
    assert task.aggregate([s])["relative_score"] == pytest.approx(75.0)
    # The review is cached on disk: a second task instance asks nothing new.
    again = get_task("llava_bench", EvalOptions(judge=mock_judge(tmp_path, "1 1", calls)))
    assert again.score("Noodles.", item)["model_score"] == 6.0 and len(calls) == 1
    # ... but another server serving a model of the same name is asked afresh
    other = get_task("llava_bench", EvalOptions(judge=mock_judge(tmp_path, "1 1", calls, "http://other.local/v1")))
    assert other.score("Noodles.", item)["model_score"] == 1.0 and len(calls) == 2


def test_llava_bench_with_llavas_rules_sends_llavas_wording(tmp_path):
    root = tmp_path / "llava-bench-in-the-wild"
    root.mkdir()
    (root / "questions.jsonl").write_text(
        json.dumps({"question_id": 0, "image": "001.jpg", "text": "What is it?", "category": "detail"}) + "\n"
    )
    (root / "context.jsonl").write_text(json.dumps({"id": "001", "image": "001.jpg", "caption": "A bowl."}) + "\n")
    (root / "answers_gpt4.jsonl").write_text(json.dumps({"question_id": 0, "text": "Ramen."}) + "\n")
    rules = tmp_path / "rule.json"
    rules.write_text(json.dumps({"llava_bench_detail": {"role": "Assistant", "prompt": "Rate them, LLaVA's way."}}))
    calls: list = []
    task = get_task("llava_bench", EvalOptions(judge=mock_judge(tmp_path, "9 7", calls), llava_rules=str(rules)))
    (item,) = task.load(tmp_path)
    assert task.score("Noodles.", item)["model_score"] == 7.0
    system, user = calls[0]["messages"]
    assert system == {"role": "system", "content": LLAVA_REVIEW_SYSTEM}
    assert user["content"].endswith("[System]\nRate them, LLaVA's way.\n\n")


def test_a_judge_outage_fails_the_item_marks_the_result_partial_and_a_rerun_scores_it(tmp_path):
    from tinygroundinggpt.eval.runner import evaluate

    root = tmp_path / "llava-bench-in-the-wild"
    (root / "images").mkdir(parents=True)
    (root / "images" / "001.png").write_bytes(_png())
    questions = [{"question_id": i, "image": "001.png", "text": f"Question {i}?", "category": "conv"} for i in (0, 1)]
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "context.jsonl").write_text(json.dumps({"id": "001", "image": "001.png", "caption": "A bowl."}) + "\n")
    (root / "answers_gpt4.jsonl").write_text(
        "".join(json.dumps({"question_id": i, "text": "Ramen."}) + "\n" for i in (0, 1))
    )

    def judge(fail_on: str) -> Judge:
        def handler(request: httpx.Request) -> httpx.Response:
            if fail_on in request.content.decode():
                return httpx.Response(503, json={"error": {"message": "overloaded"}})
            body = {
                "id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "8 2"}}],
            }  # fmt: skip
            return httpx.Response(200, json=body)

        client = openai.OpenAI(
            base_url="http://judge.local/v1", api_key="k", max_retries=0,
            http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        )  # fmt: skip
        return Judge("judge", client=client, retries=1, cache_path=tmp_path / "judge_cache.jsonl")

    class Answers:
        def generate_batch(self, images, prompts, max_new_tokens=64):
            return ["Noodles." for _ in prompts]

    out = tmp_path / "out"
    task = get_task("llava_bench", EvalOptions(judge=judge(fail_on="Question 1?")))
    res = evaluate(Answers(), [task], tmp_path, out, model_id="m", progress=False)["tasks"]["llava_bench"]
    # the outage is a failure of the item, not a wrong answer: listed, and the score is over the judged items only
    assert (res["n_scored"], res["n_failed"]) == (1, 1) and res["failed"][0]["id"] == "1"
    assert res["failed"][0]["error"].startswith("not scored: judge judge failed")
    assert res["metrics"]["relative_score"] == pytest.approx(25.0) and res["metrics"]["unparseable"] == 0
    assert "25.0*" in (out / "results.md").read_text()  # the table says the figure is partial
    task = get_task("llava_bench", EvalOptions(judge=judge(fail_on="no request has this")))
    res = evaluate(Answers(), [task], tmp_path, out, model_id="m", progress=False)["tasks"]["llava_bench"]
    assert (res["n_scored"], res["n_failed"]) == (2, 0) and res["timing"]["answered"] == 0  # answers came from cache


def test_judged_tasks_refuse_to_run_without_a_judge():
    with pytest.raises(DataError, match="--judge-model"):
        get_task("desc_quality")


def test_desc_quality_sends_the_image_and_the_table12_prompt(tmp_path, write_refcoco):
    write_refcoco(tmp_path)
    (tmp_path / "coco" / "train2014").mkdir(parents=True)
    (tmp_path / "coco" / "train2014" / "COCO_train2014_000000000001.jpg").write_bytes(_png())
    calls: list = []
    judge = mock_judge(tmp_path, '"Quality": "4", "Richness": "3", "Accuracy": "5", "Justification": "fine"', calls)
    task = get_task("desc_quality", EvalOptions(judge=judge))
    (item,) = task.load(tmp_path)  # one image has testA refs
    s = task.score("A man stands left of a dog.", item)
    assert s == {"unparseable": 0, "quality": 4.0, "richness": 3.0, "accuracy": 5.0}
    image_part, text_part = calls[0]["messages"][0]["content"]
    assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
    assert text_part["text"].startswith("Evaluate the image description based on the following criteria:")
    assert "A man stands left of a dog." in text_part["text"]


def test_task_groups_expand_in_order_without_repeats():
    from tinygroundinggpt.eval.cli import expand_tasks

    names = expand_tasks("pope_random, rec,pope")
    assert names[0] == "pope_random" and len(names) == 1 + 8 + 2 and len(set(names)) == len(names)
