"""The world probe (nose position reader): one real training step, export / load round trip, the pixel
convention of `locate_head` and the validation median, each against hand-built values."""

import math

import pytest
import torch
from lightning.pytorch import Trainer
from safetensors import safe_open
from torch.utils.data import DataLoader

from portrait_edit.data.world_images import PairArrays, WorldImagesDataset
from portrait_edit.evaluation.world_probe import WorldProbe, WorldProbeConfig
from portrait_edit.systems.probe import WorldProbeSystem, median, pixel_errors, probe_targets
from portrait_edit.tasks import DIRECTIONS
from portrait_edit.world import make_pair

SIZE = 64  # the probe's default image side
CHANNELS = [8, 16]
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def world_pairs(n: int, size: int = SIZE) -> PairArrays:
    """n mini-world pairs in memory (the arrays `read_pairs` builds from shards), directions cycling."""
    return PairArrays.from_pairs(
        [make_pair(2000 + i, DIRECTIONS[i % len(DIRECTIONS)], size=size) for i in range(n)]
    )


@pytest.fixture(scope="module")
def loader():
    return DataLoader(WorldImagesDataset(world_pairs(2)), batch_size=4, shuffle=False)


def fixed_probe(nose_xy: tuple[float, float], size: int = SIZE) -> WorldProbe:
    """A probe whose output is `nose_xy` (normalised) whatever the image: zero head weights, known bias."""
    probe = WorldProbe(WorldProbeConfig(channels=CHANNELS, image_size=size, hidden=16))
    with torch.no_grad():
        probe.head.weight.zero_()
        probe.head.bias.copy_(torch.tensor(nose_xy))
    return probe


def test_one_training_step_moves_the_weights_and_logs_the_median(loader, tmp_path):
    system = WorldProbeSystem(channels=CHANNELS, lr=1e-3)
    before = {k: v.detach().clone() for k, v in system.named_parameters()}
    trainer = Trainer(
        max_steps=1,
        val_check_interval=1,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        **QUIET,
    )
    # Validation in batches of 3 and 1: a mean of per-batch medians would differ from the median of all 4.
    val_loader = DataLoader(loader.dataset, batch_size=3, shuffle=False)
    trainer.fit(system, train_dataloaders=loader, val_dataloaders=val_loader)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    changed = [k for k, v in system.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) > 0.5 * len(before), f"only {len(changed)} of {len(before)} tensors changed"
    # The logged median is the median over the 4 validation images, recomputed here by hand.
    batch = next(iter(loader))
    assert len(loader.dataset) == 4 and batch["image"].shape[0] == 4
    with torch.no_grad():
        predicted = system.probe.eval()(batch["image"])["nose_xy"] * SIZE
    errors = (predicted - batch["keypoints"][:, 0, :2]).norm(dim=1)
    expected = errors.sort().values[1:3].mean()  # 4 images: the mean of the two middle errors
    assert float(trainer.callback_metrics["val/nose_px_median"]) == pytest.approx(float(expected), rel=1e-5)


def test_save_load_round_trip(loader, tmp_path):
    probe = WorldProbeSystem(channels=CHANNELS).probe.eval()
    folder = probe.save_pretrained(tmp_path / "probe")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    loaded = WorldProbe.from_pretrained(folder)
    assert loaded.config == probe.config and not loaded.training
    for key, value in probe.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = next(iter(loader))["image"]
    assert torch.equal(loaded.locate_head(images), probe.locate_head(images))

    probe.save_pretrained(tmp_path / "half", dtype=torch.float16)
    with safe_open(tmp_path / "half" / "model.safetensors", "pt") as stored:
        assert {stored.get_tensor(k).dtype for k in stored.keys()} == {torch.float16}
    with pytest.raises(ValueError, match="probe"):
        WorldProbe.from_pretrained(tmp_path / "nothing")


def test_locate_head_uses_the_keypoint_pixel_convention():
    # Normalised (0.5 / 64, 1.0): the centre of the first pixel column, on the bottom edge of the image.
    probe = fixed_probe((0.5 / SIZE, 1.0))
    images = torch.zeros(3, 3, SIZE, SIZE)
    torch.testing.assert_close(probe.locate_head(images, batch_size=2), torch.tensor([[0.5, 64.0]] * 3))
    # The training targets use the same scale: a perfect probe has zero error on a keypoint it outputs.
    keypoints = torch.zeros(1, 18, 3)
    keypoints[0, 0] = torch.tensor([0.5, 64.0, 1.0])
    target = probe_targets({"keypoints": keypoints}, {"nose_xy": 2}, SIZE)["nose_xy"]
    torch.testing.assert_close(target, torch.tensor([[0.5 / SIZE, 1.0]]))
    with pytest.raises(ValueError, match="image_size"):
        probe.locate_head(torch.zeros(1, 3, 32, 32))


def test_pixel_errors_and_median_by_hand():
    predicted = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [10.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [4.0, 8.0]])
    errors = pixel_errors(predicted, target)
    torch.testing.assert_close(errors, torch.tensor([0.0, 5.0, 1.0, 10.0]))
    torch.testing.assert_close(median(errors), torch.tensor(3.0))  # (1 + 5) / 2, not the lower middle 1
    torch.testing.assert_close(median(errors[:3]), torch.tensor(1.0))
    with pytest.raises(ValueError, match="same shape"):
        pixel_errors(predicted, target[:2])


def test_config_and_targets_refuse_bad_values():
    with pytest.raises(ValueError, match="image_size"):
        WorldProbeConfig(channels=[8, 16, 16], image_size=36)
    with pytest.raises(ValueError, match="targets"):
        WorldProbeConfig(targets={})
    with pytest.raises(ValueError, match="skin_rgb"):  # a batch without the skin field
        probe_targets({"keypoints": torch.zeros(1, 18, 3)}, {"skin_rgb": 3}, SIZE)
    with pytest.raises(ValueError, match="eye_rgb"):
        probe_targets({"keypoints": torch.zeros(1, 18, 3)}, {"eye_rgb": 3}, SIZE)


def test_colour_targets_read_the_identity_and_log_their_error(loader, tmp_path):
    targets = {"nose_xy": 2, "skin_rgb": 3, "hair_rgb": 3}
    system = WorldProbeSystem(channels=CHANNELS, targets=targets, lr=1e-3)
    batch = next(iter(loader))
    got = probe_targets(batch, targets, SIZE)
    pair = make_pair(2000, DIRECTIONS[0], size=SIZE)
    torch.testing.assert_close(got["skin_rgb"][0], torch.tensor(pair.meta["identity"]["skin"]) / 255.0)
    torch.testing.assert_close(got["hair_rgb"][1], torch.tensor(pair.meta["identity"]["hair_colour"]) / 255.0)
    trainer = Trainer(max_steps=1, val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=0,
                      enable_checkpointing=False, default_root_dir=str(tmp_path), **QUIET)  # fmt: skip
    trainer.fit(system, train_dataloaders=loader, val_dataloaders=loader)
    with torch.no_grad():
        predicted = system.probe.eval()(batch["image"])
    expected = (predicted["skin_rgb"] - got["skin_rgb"]).abs().mean() * 255
    assert float(trainer.callback_metrics["val/skin_mae"]) == pytest.approx(float(expected), rel=1e-5)
    assert "val/hair_mae" in trainer.callback_metrics
