"""Stage recipes: which modules train and how, the optimiser schedule, and the data mixture.

A recipe is a YAML file (``recipes/stage*.yaml`` hold the paper's values, Table 5/6). Values can be
overridden with ``key=value`` strings (``learning_rate=1e-4``, ``modules.language_model=lora``), which is
how the tiny preset states its deviations (``recipes/tiny.yaml``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
STAGES = ("stage1a", "stage1b", "stage2", "stage3")
MODULES = ("vision_tower", "projector", "language_model")
MODES = ("frozen", "full", "lora")
LORA_DEFAULTS = {"r": 64, "alpha": 128, "dropout": 0.05}


class RecipeError(ValueError):
    """A recipe that names an unknown key, module, mode or data file."""


@dataclass
class DataSource:
    path: str
    weight: float = 1.0


@dataclass
class Recipe:
    name: str
    description: str = ""
    init: str = "previous"  # "assemble" | "previous" | a checkpoint path
    modules: dict[str, str] = field(default_factory=lambda: {"vision_tower": "frozen", "projector": "full"})
    # > 0: grow the language model to this many decoder layers before training (LLaMA Pro block expansion,
    # model/expansion.py); a model that already has them is left as it is
    language_model_layers: int = 0
    learning_rate: float = 2e-5
    module_learning_rates: dict[str, float] = field(default_factory=dict)  # e.g. a faster projector
    batch_size: int = 32
    gradient_accumulation: int = 1
    epochs: float = 1.0
    max_steps: int = -1
    warmup: float = 0.03
    weight_decay: float = 0.0
    schedule: str = "cosine"
    bf16: bool = True
    tf32: bool = True
    max_length: int = 2048
    gradient_checkpointing: bool = False
    object_augment: dict[str, float] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)  # r, alpha, dropout over LORA_DEFAULTS
    data: list[DataSource] = field(default_factory=list)
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500

    def __post_init__(self) -> None:
        # YAML 1.1 reads "1e-3" as a string; numbers in recipes and overrides are coerced here.
        for name in ("learning_rate", "epochs", "warmup", "weight_decay"):
            setattr(self, name, self._number(name, getattr(self, name), float))
        for name in (
            "batch_size", "gradient_accumulation", "max_steps", "max_length", "seed", "logging_steps",
            "language_model_layers", "save_steps",
        ):  # fmt: skip
            setattr(self, name, self._number(name, getattr(self, name), int))
        for name in ("modules", "module_learning_rates", "lora", "object_augment"):
            if not isinstance(getattr(self, name), dict):
                raise RecipeError(f"recipe {self.name}: {name} must be a mapping, got {getattr(self, name)!r}")
        if not isinstance(self.data, list):
            raise RecipeError(f"recipe {self.name}: data must be a list of {{path, weight}}, got {self.data!r}")
        self.lora = {**LORA_DEFAULTS, **self.lora}
        self.module_learning_rates = {
            k: self._number(f"module_learning_rates.{k}", v, float) for k, v in self.module_learning_rates.items()
        }
        self.data = [self._source(i, d) for i, d in enumerate(self.data)]
        for mod, mode in self.modules.items():
            if mod not in MODULES:
                raise RecipeError(f"recipe {self.name}: unknown module {mod!r} (modules are {MODULES})")
            if mode not in MODES:
                raise RecipeError(f"recipe {self.name}: module {mod} has mode {mode!r}; choose one of {MODES}")
        for mod in self.module_learning_rates:
            if mod not in MODULES:
                raise RecipeError(f"recipe {self.name}: learning rate for unknown module {mod!r}")
        if not self.data:
            raise RecipeError(f"recipe {self.name}: no data files")

    def _number(self, name: str, value: Any, kind: type) -> Any:
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise RecipeError(f"recipe {self.name}: {name} must be a number, got {value!r}") from None

    def _source(self, i: int, given: Any) -> DataSource:
        if isinstance(given, DataSource):
            return given
        if not isinstance(given, dict) or not isinstance(given.get("path"), str) or set(given) - {"path", "weight"}:
            raise RecipeError(f"recipe {self.name}: data[{i}] must be {{path: FILE, weight: W}}, got {given!r}")
        weight = self._number(f"data[{i}].weight", given.get("weight", 1.0), float)
        if not weight >= 0:
            raise RecipeError(f"recipe {self.name}: data[{i}].weight must be 0 or more, got {weight}")
        return DataSource(given["path"], weight)

    def mode(self, module: str) -> str:
        return self.modules.get(module, "frozen")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(value: str) -> Any:
    return yaml.safe_load(value)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (or a nested dict) onto a raw recipe dict."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy
    items = overrides.items() if isinstance(overrides, dict) else (o.split("=", 1) for o in overrides)
    valid = {f.name for f in fields(Recipe)}
    for item in items:
        if len(item) != 2:
            raise RecipeError(f"override must look like key=value, got {'='.join(item)!r}")
        key, value = item
        value = _coerce(value) if isinstance(value, str) else value
        parts = key.split(".")
        if parts[0] not in valid:
            raise RecipeError(f"unknown recipe key {parts[0]!r}; keys are {sorted(valid)}")
        node = raw
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # e.g. data.0.weight: data is a list, replaced whole
                where = ".".join(parts[: i + 1])
                raise RecipeError(f"override {key}: {where} is not a mapping ({node!r}); set {where}=... whole")
        node[parts[-1]] = value
    return raw


def load_recipe(name_or_path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """A shipped stage by name (``stage2``) or a YAML file, with optional overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RecipeError(f"no recipe {name_or_path!r}: {path} does not exist (shipped: {', '.join(STAGES)})")
    raw = yaml.safe_load(path.read_text())
    if overrides:
        raw = apply_overrides(raw, overrides)
    unknown = set(raw) - {f.name for f in fields(Recipe)}
    if unknown:
        raise RecipeError(f"{path}: unknown recipe key(s) {sorted(unknown)}")
    return Recipe(**raw)


def _tiny_yaml() -> dict[str, Any]:
    return yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())


def tiny_overrides() -> dict[str, dict[str, Any]]:
    """Per-stage deviations of the tiny CPU preset from the paper's values (reasons in the YAML)."""
    return {k: v for k, v in _tiny_yaml().items() if k != "chain"}


def chain_stages(tiny: bool = False) -> tuple[str, ...]:
    """The stages a chain runs: the paper's four, or the tiny preset's list (which adds easier stages)."""
    return tuple(_tiny_yaml()["chain"]) if tiny else STAGES


def stage_recipe(
    stage: str | Path, overrides: list[str] | dict[str, Any] | None = None, *, tiny: bool = False
) -> Recipe:
    """A chain stage's recipe: the shipped stage (or a YAML file), with the tiny preset's deviations when
    ``tiny``, then ``overrides``. A stage only the tiny chain has (e.g. ``stage2_easy``) names the shipped
    stage it is a variant of with ``recipe:`` in tiny.yaml, and keeps its own name."""
    tiny_stage = dict(tiny_overrides().get(str(stage), {})) if tiny else {}
    base = tiny_stage.pop("recipe", stage)
    if isinstance(overrides, dict):
        extra = overrides
    else:
        bad = [o for o in overrides or [] if "=" not in o]
        if bad:
            raise RecipeError(f"override must look like key=value, got {bad[0]!r}")
        extra = dict(o.split("=", 1) for o in overrides or [])
    recipe = load_recipe(base, {**tiny_stage, **extra})
    if base != stage:
        recipe.name = str(stage)
    return recipe
