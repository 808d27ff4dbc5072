"""The mini base-model systems (VAE, CLIP, direction classifier): closed-form math, one real training step
each on tiny configs, and export / load round trips."""

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from safetensors import safe_open
from torch.utils.data import DataLoader
from transformers import CLIPTextConfig

from portrait_edit.blur import gaussian_blur
from portrait_edit.data.world_images import PairArrays, WorldImagesDataset, image_classes
from portrait_edit.diffusion.face_weights import face_gaussian, face_weights
from portrait_edit.evaluation.direction_classifier import DirectionClassifier
from portrait_edit.loading.components import load_image_encoder, load_text_encoder, load_tokenizer, load_vae
from portrait_edit.metrics.psnr import psnr_per_image
from portrait_edit.metrics.retrieval import retrieval_top1
from portrait_edit.models.clip_pair import load_text_projection
from portrait_edit.paths import PRESETS_DIR
from portrait_edit.systems.classifier import DirectionClassifierSystem, accuracy, degrade
from portrait_edit.systems.clip import CLIPSystem, multi_positive_loss
from portrait_edit.systems.vae import VAESystem, kl_per_element, reconstruction_loss
from portrait_edit.tasks import DIRECTIONS
from portrait_edit.world import make_pair

SIZE = 32  # the tiny image encoder's input size
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def world_pairs(n: int, size: int = SIZE) -> PairArrays:
    """n mini-world pairs in memory (the arrays `read_pairs` builds from shards), directions cycling."""
    return PairArrays.from_pairs(
        [make_pair(1000 + i, DIRECTIONS[i % len(DIRECTIONS)], size=size) for i in range(n)]
    )


@pytest.fixture(scope="module")
def loader():
    torch.manual_seed(0)
    return DataLoader(WorldImagesDataset(world_pairs(8)), batch_size=8, shuffle=False)


def fit_one_step(system, loader, root):
    before = {k: v.detach().clone() for k, v in system.named_parameters()}
    trainer = Trainer(
        max_steps=1,
        val_check_interval=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        default_root_dir=str(root),
        **QUIET,
    )
    trainer.fit(system, train_dataloaders=loader, val_dataloaders=loader)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    changed = [k for k, v in system.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert len(changed) > 0.5 * len(before), f"only {len(changed)} of {len(before)} tensors changed"
    return trainer


# Closed-form math.
def test_described_captions_put_the_person_after_the_gender_word():
    pairs = world_pairs(4)
    plain, described = WorldImagesDataset(pairs), WorldImagesDataset(pairs, describe_p=1.0)
    for i in range(8):
        k, is_target = divmod(i, 2)
        caption = plain[i]["caption"]
        assert caption == (pairs.p_b[k] if is_target else pairs.p_a[k])
        gender = pairs.genders[k]
        # Hand-built: "a man, angry" -> "a man with <description>, angry".
        expected = caption.replace(f"{gender},", f"{gender} {pairs.descriptions[k]},", 1)
        assert described[i]["caption"] == expected and pairs.descriptions[k].startswith("with ")
    half = WorldImagesDataset(world_pairs(200), describe_p=0.5, seed=3)
    assert 0.4 < half.described.mean() < 0.6
    assert (WorldImagesDataset(world_pairs(200), describe_p=0.5, seed=3).described == half.described).all()


def test_described_captions_are_positives_of_their_own_image_only():
    from portrait_edit.systems.clip import caption_positives

    plain = {"a man, angry", "a woman, angry"}
    captions = ["a man, angry", "a man with tan skin, angry", "a man with grey hair, angry", "a woman, angry"]
    classes = torch.tensor([5, 5, 5, 14])  # three angry men, one angry woman
    distinct = sorted(set(captions))  # grey, tan, "a man, angry", "a woman, angry"
    assert distinct == [
        "a man with grey hair, angry",
        "a man with tan skin, angry",
        "a man, angry",
        "a woman, angry",
    ]
    expected = torch.tensor(
        [
            [False, False, True, False],  # the plain image: only the plain caption of its class
            [False, True, True, False],  # the tan man: his description and the plain caption
            [True, False, True, False],
            [False, False, False, True],
        ]
    )
    assert torch.equal(caption_positives(captions, classes, distinct, plain), expected)


def test_psnr_of_a_known_constant_error():
    target = torch.rand(2, 3, 8, 8) * 0.5
    prediction = target.clone()
    prediction[0] += 0.1  # MSE 1e-2 -> 20 dB
    prediction[1] += 0.01  # MSE 1e-4 -> 40 dB
    torch.testing.assert_close(psnr_per_image(prediction, target), torch.tensor([20.0, 40.0]))
    # The mean of per-image PSNRs (30 dB), not the PSNR of the pooled MSE (about 23 dB).
    assert psnr_per_image(prediction, target).mean().item() == pytest.approx(30.0, abs=1e-4)
    with pytest.raises(ValueError, match="same"):
        psnr_per_image(prediction, target[:1])


def test_kl_per_element_closed_form():
    mean, logvar = torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    mean[1] = 1.0
    torch.testing.assert_close(kl_per_element(mean, logvar), torch.tensor([0.0, 0.5]))
    logvar[0] = math.log(2.0)  # 0.5 (2 - 1 - ln 2)
    torch.testing.assert_close(kl_per_element(mean, logvar)[0], torch.tensor(0.5 * (1 - math.log(2.0))))


def test_retrieval_top1_on_a_hand_built_similarity():
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.1, 0.7, 0.3], [0.5, 0.6, 0.0]])
    caption_classes = torch.tensor([0, 0, 1])  # two captions of class 0 (like the two source captions)
    image_classes_ = torch.tensor([0, 0, 0, 1])
    # best captions 0, 2, 1, 1 -> classes 0, 1, 0, 0 -> correct, wrong, correct, wrong
    torch.testing.assert_close(
        retrieval_top1(similarity, image_classes_, caption_classes), torch.tensor([1.0, 0.0, 1.0, 0.0])
    )


def test_image_classes_and_unknown_genders():
    assert image_classes(["man", "woman"], torch.tensor([0, 3])).tolist() == [0, 12]
    with pytest.raises(ValueError, match="gender"):
        image_classes(["robot"], torch.tensor([0]))


def test_multi_positive_loss_is_clip_loss_with_one_positive_each():
    torch.manual_seed(0)
    images, texts = F.normalize(torch.randn(5, 8), dim=1), F.normalize(torch.randn(5, 8), dim=1)
    scale = torch.tensor(10.0)
    logits = scale * images @ texts.T
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    torch.testing.assert_close(
        multi_positive_loss(images, texts, torch.eye(5, dtype=torch.bool), scale), clip
    )


def test_multi_positive_loss_sums_the_probability_of_all_positives():
    images = torch.tensor([[1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[True, True, False]])
    # image->text: p(pos) = 2e / (2e + 1); text->image: one image per column, and the third column
    # has no positive, which is refused.
    with pytest.raises(ValueError, match="positive"):
        multi_positive_loss(images, texts, positives, torch.tensor(1.0))
    loss = multi_positive_loss(images, texts[:2], positives[:, :2], torch.tensor(1.0))
    torch.testing.assert_close(loss, torch.tensor(0.0))  # both captions are positives: nothing to learn


def test_gaussian_blur_of_a_point_is_the_normalised_kernel():
    images = torch.zeros(2, 1, 15, 15)
    images[:, :, 7, 7] = 1.0
    sigma = torch.tensor([1.0, 0.0])
    out = gaussian_blur(images, sigma)
    radius = 3
    taps = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / 2)
    taps = taps / taps.sum()
    torch.testing.assert_close(
        out[0, 0, 7 - radius : 8 + radius, 7 - radius : 8 + radius], taps[:, None] * taps[None, :]
    )
    assert out[0].sum().item() == pytest.approx(1.0, abs=1e-6)  # the point's mass stays in the image
    assert torch.equal(out[1], images[1])  # sigma 0: unchanged


def test_degrade_touches_only_the_chosen_images():
    images = torch.rand(64, 3, 8, 8) * 2 - 1
    out = degrade(images, p=0.5, blur_max=1.5, noise_max=0.1, generator=torch.Generator().manual_seed(0))
    changed = (out != images).flatten(1).any(dim=1)
    assert 16 < changed.sum().item() < 48  # about half
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(degrade(images, p=0.0, blur_max=1.5, noise_max=0.1), images)


def test_roundtrips_are_the_vae_reconstruction_computed_once(loader):
    system = DirectionClassifierSystem(channels=[8, 16], roundtrip_vae="tiny", roundtrip_p=1.0)
    batch = next(iter(loader))
    vae = load_vae("tiny", torch_dtype=torch.float32)
    with torch.no_grad():
        expected = vae.decode(vae.encode(batch["image"]).latent_dist.mode()).sample.clamp(-1, 1)
    calls = []
    system.vae().encoder.register_forward_hook(lambda *a: calls.append(1))
    indices = batch["index"].tolist()
    first = system.cached_roundtrips(batch["image"], indices)
    again = system.cached_roundtrips(batch["image"], indices)
    assert calls == [1] and torch.equal(first, again)
    assert (first - expected).abs().max().item() <= 1 / 127.5 + 1e-6  # stored as uint8
    with pytest.raises(ValueError, match="index"):
        system.training_step({"image": batch["image"], "label": batch["label"]}, 0)
    with pytest.raises(ValueError, match="roundtrip_vae"):
        DirectionClassifierSystem(roundtrip_p=0.5)


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])).tolist() == [1.0, 1.0, 0.0]


# One real training step per system, then export round trips.
def test_face_gaussian_closed_form():
    keypoints = torch.zeros(2, 18, 3)
    # Image 0: nose, eyes and ears at (10, 12) +- 3 px (ears) / 0 (nose, eyes): centre (10, 12), RMS
    # distance sqrt(2 * 9 / 5); image 1: only the nose visible, so no face.
    keypoints[0, [0, 14, 15, 16, 17]] = torch.tensor(
        [[10.0, 12, 1], [10, 12, 1], [10, 12, 1], [7, 12, 1], [13, 12, 1]]
    )
    keypoints[1, 0] = torch.tensor([5.0, 5, 1])
    bump = face_gaussian(keypoints, 24, 20, sigma_scale=2.0)
    assert bump.shape == (2, 1, 24, 20)
    sigma = 2.0 * math.sqrt(18 / 5)
    # Pixel (row 12, column 14) has its centre at (14.5, 12.5): 4.5 px right of and 0.5 px below the face.
    expected = math.exp(-(4.5**2 + 0.5**2) / (2 * sigma**2))
    assert bump[0, 0, 12, 14].item() == pytest.approx(expected, rel=1e-5)
    assert bump[0].max().item() == pytest.approx(math.exp(-(0.5**2 * 2) / (2 * sigma**2)), rel=1e-5)
    assert torch.count_nonzero(bump[1]) == 0
    # On a grid 2x coarser: the same bump, centre and width halved (cell centres at +0.5).
    coarse = face_weights(keypoints, (24, 20), (12, 10), face_weight=3.0, sigma_scale=2.0)
    dx, dy = 6.5 - 10 / 2, 6.5 - 12 / 2  # cell (6, 6) has its centre at (6.5, 6.5); the face at (5, 6)
    expected = 1 + 3.0 * math.exp(-(dx**2 + dy**2) / (2 * (sigma / 2) ** 2))
    assert coarse[0, 0, 6, 6].item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(coarse[1], torch.ones(1, 12, 10))


def test_weighted_reconstruction_loss_by_hand():
    target = torch.zeros(1, 1, 1, 2)
    recon = torch.tensor([[[[0.5, 1.0]]]])  # per pixel |d| + d^2: 0.75 and 2.0
    assert reconstruction_loss(recon, target).item() == pytest.approx((0.75 + 2.0) / 2)
    weight = torch.tensor([[[[3.0, 1.0]]]])
    assert reconstruction_loss(recon, target, weight).item() == pytest.approx((3 * 0.75 + 2.0) / 4)
    uniform = torch.full((1, 1, 1, 2), 7.0)
    assert reconstruction_loss(recon, target, uniform).item() == pytest.approx((0.75 + 2.0) / 2)


def test_face_weighted_vae_trains_and_reports_the_face_psnr(loader, tmp_path):
    system = VAESystem(config="tiny", lr=1e-3, scale_batches=1, face_weight=10.0)
    batch = next(iter(loader))
    weights = system._pixel_weights(batch)
    assert weights.min().item() >= 1.0 and weights.max().item() > 10.0
    trainer = fit_one_step(system, loader, tmp_path / "run")
    assert math.isfinite(float(trainer.callback_metrics["val/psnr_face"]))
    with pytest.raises(ValueError, match="keypoints"):
        system._pixel_weights({"image": batch["image"]})


def test_vae_trains_measures_its_scale_and_round_trips(loader, tmp_path):
    system = VAESystem(config="tiny", lr=1e-3, scale_batches=1)
    with pytest.raises(ValueError, match="measure"):
        system.export(str(tmp_path))
    trainer = fit_one_step(system, loader, tmp_path / "run")
    assert math.isfinite(float(trainer.callback_metrics["val/psnr"]))
    factor = float(system.scaling_factor)
    # Recomputed by hand: the same seeded posterior samples of the first training batch.
    batch = next(iter(loader))
    with torch.no_grad():
        system.vae.eval()
        generator = torch.Generator().manual_seed(0)
        latents = system.vae.encode(batch["image"]).latent_dist.sample(generator).double()
    assert factor == pytest.approx(1.0 / latents.std(unbiased=False).item(), rel=1e-5)

    folder = system.export(str(tmp_path), dtype=torch.float16)
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    with safe_open(folder / "diffusion_pytorch_model.safetensors", "pt") as stored:
        assert {stored.get_tensor(k).dtype for k in stored.keys()} == {torch.float16}
    loaded = load_vae(str(tmp_path), torch_dtype=torch.float16)
    assert loaded.config.scaling_factor == pytest.approx(factor)
    state = loaded.state_dict()
    for key, value in system.vae.state_dict().items():
        assert torch.equal(state[key], value.half()), key


def test_clip_trains_and_exports_loadable_encoders(loader, tmp_path):
    system = CLIPSystem(text_config="tiny", vision_config="tiny", lr=1e-3)
    assert system.clip.text_model.config.vocab_size == 49408
    trainer = fit_one_step(system, loader, tmp_path / "run")
    assert 0.0 <= float(trainer.callback_metrics["val/retrieval_top1"]) <= 1.0

    system.export(str(tmp_path), dtype=torch.float32)
    text_encoder = load_text_encoder(str(tmp_path))
    # The exported config is the preset's, field for field (serialisation metadata aside).
    metadata = {"architectures", "_name_or_path", "dtype", "transformers_version"}
    exported = CLIPTextConfig.from_pretrained(tmp_path / "text_encoder").to_dict()
    preset = CLIPTextConfig.from_pretrained(PRESETS_DIR / "tiny" / "text_encoder").to_dict()
    assert {k: v for k, v in exported.items() if k not in metadata} == {
        k: v for k, v in preset.items() if k not in metadata
    }
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.model_max_length == 77 and len(tokenizer) == 49408
    ids = tokenizer(
        ["a woman, santa claus costume", ""], padding="max_length", max_length=77, return_tensors="pt"
    )
    system.clip.eval()
    with torch.no_grad():
        # Padding to the longest caption gives the same pooled embeddings as padding to 77.
        captions = ["a woman, santa claus costume", "a man, angry"]
        padded = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        full = F.normalize(system.clip.get_text_features(input_ids=padded).pooler_output, dim=-1)
        torch.testing.assert_close(system.encode_text(captions), full)
        expected = system.clip.text_model(input_ids=ids.input_ids).last_hidden_state
        torch.testing.assert_close(text_encoder(input_ids=ids.input_ids).last_hidden_state, expected)
        image_encoder = load_image_encoder(str(tmp_path))
        images = next(iter(loader))["image"]
        torch.testing.assert_close(
            image_encoder(pixel_values=images).image_embeds,
            system.clip.get_image_features(pixel_values=images).pooler_output,
        )
        # The text projection travels beside the text encoder: exported parts alone give CLIP's features.
        projection = load_text_projection(tmp_path / "text_encoder")
        torch.testing.assert_close(
            projection(text_encoder(input_ids=padded).pooler_output),
            system.clip.get_text_features(input_ids=padded).pooler_output,
        )


def test_clip_fp16_export_is_half(loader, tmp_path):
    system = CLIPSystem(text_config="tiny", vision_config="tiny")
    system.export(str(tmp_path))
    assert load_text_encoder(str(tmp_path)).dtype == torch.float16


def test_classifier_trains_round_trips_and_predicts(loader, tmp_path):
    system = DirectionClassifierSystem(channels=[8, 16], lr=1e-2)
    trainer = fit_one_step(system, loader, tmp_path / "run")
    assert 0.0 <= float(trainer.callback_metrics["val/accuracy"]) <= 1.0
    folder = system.export(str(tmp_path))
    loaded = DirectionClassifier.from_pretrained(folder)
    for key, value in system.classifier.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = next(iter(loader))["image"]
    labels = loaded.predict_directions(images, batch_size=3)
    assert labels.dtype == torch.long and labels.shape == (8,)
    assert torch.equal(labels, system.classifier.eval()(images).argmax(dim=1))
    with pytest.raises(ValueError, match="classifier"):
        DirectionClassifier.from_pretrained(tmp_path / "nothing")
