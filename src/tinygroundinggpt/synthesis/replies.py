"""Parsers for model replies. Each returns the parsed value or raises :class:`MalformedReply` saying why.

Models wrap JSON in code fences, use Python quoting (the paper's own Fig. 11 example does), add
prose around the list, write one object per line without a list (Fig. 11 again), or are cut off by
the token limit. QA replies are therefore read item by item: every complete, valid item is kept and
each dropped one is returned as a :class:`MalformedReply`, so a reply is either used or counted.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_FENCE_RE = re.compile(r"```[a-zA-Z]*[ \t]*\n?(.*?)(?:\n?[ \t]*```|\Z)", re.S)
_LIST_OF_OBJECTS_RE = re.compile(r"\[\s*\{")
# the field names as words ("Incorrect" is not "Correct"), a score not out of something else ("5/10")
_QUALITY_RE = re.compile(r'(?<![a-z])"?Quality"?\s*:\s*"?\s*([1-5])(?:\.\d+)?\b(?!\s*/)', re.I)
_CORRECT_RE = re.compile(r'(?<![a-z])"?Correct"?\s*:\s*"?\s*(yes|no)\b', re.I)
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)
_CLOSE = {"[": "]", "{": "}", "(": ")"}


class MalformedReply(ValueError):
    """A reply that cannot be used, with the reason (logged and counted, never fatal)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _strip_fence(text: str) -> str:
    """The body of the first code fence (prose around it dropped; an unclosed one runs to the end), else
    the text."""
    m = _FENCE_RE.search(text)
    return m.group(1).strip() if m else text.strip()


def _literal(text: str) -> Any:
    """JSON, else a Python literal (the paper's quoting); raises ValueError when it is neither."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # deep nesting: a looping model cut off at its token limit
        pass
    try:
        return ast.literal_eval(text)
    except _LITERAL_ERRORS as exc:
        raise ValueError(str(exc)) from exc


def _matching_close(text: str, start: int) -> int | None:
    """Index just past the bracket closing ``text[start]``, skipping quoted strings; None if unclosed."""
    depth, quote, i = 0, "", start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c == '"' or (c == "'" and _opens_item(text, start, i)):
            quote = c
        elif c in _CLOSE:
            depth += 1
        elif c in _CLOSE.values():
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _opens_item(text: str, start: int, i: int) -> bool:
    """Whether the ``'`` at ``i`` opens a quoted item (after a bracket, comma or colon) rather than being an
    apostrophe inside an unquoted one ("man's shirt")."""
    before = text[start:i].rstrip()
    return not before or before[-1] in "[({,:"


def _decode_at(text: str, start: int) -> tuple[Any, int | None]:
    """The value starting at ``text[start]`` and the index past it; (None, end) when it does not decode,
    end None when it never closes (a cut-off reply)."""
    try:
        return json.JSONDecoder().raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):
        pass
    end = _matching_close(text, start)
    if end is None:
        return None, None
    try:
        return ast.literal_eval(text[start:end]), end
    except _LITERAL_ERRORS:
        return None, end


def normalise_name(name: str) -> str:
    return " ".join(name.strip().strip("\"'`").split()).lower()


def _bracketed(text: str, partial: bool) -> str:
    """The first bracketed list, from its ``[`` to the ``]`` that closes it (prose around dropped); with
    ``partial`` (a cut-off reply) an unclosed list runs to the end."""
    body = _strip_fence(text)
    start = body.find("[")
    end = _matching_close(body, start) if start != -1 else None
    if start == -1 or (end is None and not partial):
        raise MalformedReply("not_list", "reply holds no bracketed list")
    return body[start:end]


def parse_object_list(text: str, *, partial: bool = False) -> list[str]:
    """Fig. 7 recognition reply ``[object1, object2, ...]`` (quoted or not) → distinct names, in order.

    ``partial``: the reply was cut off by the token limit; the last, possibly cut, name is dropped."""
    body = _bracketed(text, partial)
    cut = not body.endswith("]")
    try:
        items = _literal(body)  # JSON or Python quoting: a quoted name may hold a comma
    except ValueError:
        inner = body[1:] if cut else body[1:-1]
        items = inner.split(",")[:-1] if cut else inner.split(",")
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


def _top_level_groups(body: str) -> tuple[list[str], bool]:
    """The contents of each ``(...)`` or ``[...]`` group directly inside ``body`` (nested brackets kept
    inside their group), and whether the last group was left unclosed."""
    groups, depth, start = [], 0, -1
    for i, c in enumerate(body):
        if c in "([{":
            depth += 1
            if c in "([" and depth == 2:  # depth 1 is the enclosing list
                start = i + 1
        elif c in ")]}":
            if c in ")]" and depth == 2 and start >= 0:
                groups.append(body[start:i])
                start = -1
            depth -= 1
    return groups, start >= 0


def _split_top_level(group: str) -> list[str]:
    """Split on commas outside brackets, so an instance label like ``person (2)`` stays one part."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(group):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(group[start:i])
            start = i + 1
    parts.append(group[start:])
    return [p.strip().strip("\"'`").strip() for p in parts]


def parse_triples(text: str, *, partial: bool = False) -> tuple[list[tuple[str, str, str]], list[MalformedReply]]:
    """Fig. 7 relation reply ``[(a, rel, b), ...]`` → its valid triples (instances not yet checked against the
    list) and one problem per dropped item, as :func:`parse_qa_reply`.

    Triples may be quoted (JSON lists of lists, Python tuples) or not; unquoted instances may hold brackets
    themselves (``(person (2), holding, umbrella)``). ``partial``: the reply was cut off by the token limit;
    its complete triples are kept. Raises :class:`MalformedReply` when the reply holds no usable triple but
    holds something else."""
    body = _bracketed(text, partial)
    try:
        items, cut = _literal(body), False
    except ValueError:  # unquoted names: read the groups one by one
        groups, cut = _top_level_groups(body)
        items = [_split_top_level(g) for g in groups]
    triples, problems = [], []
    for i, item in enumerate(items):
        ok = isinstance(item, list | tuple) and all(isinstance(p, str) for p in item)
        parts = [p.strip() for p in item] if ok else []
        if len(parts) < 3 or not all(parts):
            problems.append(MalformedReply("wrong_arity", f"relation item {i} is not an (a, relation, b): {item!r}"))
            continue
        # A relation phrase may itself hold a comma; the instances are the first and last parts.
        triples.append((parts[0], ", ".join(parts[1:-1]), parts[-1]))
    if not triples and problems:
        raise problems[0]
    if not triples and not cut and body.strip("[] \n\t"):
        raise MalformedReply("not_list", "relation reply holds no (a, relation, b) triple")
    return triples, problems


def _items_of(data: Any) -> list[Any]:
    """A decoded QA reply as its list of items."""
    if isinstance(data, dict) and not {"question", "answer"} <= data.keys():
        lists = [v for v in data.values() if isinstance(v, list)]  # {"qa_pairs": [...]}
        if len(lists) != 1:
            raise MalformedReply("not_list", "QA reply is an object, not a list")
        data = lists[0]
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list | tuple):  # objects separated by commas decode as a tuple
        return list(data)
    raise MalformedReply("not_list", f"QA reply is a {type(data).__name__}, not a list")


def _qa_candidates(body: str) -> tuple[list[Any], list[MalformedReply]] | None:
    """The items of a QA reply: the whole reply as one value, else its outermost list of objects (prose
    around it), else each object scanned one by one (Fig. 11 writes one per line; a cut-off reply ends
    in a broken one). None when nothing looks like a QA."""
    try:
        return _items_of(_literal(body)), []
    except ValueError as exc:
        if isinstance(exc, MalformedReply):
            raise
    m = _LIST_OF_OBJECTS_RE.search(body)
    if m:
        value, _ = _decode_at(body, m.start())
        if isinstance(value, list):
            return value, []
    items: list[Any] = []
    problems: list[MalformedReply] = []
    pos = 0
    while (start := body.find("{", pos)) != -1:
        value, end = _decode_at(body, start)
        if end is None:
            problems.append(MalformedReply("unterminated_item", f"QA item {len(items)} never closes"))
            break
        if value is None:
            problems.append(MalformedReply("bad_item", f"QA item {len(items)} is neither JSON nor a literal"))
        else:
            items.append(value)
        pos = end
    return (items, problems) if items or problems else None


def parse_qa_reply(text: str) -> tuple[list[dict[str, str]], list[MalformedReply]]:
    """QA reply (Figs. 10, 11) → its valid ``{"question", "answer"}`` items and one problem per dropped item.

    Accepts a JSON or Python-literal list, with or without a code fence and prose around it, or objects
    one per line; a cut-off reply keeps its complete items. Raises :class:`MalformedReply` when no item
    is usable."""
    body = _strip_fence(text)
    found = _qa_candidates(body)
    if found is None:
        raise MalformedReply("not_json", "reply holds neither a JSON nor a literal list of QAs")
    candidates, problems = found
    out = []
    for i, item in enumerate(candidates):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("question"), str)
            or not isinstance(item.get("answer"), str)
        ):
            problems.append(MalformedReply("wrong_keys", f"QA item {i} lacks string 'question' and 'answer': {item!r}"))
            continue
        out.append({"question": item["question"].strip(), "answer": item["answer"].strip()})
    if not out:
        raise problems[0] if problems else MalformedReply("empty", "QA reply is an empty list")
    return out, problems


def parse_judgement(text: str) -> tuple[int, bool]:
    """Table 7 reply ``"Quality": "4", "Correct": "Yes", ...`` → (quality, correct)."""
    q, c = _QUALITY_RE.search(text), _CORRECT_RE.search(text)
    if not q or not c:
        raise MalformedReply("wrong_keys", "judge reply lacks a 1-5 'Quality' or a Yes/No 'Correct'")
    return int(q.group(1)), c.group(1).lower() == "yes"
