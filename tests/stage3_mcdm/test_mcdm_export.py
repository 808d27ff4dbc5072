"""mcdm.json, typed (models/mcdm_export.py): what the MCDM fit writes is what the editor, the pipeline and
the tools read back; earlier exports still load; a broken file is one readable error."""

import json

import pytest

from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.models.mcdm_export import MCDMExportSettings

# An export of before the typed settings, as data/mini/mcdm/mcdm.json was written: the CLIP view under
# "image_size", no adapter / spatial_null keys (ours and black).
LEGACY = {
    "base": "mini", "use_spatial": True, "use_image": True, "num_image_tokens": 16, "latent_pool": 4,
    "mlp_ratio": 4, "clip_layer": -1, "image_size": 64, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
    "scales": {"image": 3.0, "spatial": 3.0, "text": 5.0}, "mask_at": 0.15, "scheduler": "UniPC",
    "num_inference_steps": 20,
}  # fmt: skip


def test_an_earlier_export_loads_and_saves_under_todays_keys(tmp_path):
    (tmp_path / "mcdm.json").write_text(json.dumps(LEGACY))
    settings = MCDMExportSettings.load(tmp_path)
    assert (settings.clip_image_size, settings.adapter, settings.spatial_null) == (64, "ours", "black")
    assert settings.mask_range is None and settings.mask_at == 0.15
    settings.replace(mask_range=[0.1, 0.4]).save(tmp_path)
    written = json.loads((tmp_path / "mcdm.json").read_text())
    expected = {k: v for k, v in LEGACY.items() if k != "image_size"}
    expected |= {"clip_image_size": 64, "adapter": "ours", "spatial_null": "black", "mask_range": [0.1, 0.4]}
    assert written == expected  # nothing lost, nothing None written
    assert MCDMExportSettings.load(tmp_path) == settings.replace(mask_range=[0.1, 0.4])


def test_the_settings_of_a_conditioning_rebuild_that_conditioning():
    conditioning = MCDMConditioning(
        use_spatial=False, num_image_tokens=3, latent_pool=2, mlp_ratio=2, clip_layer=-2, clip_image_size=32,
        image_mean=[0.4] * 3, image_std=[0.6] * 3, spatial_null="zeros",
    )  # fmt: skip
    settings = MCDMExportSettings.of(conditioning, scales={"image": 1.0, "spatial": 2.0, "text": 4.0})
    again = settings.conditioning()
    for name in ("use_spatial", "use_image", "adapter_sizes", "clip_view", "adapter_kind", "spatial_null"):
        assert getattr(again, name) == getattr(conditioning, name), name
    assert again.p_drop == 0.0  # an export edits: no condition dropout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_scale": 3.0}, r"unknown settings \['image_scale'\]"),
        ({"scales": {"image": 3.0}}, "scales"),
        ({"mask_at": 0.0}, "mask_at"),
        ({"use_image": None, "clip_layer": None}, None),
    ],
)
def test_a_broken_mcdm_json_is_one_error_naming_the_file(tmp_path, change, message):
    record = {k: v for k, v in {**LEGACY, **change}.items() if v is not None}
    (tmp_path / "mcdm.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message or "missing") as error:
        MCDMExportSettings.load(tmp_path)
    assert str(error.value).startswith(str(tmp_path / "mcdm.json"))


def test_a_folder_without_mcdm_json_is_not_an_export(tmp_path):
    with pytest.raises(ValueError, match="is not an MCDM export"):
        MCDMExportSettings.load(tmp_path)
