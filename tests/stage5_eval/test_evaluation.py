"""`validate` with EvaluationSystem on tiny models: every method edits the same held-out world pairs with
the same seeds, the table's figures match a direct recomputation, and they do not depend on the batch."""

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch.testing import assert_close

from portrait_edit.data.eval_pairs import EvalPairsDataModule, WorldEvalDataset, collate_eval
from portrait_edit.evaluation.direction_classifier import DirectionClassifier, DirectionClassifierConfig
from portrait_edit.evaluation.methods import MCDMMethod, MethodSpec
from portrait_edit.loading.components import load_tokenizer
from portrait_edit.metrics.image import ssim
from portrait_edit.models.clip_pair import build_clip, export_clip
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.systems.evaluation import EvaluationSystem
from portrait_edit.systems.mcdm import MCDMSystem

SIZE = 32
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
DIRECTIONS = ["santa", "angry"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    conditioning = MCDMConditioning(
        clip_image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3, num_image_tokens=3
    )
    MCDMSystem(base="tiny", conditioning=conditioning, val_edits=0).export(root / "mcdm", dtype=torch.float32)
    export_clip(build_clip("tiny", "tiny"), load_tokenizer("tiny"), root / "clip")
    DirectionClassifier(
        DirectionClassifierConfig(channels=[8, 16], image_size=SIZE, groups=4)
    ).save_pretrained(root / "classifier")
    return root


def methods(root):
    return [
        MethodSpec("Ours", "mcdm", str(root / "mcdm"), steps=2),
        MethodSpec("w/o Mask", "mcdm", str(root / "mcdm"), use_mask=False, steps=2),
        MethodSpec("SDEdit 0.5", "sdedit", "tiny", strength=0.5, steps=4),
        MethodSpec("DiffEdit", "diffedit", "tiny", steps=4),
    ]


def evaluate(root, out, batch_size):
    system = EvaluationSystem(
        methods(root), output_dir=str(out), classifier=str(root / "classifier"), image_encoder=str(root / "clip"),
        clip_image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3, grid_samples=3,
    )  # fmt: skip
    data = EvalPairsDataModule(
        "world", inputs=2, directions=DIRECTIONS, image_size=SIZE, batch_size=batch_size
    )
    Trainer(**QUIET).validate(system, datamodule=data)
    return json.loads((out / "table.json").read_text())


def test_table_rows_figures_and_pages(models, tmp_path):
    table = evaluate(models, tmp_path / "a", batch_size=2)
    rows = {row.pop("method"): row for row in table["rows"]}
    assert list(rows) == ["Ours", "w/o Mask", "SDEdit 0.5", "DiffEdit"] and table["items"] == 4
    assert rows["Ours"]["mask_iou"] is not None and rows["DiffEdit"]["mask_iou"] is not None
    assert rows["w/o Mask"]["mask_iou"] is None and rows["SDEdit 0.5"]["mask_iou"] is None
    for row in rows.values():
        assert 0 <= row["fidelity"] <= 1 and -1 <= row["ssim"] <= 1 and row["fid_clip"] >= 0
    assert {"lpips", "identity", "fid"} <= set(table["unavailable"])  # no weights / encoder configured
    # Independent recomputation of Ours' SSIM: the editor on the same items and seeds, one at a time.
    items = [WorldEvalDataset(2, DIRECTIONS, SIZE)[i] for i in range(4)]
    editor = MCDMEditor.from_pretrained(models / "mcdm")
    values = []
    for item in items:
        batch = collate_eval([item])
        edit = editor.edit(batch["source"], batch["p_a"], batch["p_b"], threshold=0.35 if item["direction"] == "angry" else 0.2,
                           steps=2, seed=batch["seed"].tolist())  # fmt: skip
        values.append(float(ssim(edit.images, batch["target"])[0]))
    assert rows["Ours"]["ssim"] == pytest.approx(np.mean(values), abs=1e-4)
    # Table 1 reports each task apart: santa is a costume, angry an expression (items alternate).
    by_task = {t: {r["method"]: r for r in part["rows"]} for t, part in table["by_task"].items()}
    assert {t: part["directions"] for t, part in table["by_task"].items()} == {
        "costume": ["santa"], "expression": ["angry"]
    }  # fmt: skip
    assert by_task["costume"]["Ours"]["ssim"] == pytest.approx(np.mean(values[0::2]), abs=1e-4)
    assert by_task["expression"]["Ours"]["ssim"] == pytest.approx(np.mean(values[1::2]), abs=1e-4)
    page = (tmp_path / "a" / "index.html").read_text()
    markdown = (tmp_path / "a" / "table.md").read_text()
    assert page.count("<tr><td colspan") == 3 and "n/a" in markdown and "## costume (santa)" in markdown
    csv_lines = (tmp_path / "a" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("subset,method,ssim") and len(csv_lines) == 1 + 3 * 4
    assert [line.split(",")[0] for line in csv_lines[1::4]] == ["all", "costume", "expression"]
    # The same table from batches of 3 (another grouping of the items): nothing depends on the batch.
    other = {row["method"]: row for row in evaluate(models, tmp_path / "b", batch_size=3)["rows"]}
    for name, row in rows.items():
        for key, value in row.items():
            if value is not None:
                assert other[name][key] == pytest.approx(value, abs=1e-4), (name, key)


@pytest.mark.slow
def test_two_process_ddp_gives_the_one_process_table(models, tmp_path):
    """Real gloo DDP (2 processes, 5 items: one rank gets a padding duplicate) against 1 process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))  # as each of the 2 processes: same float reductions
    try:
        tables = []
        for devices in (1, 2):
            out = tmp_path / f"devices{devices}"
            system = EvaluationSystem(
                methods(models)[:3], output_dir=str(out), classifier=str(models / "classifier"),
                image_encoder=str(models / "clip"), clip_image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            )  # fmt: skip
            data = EvalPairsDataModule("world", inputs=5, directions=["santa"], image_size=SIZE, batch_size=2)
            strategy = {"strategy": "ddp_spawn", "devices": 2} if devices == 2 else {"devices": 1}
            Trainer(**QUIET, **strategy).validate(system, datamodule=data)
            tables.append(json.loads((out / "table.json").read_text()))
    finally:
        torch.set_num_threads(threads)
    one, two = tables
    assert one["items"] == two["items"] == 5
    for a, b in zip(one["rows"], two["rows"]):
        assert a["method"] == b["method"]
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-5), (a["method"], key)


class Counted:
    """A method that counts its calls (the real method does the work)."""

    def __init__(self, method, calls, name):
        self.method, self.calls, self.name = method, calls, name

    def __call__(self, *args):
        self.calls[self.name] = self.calls.get(self.name, 0) + 1
        return self.method(*args)

    def modules(self):
        return self.method.modules()


def test_cached_items_resume_an_interrupted_run_and_follow_the_models(models, tmp_path, monkeypatch):
    """Item i's results per method are kept: a run stopped after one batch resumes with the other, a
    rerun edits nothing, a rewritten checkpoint recomputes only its rows, a changed score definition
    every row; every table equals an uncached run's."""
    from portrait_edit.systems import evaluation

    def run(out, cache=True, batches=None):
        calls: dict[str, int] = {}
        system = EvaluationSystem(
            methods(models), output_dir=str(out), classifier=str(models / "classifier"),
            image_encoder=str(models / "clip"), clip_image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            grid_samples=3, cache=cache,
        )  # fmt: skip
        system.methods = [Counted(m, calls, s.name) for m, s in zip(system.methods, system.specs)]
        data = EvalPairsDataModule("world", inputs=2, directions=DIRECTIONS, image_size=SIZE, batch_size=2)
        Trainer(**QUIET, limit_val_batches=batches).validate(system, datamodule=data)
        return calls, json.loads((out / "table.json").read_text())

    _, reference = run(tmp_path / "plain", cache=False)
    assert not (tmp_path / "plain" / "cache").exists()
    calls, _ = run(tmp_path / "a", batches=1)  # interrupted after its first batch
    assert calls == {name: 1 for name in ("Ours", "w/o Mask", "SDEdit 0.5", "DiffEdit")}
    calls, resumed = run(tmp_path / "a")
    assert calls == {name: 1 for name in ("Ours", "w/o Mask", "SDEdit 0.5", "DiffEdit")}  # the second batch
    calls, again = run(tmp_path / "a")
    assert calls == {}
    for table in (resumed, again):
        assert table["rows"] == reference["rows"] and table["by_task"] == reference["by_task"]
    (models / "mcdm" / "mcdm.json").touch()  # a retrained export: a new modification time
    calls, _ = run(tmp_path / "a")
    assert calls == {"Ours": 2, "w/o Mask": 2}
    monkeypatch.setattr(evaluation, "SCORES_VERSION", evaluation.SCORES_VERSION + 1)  # a corrected score
    calls, _ = run(tmp_path / "a")
    assert calls == {name: 2 for name in ("Ours", "w/o Mask", "SDEdit 0.5", "DiffEdit")}


def test_an_mcdm_row_can_keep_the_source_outside_its_mask(models):
    spec = MethodSpec("Ours + kept source", "mcdm", str(models / "mcdm"), keep_source=True, steps=2)
    batch = collate_eval([WorldEvalDataset(1, DIRECTIONS, SIZE)[i] for i in range(2)])
    got = MCDMMethod(spec)(batch)
    editor = MCDMEditor.from_pretrained(models / "mcdm")
    for i, threshold in enumerate((0.2, 0.35)):  # santa, angry
        expected = editor.edit(batch["source"][i : i + 1], batch["p_a"][i : i + 1], batch["p_b"][i : i + 1],
                               threshold=threshold, steps=2, seed=[int(batch["seed"][i])], keep_source=True)  # fmt: skip
        assert_close(got.images[i : i + 1], expected.images, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="keep_source"):
        MethodSpec("w/o Mask", "mcdm", "m", use_mask=False, keep_source=True)


def test_baseline_rows_without_a_model_take_the_tables_base(models):
    """A table names its base once: SDEdit / DiffEdit rows without `model` edit with the evaluation's base."""
    specs = [
        MethodSpec("Ours", "mcdm", str(models / "mcdm"), steps=2),
        MethodSpec("SDEdit 0.5", "sdedit", steps=4),
    ]
    system = EvaluationSystem(
        specs, base="tiny", clip_image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    assert [s.model for s in system.specs] == [str(models / "mcdm"), "tiny"]
    with pytest.raises(ValueError, match="evaluation's `base`"):
        EvaluationSystem([MethodSpec("SDEdit 0.5", "sdedit", steps=4)])
    with pytest.raises(ValueError, match="evaluation's `mcdm`"):
        EvaluationSystem([MethodSpec("Ours", "mcdm")])
    again = EvaluationSystem(
        [MethodSpec("Ours", "mcdm"), MethodSpec("VAE", "vae")], mcdm=str(models / "mcdm")
    )
    assert [s.model for s in again.specs] == [str(models / "mcdm")] * 2


def test_the_references_and_the_per_direction_page(models, tmp_path):
    """The rows that edit nothing are what they name (x_A, its VAE round trip, the exact target, the
    latent grid's best mask, whose IoU is the ceiling), the lambda sweep's best equals a
    recomputation from the soft masks, and the per-direction page's cells are the rows of each direction."""
    from portrait_edit.evaluation.judges import SWEEP
    from portrait_edit.loading.components import load_vae, vae_roundtrip, vae_scale_factor
    from portrait_edit.metrics.image import grid_iou_ceiling, mask_iou, masked_ssim

    specs = [MethodSpec("Ours", "mcdm", steps=2), MethodSpec("x_A", "input"), MethodSpec("VAE", "vae"),
             MethodSpec("exact", "target"), MethodSpec("grid", "grid")]  # fmt: skip
    columns = [{"label": "iou", "method": "Ours", "score": "mask_iou"},
               {"label": "best", "method": "Ours", "score": "mask_iou_best"},
               {"label": "lambda", "method": "Ours", "score": "lambda_best"},
               {"label": "ceiling", "method": "grid", "score": "mask_iou"},
               {"label": "vae keeps", "method": "VAE", "score": "preservation"},
               {"label": "x_A ssim", "method": "x_A", "score": "ssim"}]  # fmt: skip
    page = tmp_path / "page.md"
    system = EvaluationSystem(
        specs, mcdm=str(models / "mcdm"), output_dir=str(tmp_path / "out"), clip_image_size=SIZE,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, direction_page=str(page), direction_columns=columns,
        direction_figure=["Ours:mask", "Ours"], cache=False,
    )  # fmt: skip
    data = EvalPairsDataModule("world", inputs=2, directions=DIRECTIONS, image_size=SIZE, batch_size=4)
    Trainer(**QUIET).validate(system, datamodule=data)
    cells = json.loads(page.with_suffix(".json").read_text())["table"]
    assert set(cells) == {*DIRECTIONS, "all"} and page.with_suffix(".jpg").is_file()
    batch = collate_eval([data.dataset[i] for i in range(len(data.dataset))])
    vae = load_vae(str(models / "mcdm"), torch_dtype=torch.float32)
    editor = MCDMEditor.from_pretrained(models / "mcdm")
    for d, direction in enumerate(DIRECTIONS):
        rows = [i for i, x in enumerate(batch["direction"]) if x == direction]
        source, target, region = batch["source"][rows], batch["target"][rows], batch["region"][rows]
        assert cells[direction]["x_A ssim"] == pytest.approx(ssim(source, target).mean().item(), abs=1e-6)
        kept = masked_ssim(vae_roundtrip(vae, source), source, 1 - region).mean().item()
        assert cells[direction]["vae keeps"] == pytest.approx(kept, abs=1e-5)
        best = grid_iou_ceiling(region, vae_scale_factor(vae))  # brute-forced in tests/unit
        assert cells[direction]["ceiling"] == pytest.approx(best.mean().item(), abs=1e-6)
        prompts = editor.edit(source, [batch["p_a"][i] for i in rows], [batch["p_b"][i] for i in rows],
                              threshold=0.2 if d == 0 else 0.35, steps=2, seed=batch["seed"][rows].tolist())  # fmt: skip
        sweep = torch.stack([mask_iou((prompts.soft_masks > lam).float(), region) for lam in SWEEP], 1).mean(
            0
        )
        assert cells[direction]["best"] == pytest.approx(sweep.max().item(), abs=1e-6)
        assert cells[direction]["lambda"] == SWEEP[int(sweep.argmax())]
        assert cells[direction]["iou"] == pytest.approx(
            mask_iou(prompts.masks, region).mean().item(), abs=1e-6
        )
    assert cells["all"]["best"] == pytest.approx(np.mean([cells[d]["best"] for d in DIRECTIONS]), abs=1e-9)
