"""What a benchmark is: a small declarative unit the runner knows nothing else about.

A :class:`Task` says which files it reads (:meth:`Task.load` → :class:`Item` s, each an image, the
user-turn prompt and the reference answer), how one answer is scored (:meth:`Task.score`) and how
scores are combined (:meth:`Task.aggregate`). Tasks are registered by name in :data:`REGISTRY`;
adding a benchmark means adding a module under ``benchmarks/`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(FileNotFoundError):
    """A benchmark's files are missing or not in the published format; the message says which."""


class ScoreUnavailable(RuntimeError):
    """An answer could not be scored now (a judge endpoint failed): the item is listed as failed, not scored as wrong,
    and is scored again on the next run."""


@dataclass
class Item:
    """One question to the model.

    ``image`` is a file path or the encoded image bytes (MMBench ships base64 in its TSV).
    ``width``/``height`` are the annotated image size when the benchmark has one: the runner checks
    it against the decoded image, because a box scored in the wrong frame is the classic REC bug.
    """

    id: str
    image: str | bytes | None
    prompt: str
    reference: dict[str, Any]
    width: int | None = None
    height: int | None = None


@dataclass
class EvalOptions:
    """Choices a user can make on the command line that some tasks read."""

    rec_prompt: str = "paper"  # "paper" ("Output the coordinate of <exp>") or "lmms" (lmms-eval's wording)
    judge: Any = None  # a tinygroundinggpt.eval.judge.Judge, needed by the judged tasks only
    llava_rules: str | None = None  # LLaVA's rule.json, to review LLaVA-Bench with its exact wording


class Task:
    """Base class; subclasses set the class attributes and implement ``load`` and ``score``."""

    name: str = ""
    family: str = ""  # groups tasks into the paper's tables (see report.py)
    protocol: str = ""  # one line saying which published protocol the numbers follow
    headline: str = ""  # the metric the paper's tables show
    max_new_tokens: int = 32

    def load(self, data_root: Path) -> list[Item]:
        raise NotImplementedError

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        raise NotImplementedError

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, float]:
        """Default: the mean of every numeric field, as a percentage."""
        if not scores:  # every item failed (e.g. the images are missing): the failures are the report
            return {}
        keys = [k for k, v in scores[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return {k: 100.0 * sum(float(s[k]) for s in scores) / len(scores) for k in keys}


TaskFactory = Callable[[EvalOptions], Task]
REGISTRY: dict[str, TaskFactory] = {}


def register(name: str, factory: TaskFactory) -> None:
    if name in REGISTRY:
        raise ValueError(f"task {name!r} is registered twice")
    REGISTRY[name] = factory


def task_names() -> list[str]:
    _load_benchmarks()
    return sorted(REGISTRY)


def get_task(name: str, options: EvalOptions | None = None) -> Task:
    _load_benchmarks()
    if name not in REGISTRY:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(REGISTRY))}")
    task = REGISTRY[name](options or EvalOptions())
    task.name = name
    return task


def _load_benchmarks() -> None:
    # Importing the package registers every benchmark module (each calls ``register`` at import).
    import tinygroundinggpt.eval.benchmarks  # noqa: F401


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`DataError` naming the benchmark and the expected layout."""
    if not path.exists():
        raise DataError(f"{what}: expected {path} (see tinygroundinggpt/eval/README.md for the data layout)")
    return path
