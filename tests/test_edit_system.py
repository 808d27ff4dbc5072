"""`predict` with EditSystem + EditWriter on a tiny exported MCDM: every input in every direction, masks,
sticker sheets and JSON written, unreadable inputs reported, finished inputs skipped on a rerun."""

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from portrait_edit.data.edit_inputs import EditInputsDataModule
from portrait_edit.data.images import to_uint8
from portrait_edit.models.mcdm import MCDMConditioning
from portrait_edit.systems.edit import EditSystem, EditWriter
from portrait_edit.systems.mcdm import MCDMSystem
from portrait_edit.world import make_pair

SIZE = 32
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcdm")
    conditioning = MCDMConditioning(
        image_size=SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3, num_image_tokens=3
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
    inputs, out = tmp_path / "inputs", tmp_path / "edits"
    inputs.mkdir()
    pair = make_pair(3, "santa", size=SIZE)
    Image.fromarray(pair.src).save(inputs / "person.png")
    genders = tmp_path / "genders.json"
    genders.write_text(json.dumps({"person": pair.gender}))
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
    from portrait_edit.data.images import image_files

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
