"""Reply parsers, the disk cache, the state file and the box helper the grounder uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tinygroundinggpt.boxes import cxcywh_to_xyxy, inclusive_to_pixel
from tinygroundinggpt.synthesis.cache import DiskCache, hash_inputs
from tinygroundinggpt.synthesis.pipeline import StateFile, read_manifest
from tinygroundinggpt.synthesis.replies import (
    MalformedReply,
    parse_judgement,
    parse_object_list,
    parse_qa_reply,
    parse_triples,
)


def test_cxcywh_to_xyxy() -> None:
    assert cxcywh_to_xyxy([0.5, 0.5, 0.2, 0.4]) == pytest.approx((0.4, 0.3, 0.6, 0.7))


def test_object_list_accepts_the_papers_format_and_rejects_others() -> None:
    assert parse_object_list("[red box, blue box, red box]") == ["red box", "blue box"]
    assert parse_object_list('```json\n["a cat", "a dog"]\n```') == ["a cat", "a dog"]
    # Prose around the list is dropped.
    assert parse_object_list('Objects: ["a cat", "a dog"].') == ["a cat", "a dog"]
    assert parse_object_list('{"objects": ["a cat", "a dog"]}') == ["a cat", "a dog"]
    # The list ends at the bracket that closes it: a later bracket in the prose is not part of it.
    assert parse_object_list('["cat", "dog"]\nNote: [none hidden]') == ["cat", "dog"]
    assert parse_object_list("1. [cat] 2. [dog]") == ["cat"]
    for bad in ("a cat and a dog", "[]", "[1, 2]"):
        with pytest.raises(MalformedReply):
            parse_object_list(bad)


def test_triples() -> None:
    assert parse_triples("[(man, holding, cup), (cup, on top of, table)]") == (
        [("man", "holding", "cup"), ("cup", "on top of", "table")],
        [],
    )
    assert parse_triples("[(a, next to, close to, b)]") == ([("a", "next to, close to", "b")], [])
    assert parse_triples("[]") == ([], [])
    for bad in ("(a, b, c)", "[(a, b)]", "[a, b, c]", '["a", "b", "c"]'):
        with pytest.raises(MalformedReply):
            parse_triples(bad)


def test_one_bad_triple_drops_only_itself_and_quoted_lists_parse() -> None:
    triples, dropped = parse_triples("[(man, holding, umbrella), (dog, grass), (cat, on, mat)]")
    assert triples == [("man", "holding", "umbrella"), ("cat", "on", "mat")]
    assert [p.kind for p in dropped] == ["wrong_arity"] and "'grass'" in str(dropped[0])
    # JSON lists of lists and Python-quoted tuples, whose names may hold commas.
    assert parse_triples('[["man", "on", "dog"]]') == ([("man", "on", "dog")], [])
    assert parse_triples("[('man in red, white', 'next to', 'dog')]") == ([("man in red, white", "next to", "dog")], [])
    assert parse_triples("[[man, on, dog], [a, b]]")[0] == [("man", "on", "dog")]


def test_a_python_quoted_object_list_keeps_commas_inside_names() -> None:
    assert parse_object_list("['man in a red, white shirt', 'dog']") == ["man in a red, white shirt", "dog"]


def test_an_apostrophe_inside_an_unquoted_name_is_no_quote() -> None:
    assert parse_object_list("[man's shirt, dog, table]") == ["man's shirt", "dog", "table"]
    assert parse_triples("[(man, holding, woman's hand), (dog, on, table)]") == (
        [("man", "holding", "woman's hand"), ("dog", "on", "table")],
        [],
    )
    assert parse_object_list("['man\\'s shirt', 'dog']") == ["man's shirt", "dog"]  # quoted, the quote escaped


def test_a_reply_nested_past_the_parsers_recursion_limit_is_malformed_not_a_crash() -> None:
    # a looping model cut off at its token limit; json raises RecursionError, not JSONDecodeError
    with pytest.raises(MalformedReply):
        parse_object_list("[" * 3000 + "cat", partial=True)
    with pytest.raises(MalformedReply):
        parse_qa_reply("[" * 3000)[0]


def test_qa_list() -> None:
    # JSON, and the Python quoting of the paper's own Fig. 11 example.
    assert parse_qa_reply('[{"question": " Q? ", "answer": "A."}]')[0] == [{"question": "Q?", "answer": "A."}]
    assert parse_qa_reply("[{'question': 'Q?', 'answer': 'A.'}]")[0] == [{"question": "Q?", "answer": "A."}]
    for bad, kind in (
        ("nope", "not_json"),
        ('{"question": "q"}', "not_list"),
        ('[{"q": 1}]', "wrong_keys"),
        ("[]", "empty"),
    ):
        with pytest.raises(MalformedReply) as exc:
            parse_qa_reply(bad)[0]
        assert exc.value.kind == kind


def test_triples_with_instance_labels_and_cut_off() -> None:
    assert parse_triples("[(person (2), holding, umbrella), ('person (1)', next to, person (2))]")[0] == [
        ("person (2)", "holding", "umbrella"),
        ("person (1)", "next to", "person (2)"),
    ]
    assert parse_triples("The triples: [(a, on, b)]. Done (I think).") == ([("a", "on", "b")], [])
    assert parse_triples("[(a, on, b), (b, und", partial=True) == ([("a", "on", "b")], [])
    assert parse_object_list("[cat, dog, hor", partial=True) == ["cat", "dog"]
    with pytest.raises(MalformedReply):
        parse_triples("[(a, on, b), (b, und")  # a complete reply must close its list


def test_qa_reply_keeps_every_complete_item() -> None:
    q1, q2 = {"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2 [0.1, 0.2, 0.3, 0.4]."}
    listed = json.dumps([q1, q2])
    for reply in (
        f"Here are the pairs:\n{listed}\nLet me know if you need more.",  # prose around a bare list
        f"Sure.\n```json\n{listed}\n```\nDone.",  # prose around a fenced list
        f"{json.dumps(q1)}\n{json.dumps(q2)}",  # one object per line
        "{ 'question' : 'Q1?' , 'answer' : 'A1.' }\n{ 'question' : 'Q2?' , 'answer' : 'A2 [0.1, 0.2, 0.3, 0.4].' }",
        f"{json.dumps(q1)},\n{json.dumps(q2)}",
        json.dumps({"qa_pairs": [q1, q2]}),
    ):
        assert parse_qa_reply(reply) == ([q1, q2], []), reply
    items, dropped = parse_qa_reply(listed[: listed.index("Q2?") + 2])  # cut off inside the second item
    assert items == [q1] and [p.kind for p in dropped] == ["unterminated_item"]
    broken = '{"q": "x"}, {"question": "Q3", "answer": }'  # wrong keys; not even a literal
    items, dropped = parse_qa_reply(f"[{json.dumps(q1)}, {broken}, {json.dumps(q2)}]")
    assert items == [q1, q2] and sorted(p.kind for p in dropped) == ["bad_item", "wrong_keys"]


def test_judgement() -> None:
    assert parse_judgement('"Quality": "4", "Correct": "Yes", "Justification": "ok"') == (4, True)
    assert parse_judgement('{"Quality": 2, "Correct": "no"}') == (2, False)
    for bad in (
        '"Quality": "great", "Correct": "Yes"',
        '"Quality": "4", "Incorrect": "Yes"',  # another field, not Correct
        '"Quality": "5/10", "Correct": "Yes"',  # out of 10, not the 1-5 scale
    ):
        with pytest.raises(MalformedReply):
            parse_judgement(bad)


def test_disk_cache_round_trip_and_counts(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    key = hash_inputs({"b": 1, "a": [1, 2]})
    assert key == hash_inputs({"a": [1, 2], "b": 1})
    assert cache.get(key) is None
    cache.put(key, "reply")
    assert DiskCache(tmp_path).get(key) == "reply"
    assert (cache.hits, cache.misses) == (0, 1)
    assert not list(tmp_path.rglob("*.tmp"))


def test_state_file_drops_a_half_written_line(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "s.jsonl")
    store.append({"id": "a", "x": 1})
    with (tmp_path / "s.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "b"})[:7])  # killed mid-write
    assert StateFile(tmp_path / "s.jsonl").load() == {"a": {"id": "a", "x": 1}}
    store.append({"id": "b", "x": 2})
    assert set(StateFile(tmp_path / "s.jsonl").load()) == {"a", "b"}


def test_inclusive_to_pixel() -> None:
    # Flickr30K Entities xml: 1-based pixels 1..10 inclusive are 0-based columns 0..9, i.e. [0, 10).
    assert inclusive_to_pixel([1, 1, 10, 20]) == (0.0, 0.0, 10.0, 20.0)
    assert inclusive_to_pixel([0, 0, 9, 19], one_based=False) == (0.0, 0.0, 10.0, 20.0)


def test_a_damaged_cache_entry_is_a_miss_not_a_crash(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put("ab" + "0" * 62, {"text": "kept"})
    cache.put("cd" + "0" * 62, {"text": "lost"})
    (tmp_path / "cd" / ("cd" + "0" * 62 + ".json")).write_text('{"value": {"te')  # cut off mid-write
    assert cache.get("cd" + "0" * 62) is None and cache.get("ab" + "0" * 62) == {"text": "kept"}
    assert (cache.hits, cache.misses) == (1, 1)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [(b'{"id": "b", "image": ', "Expecting value"), (b'{"id": "b\xff", "image": "b.png"}', "can't decode byte 0xff")],
)
def test_a_bad_manifest_line_is_named_by_file_and_line(tmp_path: Path, bad: bytes, problem: str) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b'{"id": "a", "image": "a.png"}\n\n' + bad + b"\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: not a JSON object in UTF-8: .*{problem}"):
        read_manifest(path)
