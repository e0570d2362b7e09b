"""``kr predict IMAGE... [--run RUN | --checkpoint PATH]``: LaTeX for formula images, from a trained model.

The checkpoint is the newest one of a run or chain (``last.pth.tar`` inside its ``checkpoints.tar.gz``), or a
``.pth.tar`` / ``.tar.gz`` given by path. The model runs here, so this needs the ``train`` extra (torch); the
trainer is imported only inside the command, which keeps ``kaggle_runner`` free of torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from kaggle_runner.cli._app import command, print_json, progress
from kaggle_runner.errors import KrError, UsageError

TARBALL = "checkpoints.tar.gz"
CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pth.tar"
BEST_PREFIX = "BEST_"
MANIFEST_NAME = "MANIFEST.json"
TRAIN_EXTRA_HINT = "pip install 'kaggle-runner[train]'"
_SESSION_DIR = re.compile(r"session-(\d+)$")


@command("predict")
def predict(
    images: Annotated[
        list[Path], typer.Argument(help="Formula images (PNG, JPEG, ...).", show_default=False)
    ],
    run: Annotated[
        str | None,
        typer.Option("--run", help="Run or chain id (or unique prefix), or a folder of downloaded outputs."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="A .pth.tar checkpoint or a checkpoints .tar.gz.")
    ] = None,
    best: Annotated[
        bool, typer.Option("--best", help="Use the best checkpoint (by validation BLEU-4), not the newest.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Print the LaTeX the model reads in each image (one image: the LaTeX alone; several: IMAGE<tab>LaTeX)."""
    if run is not None and checkpoint is not None:
        raise UsageError("give --run or --checkpoint, not both")
    _check_images(images)
    predict_images, input_errors = _load_predictor()
    source = checkpoint if checkpoint is not None else newest_tarball(run)
    with tempfile.TemporaryDirectory(prefix="kr-predict-") as scratch:
        model_file = checkpoint_file(source, Path(scratch), best=best)
        progress(f"checkpoint: {source}" + ("" if model_file == source else f" ({model_file.name})"))
        try:
            formulas = predict_images(str(model_file), [str(path) for path in images])
        except input_errors as exc:
            raise UsageError(str(exc)) from None
    if as_json:
        print_json(
            [{"image": str(path), "latex": latex} for path, latex in zip(images, formulas, strict=True)]
        )
    elif len(images) == 1:
        print(formulas[0])
    else:
        for path, latex in zip(images, formulas, strict=True):
            print(f"{path}\t{latex}")


def _check_images(images: Sequence[Path]) -> None:
    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        raise UsageError(f"no such image file: {', '.join(missing)}")


Predictor = Callable[[str, list[str]], list[str]]


def _load_predictor() -> tuple[Predictor, tuple[type[Exception], ...]]:
    """``trainer.predict.predict_images`` and the errors it raises for bad input, or a usage error saying how
    to install what it needs."""
    try:
        from trainer.checkpoint import CheckpointError
        from trainer.predict import PredictError, predict_images
    except ImportError as exc:
        missing = exc.name or "the trainer"
        raise UsageError(
            f"kr predict runs the model on this machine and needs the training extra ({missing} is missing)",
            hint=TRAIN_EXTRA_HINT,
        ) from None
    return predict_images, (PredictError, CheckpointError)


# ------------------------------------------------------------------------------------ checkpoints


def newest_tarball(target: str | None) -> Path:
    """The newest ``checkpoints.tar.gz`` of a run (its ``output/``) or a chain (its last session that has one)."""
    from kaggle_runner.runs import state_folder

    folder = Path(target).expanduser() if target is not None and Path(target).expanduser().is_dir() else None
    if folder is None:
        folder, _ = state_folder(target)
    for candidate in _tarball_candidates(folder):
        if candidate.is_file():
            return candidate
    raise UsageError(
        f"no {TARBALL} in {folder}: nothing has been downloaded for it yet",
        hint="kr download fetches a finished run's outputs; or pass --checkpoint PATH",
    )


def _tarball_candidates(folder: Path) -> list[Path]:
    sessions = sorted(
        ((int(m.group(1)), child) for child in folder.iterdir() if (m := _SESSION_DIR.match(child.name))),
        reverse=True,
    )
    return [child / TARBALL for _, child in sessions] + [folder / "output" / TARBALL, folder / TARBALL]


def checkpoint_file(source: Path, scratch: Path, *, best: bool = False) -> Path:
    """A checkpoint file to load: ``source`` itself, or the one extracted from a tarball into ``scratch``."""
    if not source.is_file():
        raise UsageError(f"no such checkpoint: {source}")
    if _is_tarball(source):
        return extract_checkpoint(source, scratch, best=best)
    if best:
        raise UsageError("--best picks a checkpoint inside a checkpoints .tar.gz; give the tarball")
    return source  # a torch checkpoint (zip format, despite the .pth.tar name)


def _is_tarball(path: Path) -> bool:
    if path.name.endswith((".tar.gz", ".tgz")):
        return True  # by name, so that a truncated download says so instead of failing to load as torch
    if path.name.endswith(".pth.tar"):
        return False
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError):
        return False


def extract_checkpoint(tarball: Path, scratch: Path, *, best: bool = False) -> Path:
    """Copy ``checkpoints/last.pth.tar`` (or ``BEST_*``) out of a kr tarball, checked against its MANIFEST."""
    try:
        with tarfile.open(tarball, "r:*") as tar:
            members = {_member_name(m.name): m for m in tar.getmembers() if m.isfile()}
            wanted = _pick_member(members, tarball, best=best)
            manifest = _read_manifest(tar, members.get(f"{CHECKPOINT_DIR}/{MANIFEST_NAME}"))
            target = scratch / Path(wanted).name
            digest = _copy_member(tar, members[wanted], target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise KrError(f"cannot read {tarball}: {exc}", hint="download it again (kr download)") from None
    expected = manifest.get(target.name)
    if expected is not None and expected != digest:
        raise KrError(f"{target.name} in {tarball} does not match its MANIFEST.json (corrupt download)")
    return target


def _member_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _pick_member(members: dict[str, tarfile.TarInfo], tarball: Path, *, best: bool) -> str:
    in_dir = [name for name in members if name.startswith(f"{CHECKPOINT_DIR}/") and name.count("/") == 1]
    if best:
        found = sorted(name for name in in_dir if Path(name).name.startswith(BEST_PREFIX))
    else:
        found = [name for name in in_dir if Path(name).name == LAST_NAME]
    if not found:
        wanted = f"{BEST_PREFIX}*.pth.tar" if best else LAST_NAME
        raise KrError(f"{tarball} holds no {CHECKPOINT_DIR}/{wanted}: it is not a kr checkpoints tarball")
    return found[0]


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> dict[str, str]:
    handle = tar.extractfile(member) if member is not None else None
    if handle is None:
        return {}
    try:
        files = json.loads(handle.read().decode("utf-8")).get("files", {})
    except (ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> str:
    """Write one member to ``target`` by name we choose (never a path from the archive); its sha256."""
    handle = tar.extractfile(member)
    if handle is None:
        raise tarfile.TarError(f"{member.name} is not a regular file")
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
