"""Prompt templates (data/prompts/*.json) and the paper's p / p_a / p_b captions."""

import json

import pytest

from portrait_edit.tasks import (
    available_tasks,
    caption,
    load_templates,
    prompts_for,
    task_for_direction,
)


def test_shipped_templates_give_the_paper_prompts():
    assert {"costume", "expression"} <= set(available_tasks())
    assert prompts_for("santa", "woman") == {
        "p": "the same woman on the left and right",
        "p_a": "a woman, normal costume",
        "p_b": "a woman, santa claus costume",
    }
    assert prompts_for("laughing", "man")["p_a"] == "a man, neutral expression"
    assert prompts_for("laughing", "man", task="expression")["p_b"] == "a man, laughing"
    assert caption("man", "royal", "costume") == "a man, traditional golden palace costume"
    assert caption("woman", "sheep", "costume") == "a woman, cute white sheep costume"
    assert caption("woman", None, "expression") == "a woman, neutral expression"
    assert task_for_direction("flower") == "costume" and task_for_direction("crying") == "expression"
    names = [name for name, _ in load_templates("costume").directions]
    assert names == ["flower", "sheep", "santa", "royal"]


def test_unknown_direction_and_bad_gender_are_value_errors():
    with pytest.raises(ValueError, match="sheep"):
        prompts_for("pirate", "man")
    with pytest.raises(ValueError, match="costume.json"):
        caption("man", "angry", "costume")
    with pytest.raises(ValueError, match="gender"):
        prompts_for("santa", "")


def test_bad_or_missing_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match="nope.json"):
        load_templates(str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_templates(str(broken))
    no_slot = tmp_path / "no_slot.json"
    spec = {
        "task": "hats",
        "shared": "the same {gender} on the left and right",
        "source": "a {gender}",
        "target": "a {gender}, {target}",
        "source_description": "no hat",
        "directions": {"cap": "wearing a cap"},
    }
    no_slot.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"no_slot.json.*\{source\}"):
        load_templates(str(no_slot))
    good = tmp_path / "hats.json"
    good.write_text(json.dumps({**spec, "source": "a {gender}, {source}"}))
    assert prompts_for("cap", "woman", task=str(good)) == {
        "p": "the same woman on the left and right",
        "p_a": "a woman, no hat",
        "p_b": "a woman, wearing a cap",
    }


def test_descriptions_follow_the_gender_word_in_all_three_prompts():
    from portrait_edit.tasks import person_descriptions
    from portrait_edit.world.describe import describe_identity
    from portrait_edit.world.identity import Identity

    prompts = prompts_for("santa", "woman", description="with red hair")
    assert prompts == {
        "p": "the same woman with red hair on the left and right",
        "p_a": "a woman with red hair, normal costume",
        "p_b": "a woman with red hair, santa claus costume",
    }
    assert len(person_descriptions()) >= 20 and all(d.startswith("with ") for d in person_descriptions())
    person = Identity(
        gender="man", face_shape="oval", face_width=1.0, skin=(200, 140, 98), hair_style="curly",
        hair_colour=(30, 25, 25), hair_detail=0.5, eye_colour=(1, 2, 3), glasses="round", beard="full",
        clothes_style="shirt", clothes_colour=(1, 2, 3), background_top=(1, 2, 3), background_bottom=(1, 2, 3),
    )  # fmt: skip
    assert (
        describe_identity(person)
        == "with tan skin and curly black hair and round glasses and a full black beard"
    )
    with pytest.raises(ValueError, match="commas"):
        prompts_for("santa", "woman", description="with red hair, blue eyes")


def test_the_tasks_name_the_worlds_directions_and_the_classifiers_labels():
    from portrait_edit.tasks import DIRECTIONS, LABELS, MASK_LAMBDAS, TASKS, mask_lambda

    assert TASKS == {"costume": ("flower", "sheep", "santa", "royal"),
                     "expression": ("angry", "shocked", "laughing", "crying")}  # fmt: skip
    assert DIRECTIONS == TASKS["costume"] + TASKS["expression"] and LABELS == ("source", *DIRECTIONS)
    assert MASK_LAMBDAS == {"costume": 0.2, "expression": 0.35}  # supplementary 1.3
    assert [mask_lambda(d) for d in ("santa", "crying")] == [0.2, 0.35] and mask_lambda("santa", 0.5) == 0.5
