"""House rule 5: every YAML in configs/ is parsed against the code.

Stage configs (`configs/<world>/<stage>.yaml`) start with the command that runs them
(`# portrait-edit <subcommand> --config ...`); pieces (`configs/trainer/`, `configs/logger/`) are parsed
stacked on a stage config, the way they are used, and ablations (`configs/<world>/ablations/`) stacked on
that world's mcdm.yaml (or on the stage their first line's command names first), and the demo's overrides (`configs/<world>/demo/<stage>.yaml`) on the stage of the
same name.
"""

from pathlib import Path

import pytest
import yaml

from portrait_edit.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PIECE_DIRS = {"trainer", "logger", "ablations", "demo", "bases"}
STAGES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in PIECE_DIRS)
PIECES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name in PIECE_DIRS)
SUBCOMMANDS = {"fit", "validate", "test", "predict"}


def subcommand_of(path: Path) -> str:
    first = path.read_text().splitlines()[0].split()
    assert first[:2] == ["#", "portrait-edit"] and first[2] in SUBCOMMANDS, (
        f"{path} must start with the command that runs it, e.g. '# portrait-edit fit --config {path.name}'"
    )
    return first[2]


def print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


def test_there_are_configs_to_check():
    assert STAGES and PIECES


def stacked_on(path: Path) -> list[Path]:
    """The configs a stage's first-line command stacks, in order (the stage itself last)."""
    words = path.read_text().splitlines()[0].split()
    named = [CONFIGS.parent / words[k + 1] for k, w in enumerate(words) if w == "--config"]
    return named if named and named[-1].resolve() == path.resolve() else [path]


@pytest.mark.parametrize("path", STAGES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_stage_config_parses_against_the_code(path, capsys):
    """A stage config alone, or stacked as its first line runs it (generate_val.yaml on generate.yaml)."""
    stack = stacked_on(path)
    raw = {}
    for config in stack:
        for key, value in (yaml.safe_load(config.read_text()) or {}).items():
            raw.setdefault(key, value)
    seed = raw.get("seed_everything")
    assert isinstance(seed, int) and not isinstance(seed, bool), f"{path}: seed_everything must be an integer"
    resolved = print_config(capsys, subcommand_of(path), *[a for c in stack for a in ("--config", str(c))])
    assert resolved["seed_everything"] == seed
    assert resolved["model"]["class_path"] == raw["model"]["class_path"]
    assert resolved["data"]["class_path"] == raw["data"]["class_path"]
    assert_applied(resolved, yaml.safe_load(path.read_text()), path.name)


def assert_applied(resolved, piece, where: str) -> None:
    """Every value of `piece` is in `resolved` (dicts compared key by key, lists item by item)."""
    if isinstance(piece, dict):
        for key, value in piece.items():
            assert isinstance(resolved, dict) and key in resolved, f"{where}.{key} was not applied"
            assert_applied(resolved[key], value, f"{where}.{key}")
    elif isinstance(piece, list):
        assert isinstance(resolved, list) and len(resolved) == len(piece), f"{where} was not applied"
        for k, (got, value) in enumerate(zip(resolved, piece)):
            assert_applied(got, value, f"{where}[{k}]")
    else:
        assert resolved == piece, f"{where}: {resolved!r} != {piece!r}"


@pytest.mark.parametrize("path", PIECES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_piece_parses_stacked_on_a_stage(path, capsys):
    first = path.read_text().splitlines()[0].split()
    if first[:2] == ["#", "portrait-edit"]:  # a piece that names its stage: its first --config
        stage = CONFIGS.parent / first[first.index("--config") + 1]
    elif path.parent.name == "ablations":
        stage = path.parent.parent / "mcdm.yaml"
    elif path.parent.name == "demo":
        stage = path.parent.parent / path.name
    else:
        stage = CONFIGS / "mini" / "world_pairs.yaml"
    resolved = print_config(capsys, subcommand_of(stage), "--config", str(stage), "--config", str(path))
    assert_applied(resolved, yaml.safe_load(path.read_text()), path.name)
