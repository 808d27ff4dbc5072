"""The shipped mini base (data/mini/): every part present and trained, and sampling is deterministic.

These load the committed weights (a few MB), so they run in the default suite: a missing or random part
fails here, not silently downstream.
"""

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from portrait_edit import paths
from portrait_edit.data.jobs import sample_key, sample_seed
from portrait_edit.data.shard_pipeline import iter_samples, resolve_shards
from portrait_edit.data.world_faces import render_faces
from portrait_edit.evaluation.direction_classifier import DirectionClassifier
from portrait_edit.evaluation.held_out import held_out_pair
from portrait_edit.images import encode_png, to_uint8
from portrait_edit.loading import components as C
from portrait_edit.metrics.identity import identity_retrieval_top1
from portrait_edit.metrics.image import mask_iou, ssim
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.identity_encoder import IdentityEncoder, clip_tokens, encode_identity
from portrait_edit.systems.sampling import SamplingSystem
from portrait_edit.tasks import prompts_for

MINI = paths.REPO_ROOT / "data" / "mini"
FIXTURES = paths.REPO_ROOT / "tests" / "fixtures" / "mini_pairs"
PARTS = (
    "vae",
    "unet",
    "text_encoder",
    "tokenizer",
    "image_encoder",
    "controlnet",
    "scheduler",
    "classifier",
    "probe",
    "identity_encoder",
    "mcdm",
)


def test_every_part_is_shipped_with_its_manifest_entry():
    manifest = json.loads((MINI / "manifest.json").read_text())
    assert {p.name for p in MINI.iterdir() if p.is_dir()} >= set(PARTS)
    for stage in (
        "pairs",
        "vae",
        "clip",
        "classifier",
        "probe",
        "unet",
        "identity",
        "controlnet",
        "generate",
        "mcdm",
    ):
        entry = manifest["stages"][stage]
        assert {"command", "config", "config_sha256", "revision", "wall_time_s"} <= set(entry)
    weights = sum(f.stat().st_size for f in MINI.rglob("*.safetensors"))
    assert weights < 44 * 2**20  # 42.1 MiB, of which the MCDM's own UNet and image adapter are 8.0 MiB
    # The shipped MCDM export links its frozen parts to the mini base's (an export of a run copies them).
    for part in ("vae", "text_encoder", "image_encoder", "tokenizer"):
        assert (MINI / "mcdm" / part).resolve() == (MINI / part).resolve()


def draw(seed: int, prompt: str) -> np.ndarray:
    system = SamplingSystem(base="mini", num_inference_steps=10, output_dir="/dev/null")
    out = system.pipeline(
        prompt=[prompt],
        height=64,
        width=64,
        num_inference_steps=10,
        guidance_scale=7.5,
        generator=[torch.Generator().manual_seed(seed)],
        output_type="np",
    ).images
    return (np.clip(out[0], 0, 1) * 255).round().astype(np.uint8)


def test_shipped_model_draws_the_same_bytes_for_the_same_seed_and_the_prompted_edit(caplog):
    with caplog.at_level(logging.WARNING, logger=C.__name__):
        first = draw(7, "a man, santa claus costume")
    assert not [r for r in caplog.records if "RANDOM" in r.message]  # the trained weights, not the preset
    second = draw(7, "a man, santa claus costume")
    assert encode_png(first) == encode_png(second)
    assert not np.array_equal(first, draw(8, "a man, santa claus costume"))
    classifier = DirectionClassifier.from_pretrained(MINI / "classifier")
    image = torch.from_numpy(first).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert classifier.config.labels[int(classifier.predict_directions(image))] == "santa"


@pytest.mark.parametrize("part", ["vae", "unet", "controlnet", "text_encoder", "image_encoder"])
def test_shipped_parts_load_without_falling_back_to_random(part, caplog):
    with caplog.at_level(logging.WARNING, logger=C.__name__):
        C.load_model(part, "mini")
    assert not [r for r in caplog.records if "RANDOM" in r.message]


def test_shipped_identity_encoder_tells_held_out_people_apart_across_pose_and_expression():
    # 60 identities of a stream the encoder never saw, two renders each (different pose and expression).
    faces = render_faces([sample_seed(31, i) for i in range(60)], 2, 64, distinct_expressions=True)
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ids = torch.from_numpy(faces.identities)
    image_encoder = C.load_image_encoder(str(MINI))
    encoder = IdentityEncoder.from_pretrained(MINI / "identity_encoder")
    with torch.no_grad():
        c_id = encode_identity(image_encoder, encoder, images).flatten(1)
        tokens = clip_tokens(image_encoder, images, encoder.config).mean(dim=1)  # what the encoder reads
    top1 = identity_retrieval_top1(c_id, ids).float().mean().item()
    raw = identity_retrieval_top1(tokens, ids).float().mean().item()
    # Issue target 0.60 (chance 1/119); shipped: 1.000 here, raw CLIP tokens 0.700 (eval_identity: 1.000 / 0.745).
    assert top1 >= 0.9 and top1 > raw + 0.1, (top1, raw)


def test_the_generate_stage_makes_the_pairs_the_shipped_mcdm_was_trained_on(mini_pairs):
    """data/mini/pairs (made by `predict --config configs/mini/generate.yaml`, not tracked): the first pairs
    the generate stage makes now are, up to the float rounding of another batch size, the ones recorded in
    tests/fixtures/mini_pairs/ from the 2000 pairs the shipped MCDM was trained on."""
    entry = json.loads((MINI / "manifest.json").read_text())["stages"]["generate"]
    assert entry["config"] == "configs/mini/generate.yaml"
    made = {
        s["__key__"]: s
        for s in iter_samples(
            resolve_shards(str(mini_pairs)), decode=True, required=("src.png", "tgt.png", "json")
        )
    }
    assert sorted(made) == [sample_key(i) for i in range(6)]
    for index in (0, 3):
        key = sample_key(index)
        shipped = json.loads((FIXTURES / f"{key}.json").read_text())
        assert made[key]["json"]["direction"] == shipped["direction"]
        assert made[key]["json"]["seed"] == shipped["seed"]
        for field in ("src.png", "tgt.png"):
            recorded = np.asarray(Image.open(FIXTURES / f"{key}.{field}").convert("RGB"))
            diff = np.abs(to_uint8(made[key][field]).astype(int) - recorded.astype(int))
            assert diff.max() <= 2, (index, field, diff.max())


# (direction, least of 10 edits read as it, least mean SSIM to the exact target). Measured on these 10
# inputs (seed 3): laughing 10 and 0.825, santa 10 and 0.503; a sample of the text-to-image base under
# p_b, which never sees x_A, is a different portrait altogether.
EDITS = {"laughing": (8, 0.80), "santa": (7, 0.47)}


def held_out_edits(direction: str):
    """edit(scales) -> (edits, how many are read as `direction`, mean SSIM to the exact targets) of the
    shipped MCDM on 10 held-out world portraits (3-way guidance, no mask, seed 3)."""
    editor = MCDMEditor.from_pretrained(MINI / "mcdm")
    pairs = [held_out_pair(k, direction) for k in range(10)]
    sources = torch.from_numpy(np.stack([p.src for p in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    targets = torch.from_numpy(np.stack([p.gt for p in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    prompts = [prompts_for(direction, p.gender) for p in pairs]
    p_a, p_b = [q["p_a"] for q in prompts], [q["p_b"] for q in prompts]
    classifier = DirectionClassifier.from_pretrained(MINI / "classifier")

    def edit(scales=None, rows=10):
        edits = editor.edit(
            sources[:rows], p_a[:rows], p_b[:rows], use_mask=False, steps=20, seed=3, scales=scales
        ).images
        read = [classifier.config.labels[int(i)] for i in classifier.predict_directions(edits)]
        return edits, read.count(direction), ssim(edits, targets[:rows]).mean().item()

    return edit


@pytest.mark.parametrize("direction", sorted(EDITS))
def test_shipped_mcdm_is_trained_and_makes_the_prompted_edit(direction):
    """data/mini/mcdm: the `mcdm` stage's export. Held-out world portraits edited toward an expression and
    a costume (3-way guidance, no mask) are read as that direction by the independently trained direction
    classifier, stay this person (SSIM to the world's exact target), and the same seed gives the same edit."""
    entry = json.loads((MINI / "manifest.json").read_text())["stages"]["mcdm"]
    config = yaml.safe_load((paths.REPO_ROOT / "configs" / "mini" / "mcdm.yaml").read_text())
    assert entry["config"] == "configs/mini/mcdm.yaml" and entry["steps"] == config["trainer"]["max_steps"]
    edit = held_out_edits(direction)
    edits, read, similarity = edit()
    least_read, least_ssim = EDITS[direction]
    assert read >= least_read and similarity > least_ssim, (read, similarity)
    torch.testing.assert_close(edit(rows=2)[0], edits[:2])


def test_each_guidance_term_of_the_shipped_mcdm_matters():
    """Eq. 1's three terms, each zeroed on the same laughing edits: without the image term the SSIM to
    the target drops by 0.013 (0.825 -> 0.812), without the spatial term by 0.39, and without the text
    term only 2 of the 10 edits are read as laughing (all 10 with it)."""
    edit = held_out_edits("laughing")
    _, read, similarity = edit()
    assert edit({"image": 0.0})[2] < similarity - 0.005
    assert edit({"spatial": 0.0})[2] < similarity - 0.1
    assert edit({"text": 0.0})[1] <= read - 5


def test_shipped_mcdm_mask_covers_the_costume_it_draws():
    """The mask the shipped MCDM makes for santa (read at its export's mask_at) covers the true edit region,
    clothes included (over 100 inputs, docs/results/mini_edit.md: IoU 0.618, read as santa with the mask
    0.81; an earlier model read at the paper's 10th step: IoU 0.28, read 0.10), and the masked edit is read as santa."""
    editor = MCDMEditor.from_pretrained(MINI / "mcdm")
    assert editor.mask_at == 0.15
    pairs = [held_out_pair(k, "santa") for k in range(10)]
    sources = torch.from_numpy(np.stack([p.src for p in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    prompts = [prompts_for("santa", p.gender) for p in pairs]
    result = editor.edit(
        sources, [q["p_a"] for q in prompts], [q["p_b"] for q in prompts], threshold=0.2, seed=3
    )
    region = torch.from_numpy(np.stack([p.edit_mask for p in pairs])).float()
    assert mask_iou(result.masks, region).mean() > 0.5
    classifier = DirectionClassifier.from_pretrained(MINI / "classifier")
    read = [classifier.config.labels[int(i)] for i in classifier.predict_directions(result.images)]
    assert read.count("santa") >= 5, read
