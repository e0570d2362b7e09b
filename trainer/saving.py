"""The save transaction: a training state written as checkpoint files, the folder's manifest, the weights-only
BEST_, the tarball, and retention; every step atomic, so a crash at any line leaves the last good state.

Order: the new files first (each written to a temp file and renamed), then the manifest that lists them, then
the tarball of last + BEST_ with its own manifest (the contract's writer), then old files pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import checkpoint as ckpt
from trainer.logs import log_metrics


@dataclass
class SaveTarget:
    """Where and what one save writes."""

    out_dir: Path
    tag: str  # "hf" or "local": part of the epoch and BEST_ file names
    data_name: str
    keep_epochs: int
    keep_tarballs: int

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / ckpt.CHECKPOINT_DIR


@dataclass
class Saved:
    written: list[tuple[str, str]] = field(default_factory=list)  # (kind, file name): epoch, last, best
    tarball: Path | None = None


def save_state(target: SaveTarget, state: dict[str, Any], *, epoch: int | None, best: bool) -> Saved:
    """Write ``state`` as last.pth.tar (and as the epoch file of ``epoch`` when given, and as weights-only BEST_
    when ``best``), the manifest, and the tarballs."""
    data = ckpt.serialize(state)
    digest = ckpt.sha256_bytes(data)
    folder = target.ckpt_dir
    folder.mkdir(parents=True, exist_ok=True)
    hashes = dict(ckpt.read_manifest(folder)["files"])
    saved = Saved()
    last = folder / ckpt.LAST_NAME
    if epoch is not None:
        name = ckpt.epoch_file_name(target.tag, target.data_name, epoch)
        ckpt.write_checkpoint(folder, name, data)
        ckpt.link_or_copy(folder / name, last)  # one write, two names
        hashes[name] = digest
        saved.written.append(("epoch", name))
    else:
        ckpt.write_checkpoint(folder, ckpt.LAST_NAME, data)
    hashes[ckpt.LAST_NAME] = digest
    saved.written.append(("last", ckpt.LAST_NAME))
    best_path = folder / ckpt.best_file_name(target.tag, target.data_name)
    if best:
        hashes[best_path.name] = write_best(folder, best_path.name, state)
        saved.written.append(("best", best_path.name))
    progress = state["progress"]
    hashes = write_manifest(folder, hashes, target.keep_epochs, progress["epoch"], progress["global_step"])
    members = {last: digest} | ({best_path: hashes[best_path.name]} if best_path.name in hashes else {})
    saved.tarball = ckpt.pack(target.out_dir, members, progress["epoch"], progress["global_step"],
                              target.keep_tarballs)
    return saved


def write_best(folder: Path, name: str, state: dict[str, Any]) -> str:
    """BEST_ holds weights only (inference and a restart from them need no optimizer); returns its sha256."""
    data = ckpt.serialize(ckpt.weights_only(state))
    ckpt.write_checkpoint(folder, name, data)
    return ckpt.sha256_bytes(data)


def write_manifest(folder: Path, hashes: dict[str, str], keep_epochs: int, epoch: int, step: int) -> dict[str, str]:
    """Prune the old epoch files, then list exactly the checkpoint files present; returns the listing."""
    ckpt.prune_epoch_files(folder, keep_epochs)
    present = {p.name for p in folder.glob("*.pth.tar")}
    listed = {name: digest for name, digest in hashes.items() if name in present}
    for name in present - listed.keys():  # e.g. a BEST_ carried over from the resumed tarball
        listed[name] = ckpt.sha256_file(folder / name)
    ckpt.write_manifest(folder, listed, epoch, step)
    return listed


def log_saved(saved: Saved, epoch: int, step: int, seconds: float) -> None:
    for kind, name in saved.written:
        log_metrics("checkpoint", kind=kind, path=f"{ckpt.CHECKPOINT_DIR}/{name}", epoch=epoch, step=step)
    if saved.tarball is not None:
        log_metrics("tarball", path=saved.tarball.name, epoch=epoch, step=step, seconds=seconds)
