"""Model folders are swapped in whole: a reader sees the old folder or the complete new one."""

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from portrait_edit.atomic import replace_folder
from portrait_edit.models.export import save_module


def test_replace_folder_swaps_the_whole_folder_and_clears_leftovers(tmp_path):
    final = tmp_path / "unet"
    final.mkdir()
    (final / "stale.bin").write_text("from the previous export")
    for leftover in (".unet.tmp", ".unet.old"):  # an earlier call killed half way
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "junk").write_text("x")

    def write(tmp):
        assert not tmp.exists()  # the leftover was removed, not written into
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")

    assert replace_folder(final, write) == final
    assert sorted(p.name for p in final.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]


def test_replace_folder_keeps_the_old_folder_when_writing_fails(tmp_path):
    final = tmp_path / "vae"
    final.mkdir()
    (final / "config.json").write_text("old")

    def write(tmp):
        tmp.mkdir()
        (tmp / "config.json").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_folder(final, write)
    assert (final / "config.json").read_text() == "old"


def test_save_module_casts_a_copy(tmp_path, tiny_sd):
    vae = AutoencoderKL.from_config(tiny_sd.vae.config)
    folder = save_module(vae, tmp_path / "vae", torch.float16)
    stored = load_file(folder / "diffusion_pytorch_model.safetensors")
    expected = vae.state_dict()
    assert stored.keys() == expected.keys()
    assert all(t.dtype == torch.float16 for t in stored.values())
    for name, tensor in stored.items():
        torch.testing.assert_close(tensor, expected[name].half())
    assert next(vae.parameters()).dtype == torch.float32  # the module itself is left as it was


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_follow_the_umask(tmp_path, tiny_sd, umask):
    """safetensors writes 0600 whatever the umask: a model exported to a group's disk must be readable."""
    import os

    old = os.umask(umask)
    try:
        folder = save_module(AutoencoderKL.from_config(tiny_sd.vae.config), tmp_path / "vae", torch.float16)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {"config.json": 0o666 & ~umask, "diffusion_pytorch_model.safetensors": 0o666 & ~umask}
