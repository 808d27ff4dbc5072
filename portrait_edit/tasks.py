"""The editing tasks: their prompt templates, directions, mask lambdas and the direction classifier's labels.

The paper's two tasks (supplementary 1.1, 1.3) are costume (lambda 0.2) and expression (lambda 0.35);
their templates are loaded from data/prompts/*.json.

A task file holds:
    {"task": "costume",
     "shared": "the same {gender} on the left and right",     -> p
     "source": "a {gender}, {source}",                         -> p_a
     "target": "a {gender}, {target}",                         -> p_b
     "source_description": "normal costume",                   -> [Y]
     "directions": {"santa": "santa claus costume", ...}}      -> [Z] per edit direction
The identity tokens are later spliced in right before the gender word ([X]); that happens on token
embeddings, not here. This module knows nothing about the procedural world, so real tasks reuse it; the
world draws the directions of the shipped tasks (`DIRECTIONS`), and the direction classifier reads
`LABELS`: "source" or one of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from portrait_edit.paths import DATA_DIR

PROMPT_DIR = DATA_DIR / "prompts"
# lambda of the model-made mask per task (supplementary 1.3); a task without one uses DEFAULT_LAMBDA.
MASK_LAMBDAS = {"costume": 0.2, "expression": 0.35}
DEFAULT_LAMBDA = 0.2
_PLACEHOLDERS = {
    "shared": ("{gender}",),
    "source": ("{gender}", "{source}"),
    "target": ("{gender}", "{target}"),
}


@dataclass(frozen=True)
class PromptTemplates:
    """The templates of one task; `directions` maps direction name -> target description [Z]."""

    task: str
    shared: str
    source: str
    target: str
    source_description: str
    directions: tuple[tuple[str, str], ...]
    path: str

    def description(self, direction: str) -> str:
        for name, text in self.directions:
            if name == direction:
                return text
        names = [name for name, _ in self.directions]
        raise ValueError(
            f"unknown direction {direction!r} for task {self.task!r} ({self.path}); expected one of {names}"
        )


def prompt_file(task: str) -> Path:
    """A task name (a file data/prompts/<task>.json) or a path to a .json file."""
    if task.endswith(".json"):
        return Path(task)
    return PROMPT_DIR / f"{task}.json"


@lru_cache(maxsize=64)
def _load(path: str) -> PromptTemplates:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.json"))) or "none"
        raise ValueError(f"prompt file {path} does not exist (tasks in {PROMPT_DIR}: {known})") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"prompt file {path} is not readable JSON: {error}") from None
    keys = ("task", "shared", "source", "target", "source_description", "directions")
    if not isinstance(raw, dict) or any(key not in raw for key in keys):
        raise ValueError(f"prompt file {path} must be a JSON object with the keys {list(keys)}")
    for key in keys[:-1]:
        if not isinstance(raw[key], str) or not raw[key]:
            raise ValueError(f"prompt file {path}: {key!r} must be a non-empty string")
    for key, needed in _PLACEHOLDERS.items():
        missing = [p for p in needed if p not in raw[key]]
        if missing:
            raise ValueError(f"prompt file {path}: template {key!r} = {raw[key]!r} lacks {missing}")
    directions = raw["directions"]
    if (
        not isinstance(directions, dict)
        or not directions
        or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in directions.items())
    ):
        raise ValueError(f"prompt file {path}: 'directions' must map direction names to non-empty strings")
    return PromptTemplates(
        task=raw["task"],
        shared=raw["shared"],
        source=raw["source"],
        target=raw["target"],
        source_description=raw["source_description"],
        directions=tuple(directions.items()),
        path=path,
    )


def load_templates(task: str) -> PromptTemplates:
    """Templates of `task` (name in data/prompts or path to a .json file); cached per file."""
    return _load(str(prompt_file(task)))


def available_tasks() -> tuple[str, ...]:
    """Task names of the prompt files shipped in data/prompts, sorted."""
    return tuple(sorted(p.stem for p in PROMPT_DIR.glob("*.json")))


def task_for_direction(direction: str) -> str:
    """The shipped task whose file lists `direction`; ValueError if none or several do."""
    tasks = [t for t in available_tasks() if direction in dict(load_templates(t).directions)]
    if len(tasks) != 1:
        known = {t: [d for d, _ in load_templates(t).directions] for t in available_tasks()}
        raise ValueError(f"direction {direction!r} must belong to exactly one task; tasks: {known}")
    return tasks[0]


def mask_lambda(direction: str, threshold: float | None = None) -> float:
    """lambda of an edit in `direction`: `threshold` when set, else its task's (MASK_LAMBDAS)."""
    if threshold is not None:
        return threshold
    return MASK_LAMBDAS.get(task_for_direction(direction), DEFAULT_LAMBDA)


def _shipped_directions() -> dict[str, tuple[str, ...]]:
    return {task: tuple(name for name, _ in load_templates(task).directions) for task in available_tasks()}


# The shipped tasks' directions, task by task (costume, then expression), and the classifier's labels.
TASKS = _shipped_directions()
DIRECTIONS = tuple(d for directions in TASKS.values() for d in directions)
LABELS = ("source", *DIRECTIONS)  # label i names LABELS[i]


def _check_gender(gender: str) -> str:
    if not isinstance(gender, str) or not gender.strip() or "{" in gender:
        raise ValueError(f"gender must be a word such as 'man' or 'woman', got {gender!r}")
    return gender


def caption(gender: str, direction: str | None, task: str) -> str:
    """'a woman, normal costume' (direction None) or 'a woman, santa claus costume'."""
    templates = load_templates(task)
    gender = _check_gender(gender)
    if direction is None:
        return templates.source.format(gender=gender, source=templates.source_description)
    return templates.target.format(gender=gender, target=templates.description(direction))


def person_descriptions() -> list[str]:
    """The shipped person descriptions (data/prompts/descriptions/people.json), each following a gender word."""
    path = PROMPT_DIR / "descriptions" / "people.json"
    try:
        items = json.loads(path.read_text())["descriptions"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the person descriptions in {path}: {exc}") from exc
    return [str(d) for d in items]


def prompts_for(
    direction: str, gender: str, task: str | None = None, description: str | None = None
) -> dict[str, str]:
    """The paper's three prompts of one edit: p (shared), p_a (source), p_b (target).

    Args:
        direction: edit direction, e.g. "santa".
        gender: the [X] word, e.g. "woman".
        task: task name or prompt-file path; None finds the shipped task listing `direction`.
        description: a person description following the gender word in all three prompts ("with red
            hair": "a woman with red hair, santa claus costume"); the gender word stays first, so identity
            words can still go right before it.
    """
    if description:
        if "{" in description or "," in description:
            raise ValueError(
                f"a description may hold no braces or commas (the templates split on ','): {description!r}"
            )
        gender = f"{_check_gender(gender)} {description}"
    task = task if task is not None else task_for_direction(direction)
    templates = load_templates(task)
    return {
        "p": templates.shared.format(gender=_check_gender(gender)),
        "p_a": caption(gender, None, task),
        "p_b": caption(gender, direction, task),
    }
