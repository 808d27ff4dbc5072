"""Writing files and folders so that a reader never sees half of one.

A file goes to a temporary name beside its final place and is renamed over it (os.replace); a folder is
filled under a hidden temporary name and swapped in (the old one renamed aside, then removed). Every
writer of the project (shards' sidecars, manifests, tables, pictures, model folders) goes through here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old content or the complete new one, never a part
    (its folder is made when missing)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1, sort_keys: bool = True) -> None:
    """`atomic_write_bytes` of UTF-8 JSON (sorted keys, indented, a final newline)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_folder(final: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` to fill a fresh temporary folder, then put it in place of `final`; returns `final`.

    Leftovers of an interrupted earlier call (`.<name>.tmp`, `.<name>.old`) are removed first. A `final`
    that is a link (a shared part of a shipped export) is replaced by the folder, its target untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    for stale in (tmp, old):
        _remove(stale)
    write(tmp)
    _umask_modes(tmp)
    if final.is_symlink() or final.exists():
        final.rename(old)
    tmp.rename(final)
    _remove(old)
    return final


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _umask_modes(folder: Path) -> None:
    """Give every file the mode the user's umask asks for: safetensors writes its files 0600 whatever it is,
    so a model exported on a shared cluster disk would be unreadable to the rest of the group."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
