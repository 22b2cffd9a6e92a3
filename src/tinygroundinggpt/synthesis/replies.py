"""Parsers for model replies. Each returns the parsed value or raises :class:`MalformedReply` saying why.

Models wrap JSON in code fences, use Python quoting (the paper's own Fig. 11 example does) or add
prose; the parsers accept those and nothing looser, so a reply is either understood or counted.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_FENCE_RE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*```\s*$", re.S)
_TRIPLE_RE = re.compile(r"\(([^()]*)\)")
_QUALITY_RE = re.compile(r'"?Quality"?\s*:\s*"?\s*([1-5])(?:\.\d+)?\b', re.I)
_CORRECT_RE = re.compile(r'"?Correct"?\s*:\s*"?\s*(yes|no)\b', re.I)


class MalformedReply(ValueError):
    """A reply that cannot be used, with the reason (logged and counted, never fatal)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _strip_fence(text: str) -> str:
    m = _FENCE_RE.match(text)
    return m.group(1) if m else text.strip()


def _load_structured(text: str) -> Any:
    text = _strip_fence(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise MalformedReply("not_json", f"reply is neither JSON nor a literal list: {exc}") from exc


def normalise_name(name: str) -> str:
    return " ".join(name.strip().strip("\"'`").split()).lower()


def parse_object_list(text: str) -> list[str]:
    """Fig. 7 recognition reply ``[object1, object2, ...]`` (quoted or not) → distinct names, in order."""
    body = _strip_fence(text)
    if not (body.startswith("[") and body.endswith("]")):
        raise MalformedReply("not_list", "recognition reply is not a bracketed list")
    try:
        items = json.loads(body)
    except json.JSONDecodeError:
        items = body[1:-1].split(",")
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise MalformedReply("wrong_type", "recognition reply must be a list of names")
    names: list[str] = []
    for item in items:
        name = " ".join(item.strip().strip("\"'`").split())
        if name and normalise_name(name) not in map(normalise_name, names):
            names.append(name)
    if not names:
        raise MalformedReply("empty", "recognition reply lists no object")
    return names


def parse_triples(text: str) -> list[tuple[str, str, str]]:
    """Fig. 7 relation reply ``[(a, rel, b), ...]`` → triples (instances not yet checked against the list)."""
    body = _strip_fence(text)
    if not (body.startswith("[") and body.endswith("]")):
        raise MalformedReply("not_list", "relation reply is not a bracketed list")
    triples = []
    for group in _TRIPLE_RE.findall(body):
        parts = [p.strip().strip("\"'`").strip() for p in group.split(",")]
        if len(parts) < 3 or not all(parts):
            raise MalformedReply("wrong_arity", f"triple ({group}) does not have 3 parts")
        # A relation phrase may itself hold a comma; the instances are the first and last parts.
        triples.append((parts[0], ", ".join(parts[1:-1]), parts[-1]))
    if not triples and body[1:-1].strip():
        raise MalformedReply("not_list", "relation reply holds no (a, relation, b) triple")
    return triples


def parse_qa_list(text: str) -> list[dict[str, str]]:
    """QA reply (Figs. 10, 11): a JSON list of ``{"question", "answer"}`` objects."""
    data = _load_structured(text)
    if not isinstance(data, list):
        raise MalformedReply("not_list", f"QA reply is a {type(data).__name__}, not a list")
    out = []
    for i, item in enumerate(data):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("question"), str)
            or not isinstance(item.get("answer"), str)
        ):
            raise MalformedReply("wrong_keys", f"QA item {i} lacks string 'question' and 'answer': {item!r}")
        out.append({"question": item["question"].strip(), "answer": item["answer"].strip()})
    if not out:
        raise MalformedReply("empty", "QA reply is an empty list")
    return out


def parse_judgement(text: str) -> tuple[int, bool]:
    """Table 7 reply ``"Quality": "4", "Correct": "Yes", ...`` → (quality, correct)."""
    q, c = _QUALITY_RE.search(text), _CORRECT_RE.search(text)
    if not q or not c:
        raise MalformedReply("wrong_keys", "judge reply lacks a 1-5 'Quality' or a Yes/No 'Correct'")
    return int(q.group(1)), c.group(1).lower() == "yes"
