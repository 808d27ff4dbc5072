"""`predict` with EditSystem + EditWriter on a tiny exported MCDM: every input in every direction, masks,
sticker sheets and JSON written, unreadable inputs reported, finished inputs skipped on a rerun."""

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from portrait_edit.data.edit_inputs import EditInputsDataModule
from portrait_edit.images import to_uint8
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.systems.edit import EditSystem, EditWriter
from portrait_edit.systems.mcdm import MCDMSystem
from portrait_edit.tasks import prompts_for
from portrait_edit.world import make_pair

SIZE = 32
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcdm")
    conditioning = MCDMConditioning(
        clip_image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3, num_image_tokens=3
    )
    MCDMSystem(base="tiny", conditioning=conditioning, val_edits=0).export(folder, dtype=torch.float32)
    return folder


def run(model, inputs, out, genders, **options):
    data = EditInputsDataModule(
        str(inputs), str(out), image_size=SIZE, batch_size=2, num_workers=0, genders=str(genders)
    )
    system = EditSystem(str(model), directions=["santa", "angry"], steps=2, mask_seeds=2, **options)
    Trainer(callbacks=[EditWriter(str(out))], **QUIET).predict(
        system, datamodule=data, return_predictions=False
    )


def one_portrait(tmp_path, direction):
    """A folder with one world portrait (person.png), its genders file, an output folder and the pair."""
    inputs, out = tmp_path / "inputs", tmp_path / "edits"
    inputs.mkdir()
    pair = make_pair(3, direction, size=SIZE)
    Image.fromarray(pair.src).save(inputs / "person.png")
    genders = tmp_path / "genders.json"
    genders.write_text(json.dumps({"person": pair.gender}))
    return inputs, out, genders, pair


def test_edits_every_input_in_every_direction_and_reports_bad_files(model, tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "edits"
    inputs.mkdir()
    for k, seed in enumerate((3, 4, 5)):
        Image.fromarray(make_pair(seed, "santa", size=SIZE).src).save(inputs / f"person{k}.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    genders = tmp_path / "genders.json"
    genders.write_text(
        json.dumps({"person0": "woman", "person1": "man", "person2": "woman", "broken": "man"})
    )
    run(model, inputs, out, genders)
    for k in range(3):
        folder = out / f"person{k}"
        for direction in ("santa", "angry"):
            assert np.asarray(Image.open(folder / f"{direction}.png")).shape == (SIZE, SIZE, 3)
            assert set(np.unique(np.asarray(Image.open(folder / f"{direction}_mask.png")))) <= {0, 255}
        assert np.asarray(Image.open(folder / "sticker.png")).shape == (SIZE, 3 * SIZE, 3)
        meta = json.loads((folder / "edit.json").read_text())
        assert meta["directions"]["santa"]["prompts"]["p_b"].startswith("a " + ("woman" if k != 1 else "man"))
        assert (
            meta["directions"]["angry"]["threshold"] == 0.35
            and meta["directions"]["santa"]["threshold"] == 0.2
        )
    report = json.loads((out / "report-r0.json").read_text())
    assert report["edited"] == 3 and [f["name"] for f in report["failed"]] == ["broken"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    run(model, inputs, out, genders)  # a rerun: the finished inputs are skipped
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert json.loads((out / "report-r0.json").read_text())["edited"] == 0
    assert not list(out.rglob("*.tmp*"))


def test_keep_source_reaches_the_editor_and_the_record(model, tmp_path):
    inputs, out, genders, pair = one_portrait(tmp_path, "santa")
    run(model, inputs, out, genders, keep_source=True)
    assert json.loads((out / "person" / "edit.json").read_text())["keep_source"] is True
    system = EditSystem(str(model), directions=["santa"], steps=2, mask_seeds=2)
    source = torch.from_numpy(pair.src).permute(2, 0, 1)[None].float() / 127.5 - 1
    p = pair.prompts
    expected = system.editor.edit(source, [p["p_a"]], [p["p_b"]], steps=2, mask_seeds=2, keep_source=True)
    got = np.asarray(Image.open(out / "person" / "santa.png")).astype(int)
    want = np.asarray(Image.fromarray(to_uint8(expected.images[0]))).astype(int)
    assert np.abs(got - want).max() <= 1
    with pytest.raises(ValueError, match="use_mask"):
        EditSystem(str(model), directions=["santa"], use_mask=False, keep_source=True)


def test_every_format_the_loader_reads_is_edited_once_under_its_own_name(model, tmp_path):
    """.tif / .gif / .bmp are edited like .png; x.png and x.jpg (and a/y.png, b/y.png) get outputs of their own."""
    from portrait_edit.images import image_files

    inputs, out = tmp_path / "inputs", tmp_path / "edits"
    (inputs / "a").mkdir(parents=True), (inputs / "b").mkdir()
    picture = lambda seed: Image.fromarray(make_pair(seed, "santa", size=SIZE).src)  # noqa: E731
    files = ["t.tif", "g.gif", "m.bmp", "x.png", "x.jpg", "a/y.png", "b/y.png"]
    for seed, name in enumerate(files):
        picture(seed).save(inputs / name)
    names = list(image_files(inputs))
    assert sorted(names) == ["a_y_png", "b_y_png", "g", "m", "t", "x_jpg", "x_png"]
    genders = tmp_path / "genders.json"
    genders.write_text(json.dumps(dict.fromkeys(names, "woman")))
    run(model, inputs, out, genders)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    assert json.loads((out / "report-r0.json").read_text())["edited"] == len(files)


def test_every_broken_input_is_listed_once_with_its_reason(model, tmp_path, caplog):
    inputs, out = tmp_path / "inputs", tmp_path / "edits"
    inputs.mkdir()
    Image.fromarray(make_pair(3, "santa", size=SIZE).src).save(inputs / "good.png")
    good = (inputs / "good.png").read_bytes()
    broken = {
        "empty.png": b"", "text.jpg": b"not an image", "cut.png": good[:200],
        "cut.jpg": b"\xff\xd8\xff\xe0" + bytes(50), "fake.bmp": b"BM" + bytes(30),
    }  # fmt: skip
    for name, data in broken.items():
        (inputs / name).write_bytes(data)
    genders = tmp_path / "genders.json"
    genders.write_text(json.dumps({"good": "man", "empty": "man", "text": "man", "fake": "man",
                                   "cut_png": "man", "cut_jpg": "man"}))  # fmt: skip
    with caplog.at_level("WARNING"):
        run(model, inputs, out, genders)
    report = json.loads((out / "report-r0.json").read_text())
    assert report["edited"] == 1
    reasons = {f["name"]: f["reason"] for f in report["failed"]}
    assert sorted(reasons) == ["cut_jpg", "cut_png", "empty", "fake", "text"]
    for reason in reasons.values():
        assert str(inputs) in reason and "0x" not in reason  # names the file, not PIL's buffer object
    assert "0 bytes" in reasons["empty"] and "truncated" in reasons["cut_png"]
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert sorted(m.split()[1].rstrip(":") for m in warned) == sorted(reasons)  # once each


def test_lambdas_scales_and_steps_are_checked_when_the_system_is_made(model, tmp_path):
    import shutil

    calibrated = tmp_path / "calibrated"
    shutil.copytree(model, calibrated)
    settings = json.loads((calibrated / "mcdm.json").read_text())
    (calibrated / "mcdm.json").write_text(json.dumps({**settings, "mask_range": [0.05, 0.45]}))
    make = lambda folder, **kw: EditSystem(str(folder), directions=["santa", "angry"], **kw)  # noqa: E731
    make(calibrated)  # the task lambdas 0.2 and 0.35 are inside
    for bad, what in ((-0.5, "every pixel of every portrait"), (0.02, "every pixel of some"),
                      (0.5, "no pixel of some"), (1.0, "no pixel of every")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"lambda {bad:g} selects {what}.*\[0\.050, 0\.450\)"):
            make(calibrated, threshold=bad)
    make(model, threshold=0.5)  # not calibrated: (0, 1)
    with pytest.raises(ValueError, match=r"\(0\.000, 1\.000\) \(on any image; .* has no measured range"):
        make(model, threshold=0.0)
    make(calibrated, threshold=0.9, use_mask=False)  # no mask: lambda unused
    with pytest.raises(ValueError, match="text=-1"):
        make(model, scales={"text": -1})
    with pytest.raises(ValueError, match="unknown: \\['txt'\\]"):
        make(model, scales={"txt": 5})
    with pytest.raises(ValueError, match="steps and mask_seeds must be >= 1"):
        make(model, steps=0)


def test_scales_reach_the_edits_and_the_record(model, tmp_path):
    inputs, out, genders, pair = one_portrait(tmp_path, "angry")
    run(model, inputs, out, genders, scales={"text": 9.0}, use_mask=False)
    meta = json.loads((out / "person" / "edit.json").read_text())
    assert meta["scales"]["text"] == 9.0
    system = EditSystem(str(model), directions=["santa"], steps=2, mask_seeds=2)
    source = torch.from_numpy(pair.src).permute(2, 0, 1)[None].float() / 127.5 - 1
    p = prompts_for("santa", pair.gender)  # recomputed with the scales and without them
    want = system.editor.edit(source, [p["p_a"]], [p["p_b"]], steps=2, use_mask=False, scales={"text": 9.0})
    other = system.editor.edit(source, [p["p_a"]], [p["p_b"]], steps=2, use_mask=False)
    got = np.asarray(Image.open(out / "person" / "santa.png")).astype(int)
    assert np.abs(got - to_uint8(want.images[0]).astype(int)).max() <= 1
    assert np.abs(got - to_uint8(other.images[0]).astype(int)).max() > 1


def test_a_measured_mask_range_is_written_into_the_export_and_enforced(model, tmp_path):
    import shutil

    from portrait_edit.models.mcdm_export import MCDMExportSettings

    folder = tmp_path / "mcdm"
    shutil.copytree(model, folder)
    system = EditSystem(str(folder), directions=["santa"], steps=2, mask_seeds=2)
    pairs = [make_pair(seed, "santa", size=SIZE) for seed in (3, 4)]
    sources = torch.stack([torch.from_numpy(p.src).permute(2, 0, 1).float() / 127.5 - 1 for p in pairs])
    prompts = [prompts_for("santa", p.gender) for p in pairs]
    low, high = system.editor.measure_mask_range(
        sources, [q["p_a"] for q in prompts], [q["p_b"] for q in prompts], [0, 1], steps=2, mask_seeds=2
    )
    result = system.editor.edit(sources, [q["p_a"] for q in prompts], [q["p_b"] for q in prompts], steps=2,
                                mask_seeds=2, seed=[0, 1], threshold=low)  # fmt: skip
    assert 0 <= low < high <= 1 and result.soft_masks is not None
    soft = result.soft_masks.flatten(1)  # the same maps: every one is cut into two parts in the range
    assert (soft.min(1).values <= low + 1e-6).all() and (soft.max(1).values >= high - 1e-6).all()
    MCDMExportSettings.load(folder).replace(mask_range=[low, high]).save(folder)
    settings = json.loads((folder / "mcdm.json").read_text())
    assert settings["mask_range"] == [low, high] and settings["scales"] == system.editor.scales
    with pytest.raises(ValueError, match="usable range"):
        EditSystem(str(folder), directions=["santa"], threshold=high)


def test_the_inputs_skip_what_the_runs_writer_finished_without_naming_its_folder_again(model, tmp_path):
    inputs, out, genders, _ = one_portrait(tmp_path, "santa")
    run(model, inputs, out, genders)  # edits person.png into out
    data = EditInputsDataModule(str(inputs), image_size=SIZE, num_workers=0, genders=str(genders))
    with pytest.raises(ValueError, match="set data.init_args.output_dir"):
        data.predict_dataloader()  # no run, no writer: nowhere to look
    Trainer(callbacks=[EditWriter(str(out))], **QUIET).predict(
        EditSystem(str(model), directions=["santa"], steps=2, mask_seeds=2), datamodule=data,
        return_predictions=False,
    )  # fmt: skip
    assert len(data.predict_dataloader().dataset) == 0  # the writer's folder holds the finished input
