"""IdentityEncoderSystem and the face datamodules on the tiny preset: real components, real Trainer, CPU."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch.testing import assert_close

from portrait_edit.data.error_handler import COUNTS_FIELD
from portrait_edit.data.faces import FaceImagesDataModule
from portrait_edit.data.world_faces import WorldFacesDataModule, render_faces
from portrait_edit.models.conditioning import scaled_latents
from portrait_edit.models.identity_conditioning import IdentityConditioning
from portrait_edit.systems.identity import IdentityEncoderSystem
from portrait_edit.world import Pose, draw_pose, make_face, pose_keypoints

ROOT = Path(__file__).resolve().parents[2]


def tiny_conditioning(**kw):
    return IdentityConditioning(
        num_heads=4, mlp_hidden=64, clip_image_size=32, image_mean=[0.5] * 3, image_std=[0.5] * 3, **kw
    )


def world_faces(**kw):
    args = dict(identities=4, views=2, val_identities=3, image_size=32, batch_size=4, seed=5)
    return WorldFacesDataModule(**(args | kw))


def one_step(system, datamodule, **trainer_args):
    """Fit `system` for one step on CPU; the trainer's callback metrics (no validation unless asked)."""
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **({"limit_val_batches": 0} | trainer_args),
    )
    trainer.fit(system, datamodule=datamodule)
    return trainer.callback_metrics


def test_world_faces_validation_shows_unseen_identities_twice_with_different_expressions():
    dm = world_faces()
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_set) == 6
    assert dm.val_set.identities.tolist() == [0, 0, 1, 1, 2, 2]
    train_images = {dm.train_set.images[i].tobytes() for i in range(8)}
    assert not any(dm.val_set.images[i].tobytes() in train_images for i in range(6))
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and set(batch["gender"]) <= {"man", "woman"}
    # Each face says what it does in the expression captions' words: two different ones per identity.
    words = {
        None: "neutral expression",
        "angry": "angry",
        "shocked": "shocked",
        "laughing": "laughing",
        "crying": "crying",
    }
    assert batch["expression"] == dm.val_set.expressions[:4]
    assert set(dm.val_set.expressions) <= set(words.values())
    assert all(dm.val_set.expressions[2 * i] != dm.val_set.expressions[2 * i + 1] for i in range(3))
    faces = render_faces([11, 12, 13, 14, 15, 16], 1, 32)  # view seed 0 of each identity
    assert faces.expressions == [words[make_face(s, 0, 32).meta["expression"]] for s in range(11, 17)]


def test_training_prompts_fill_every_template_field_per_face():
    conditioning = tiny_conditioning(template="a {gender}, {expression}")
    batch = {"gender": ["man", "woman"], "expression": ["angry", "neutral expression"]}
    assert conditioning.prompts(batch) == ["a man, angry", "a woman, neutral expression"]
    assert tiny_conditioning(template="a photo of a {gender}").prompts(batch) == [
        "a photo of a man",
        "a photo of a woman",
    ]
    with pytest.raises(ValueError, match="'expression'.*lacks"):
        conditioning.prompts({"gender": ["man"]})
    with pytest.raises(ValueError, match="gender words"):
        conditioning.prompts({"gender": ["cat"], "expression": ["angry"]})


def test_one_step_trains_the_identity_encoder_only_and_adds_the_l1_penalty(tmp_path):
    system = IdentityEncoderSystem(base="tiny", conditioning=tiny_conditioning(), embedding_l1=0.5, lr=1e-3)
    trained = ("conditioning.encoder.", "ema.")  # the identity encoder and its EMA copy
    frozen = {k: v.clone() for k, v in system.state_dict().items() if not k.startswith(trained)}
    assert any(k.startswith("conditioning.text_encoder.") for k in frozen) and any(
        "unet." in k for k in frozen
    )
    encoder = {k: v.clone() for k, v in system.conditioning.encoder.state_dict().items()}
    m = one_step(system, world_faces(), num_sanity_val_steps=0, limit_val_batches=2, val_check_interval=1)
    # total = denoising + 0.5 x mean |c_id| (the logged parts of the one step).
    assert_close(m["train/total"], m["train/loss"] + 0.5 * m["train/embedding_l1"])
    assert math.isfinite(m["val/loss"].item()) and 0.0 <= m["val/identity_top1"].item() <= 1.0
    after = system.conditioning.encoder.state_dict()
    assert all(not torch.equal(encoder[k], after[k]) for k in encoder if "queries" in k or "mlp" in k)
    now = system.state_dict()
    assert [k for k in frozen if not torch.equal(frozen[k], now[k])] == []
    system.export(tmp_path)
    assert sorted(p.name for p in (tmp_path / "identity_encoder").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_world_faces_carry_their_pose_drawings_and_a_frozen_controlnet_reads_them():
    faces = render_faces([21, 22], 2, 32, poses=True)
    for i, (seed, view) in enumerate([(21, 0), (21, 1), (22, 0), (22, 1)]):
        pose = Pose.from_dict(make_face(seed, view, 32).meta["pose"])
        assert np.array_equal(faces.poses[i], draw_pose(pose_keypoints(pose, 32), 32, 32))
    assert faces[0]["pose"].shape == (3, 32, 32) and render_faces([21], 1, 32)[0].keys() == {
        "image",
        "gender",
        "identity",
        "expression",
    }
    system = IdentityEncoderSystem(
        base="tiny", conditioning=tiny_conditioning(template="a {gender}, {expression}", controlnet="tiny")
    )
    conditioning = system.conditioning
    assert conditioning.trainable_modules() == {"identity_encoder": conditioning.encoder}
    assert not any(p.requires_grad for p in conditioning.controlnet.parameters())
    with torch.no_grad():  # a trained ControlNet's output convs are not the zero init of the preset's
        for p in conditioning.controlnet.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    batch = {key: [faces[i][key] for i in range(4)] for key in ("gender", "expression")}
    batch["image"] = torch.stack([faces[i]["image"] for i in range(4)])
    batch["pose"] = torch.stack([faces[i]["pose"] for i in range(4)])
    with torch.no_grad():
        latents = scaled_latents(system.vae, batch["image"])
    t = torch.full((4,), 500)
    with torch.no_grad():
        kwargs = conditioning(batch, latents, t)
        # The residuals are the ControlNet's own for this pose (shown in [0, 1]) and these text states.
        down, mid = conditioning.controlnet(
            latents, t, encoder_hidden_states=kwargs["encoder_hidden_states"],
            controlnet_cond=(batch["pose"] + 1) / 2, return_dict=False,
        )  # fmt: skip
        assert_close(kwargs["mid_block_additional_residual"], mid)
        assert all(torch.equal(a, b) for a, b in zip(kwargs["down_block_additional_residuals"], down))
        moved = conditioning({**batch, "pose": batch["pose"].flip(-1)}, latents, t)
        assert not torch.allclose(moved["mid_block_additional_residual"], mid)
    with pytest.raises(ValueError, match="no 'pose'"):
        conditioning({k: v for k, v in batch.items() if k != "pose"}, latents, t)


def test_cross_view_faces_read_c_id_from_another_view_of_the_same_person():
    dm = world_faces(views=3, cross_view=True)
    dm.setup("fit")
    train, images = dm.train_set, dm.train_set.images
    torch.manual_seed(0)
    for i in range(len(train)):
        reference = ((train[i]["reference"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        (j,) = [j for j in range(len(train)) if np.array_equal(images[j], reference)]
        assert j != i and train.identities[j] == train.identities[i]
    assert "reference" not in dm.val_set[0]  # retrieval reads the validation faces themselves
    conditioning = IdentityEncoderSystem(base="tiny", conditioning=tiny_conditioning()).conditioning
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        assert_close(conditioning.identity(batch), conditioning.identity({"image": batch["reference"]}))
        assert not torch.allclose(
            conditioning.identity(batch), conditioning.identity({"image": batch["image"]})
        )
    with pytest.raises(ValueError, match=">= 2 faces per identity"):
        render_faces([1, 2], 1, 32, cross_view=True)


def test_contrastive_term_adds_infonce_between_the_two_views_and_needs_them():
    system = IdentityEncoderSystem(
        base="tiny", conditioning=tiny_conditioning(), embedding_l1=0.5, identity_contrastive=0.3
    )
    m = one_step(system, world_faces(cross_view=True))
    # 4 people a batch: InfoNCE starts near log 4 (untrained c_id tells them apart by chance).
    assert 0.5 < m["train/contrastive"].item() < 3.0
    assert_close(
        m["train/total"], m["train/loss"] + 0.5 * m["train/embedding_l1"] + 0.3 * m["train/contrastive"]
    )
    alone = IdentityEncoderSystem(base="tiny", conditioning=tiny_conditioning(), identity_contrastive=0.3)
    with pytest.raises(ValueError, match="cross_view=true"):
        one_step(alone, world_faces())
    with pytest.raises(ValueError, match="identity_contrastive"):
        IdentityEncoderSystem(base="tiny", conditioning=tiny_conditioning(), identity_contrastive=-1.0)


def test_face_folder_skips_corrupt_images_and_takes_genders_from_metadata(tmp_path):
    folder = tmp_path / "ffhq" / "00000"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    (folder / "00003.png").write_bytes(b"not a png")
    genders = {f"{i:05d}": ("man" if i % 2 else "woman") for i in range(6)}
    (tmp_path / "genders.json").write_text(json.dumps(genders))
    dm = FaceImagesDataModule(
        root=str(tmp_path / "ffhq"),
        image_size=16,
        batch_size=6,
        num_workers=0,
        genders=str(tmp_path / "genders.json"),
        val_samples=0,
    )
    dm.setup("fit")
    batch = next(iter(dm._loader(np.arange(6), train=False)))
    assert batch["image"].shape == (5, 3, 16, 16)  # the corrupt file is skipped ...
    assert batch[COUNTS_FIELD] == {"worker": 0, "seen": 6, "skipped": 1}
    assert batch["gender"] == ["woman", "man", "woman", "woman", "man"]  # ... and the rest keep their gender
    with pytest.raises(ValueError, match="no gender"):
        FaceImagesDataModule(root=str(tmp_path / "ffhq"), num_workers=0).setup("fit")


def test_identity_configs_run_end_to_end_on_the_tiny_preset(tmp_path):
    from portrait_edit.cli import PortraitCLI

    small = tmp_path / "small.yaml"
    small.write_text(
        "trainer:\n  logger: false\n  callbacks: []\n  enable_checkpointing: false\n  max_steps: 1\n"
        "  val_check_interval: 1\n  limit_val_batches: 1\n  num_sanity_val_steps: 0\n"
        f"  default_root_dir: {tmp_path}\n"
    )
    cli = PortraitCLI(
        args=[
            "fit",
            "--config",
            str(ROOT / "configs/mini/identity.yaml"),
            "--config",
            str(small),
            "--ckpt_path=null",
            "--model.init_args.base=tiny",
            f"--model.init_args.export_dir={tmp_path / 'export'}",
            "--model.init_args.conditioning.init_args.clip_image_size=32",
            "--model.init_args.conditioning.init_args.controlnet=tiny",
            "--data.init_args.identities=4",
            "--data.init_args.views=2",
            "--data.init_args.val_identities=2",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=4",
        ]
    )
    assert math.isfinite(cli.trainer.callback_metrics["train/total"].item())
    assert (tmp_path / "export" / "identity_encoder" / "config.json").is_file()


@pytest.mark.parametrize("edit_inputs", [False, True], ids=["faces", "edit_inputs"])
def test_faces_without_metadata_get_clip_zero_shot_genders_cached(tmp_path, clip_tokenizer, edit_inputs):
    """Stage 1's faces and stage 4's edit inputs (a folder of photos with no genders file) alike."""
    from portrait_edit.data.edit_inputs import EditInputsDataModule
    from portrait_edit.models.clip_pair import build_clip, export_clip
    from portrait_edit.models.zero_shot import ZeroShotGender

    export_clip(build_clip("tiny", "tiny", seed=3), clip_tokenizer, tmp_path / "clip")
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    pixels = dict(clip_image_size=32, clip_image_mean=[0.5] * 3, clip_image_std=[0.5] * 3)
    cache = tmp_path / "cache" / "genders.json"  # its folder does not exist yet
    module, extra = (
        (EditInputsDataModule, {"output_dir": str(tmp_path / "edits")})
        if edit_inputs
        else (FaceImagesDataModule, {})
    )
    dm = module(
        root=str(folder),
        image_size=32,
        num_workers=0,
        gender_clip=str(tmp_path / "clip"),
        gender_cache=str(cache),
        **pixels,
        **extra,
    )
    dm.setup("fit")
    classify = ZeroShotGender.load(
        str(tmp_path / "clip"), image_size=32, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    faces = torch.stack([dm.dataset[i]["image"] for i in range(5)])
    assert dm.dataset.genders == classify(faces)
    assert json.loads(cache.read_text()) == dict(zip(dm.dataset.names, dm.dataset.genders))
    again = FaceImagesDataModule(root=str(folder), image_size=32, num_workers=0, gender_cache=str(cache))
    again.setup("fit")  # no CLIP given: the cache alone labels every face
    assert again.dataset.genders == dm.dataset.genders


def test_a_small_face_folder_keeps_nine_tenths_to_train_on(tmp_path):
    """val_samples: 256 (the FFHQ config's) on a 12-face folder holds out a tenth, 1 face, not all 12."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(folder / f"{i:02d}.png")
    genders = tmp_path / "genders.json"
    genders.write_text(json.dumps({f"{i:02d}": "woman" for i in range(12)}))
    dm = FaceImagesDataModule(
        root=str(folder), image_size=16, batch_size=2, num_workers=0, genders=str(genders)
    )
    dm.setup("fit")
    assert len(dm.train_dataloader().dataset) == 11 and len(dm.val_dataloader().dataset) == 1
    with pytest.raises(ValueError, match="12 faces, 11 to train on: fewer than one batch"):
        FaceImagesDataModule(
            root=str(folder), image_size=16, batch_size=12, num_workers=0, genders=str(genders)
        ).train_dataloader()
