"""``kr predict IMAGE... [--run RUN | --checkpoint PATH]``: LaTeX for formula images, from a trained model.

The checkpoint is the newest one of a run or chain (``last.pth.tar`` inside its ``checkpoints.tar.gz``), or a
``.pth.tar`` / ``.tar.gz`` given by path. The model runs here, so this needs the ``train`` extra (torch); the
trainer is imported only inside the command, which keeps ``kaggle_runner`` free of torch.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from kaggle_runner.cli._app import command, print_json, progress
from kaggle_runner.errors import KrError, UsageError
from kr_contract.errors import ContractError
from kr_contract.names import (
    BEST_PREFIX,
    CHECKPOINT_DIR,
    CHECKPOINT_SUFFIX,
    LAST_CHECKPOINT,
    TARBALL,
    is_best_name,
)
from kr_contract.tarball import extract_tarball

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
    beam: Annotated[
        int, typer.Option("--beam", help="Beam width: 1 is greedy decoding; 5 reads a little better, slower.")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Print the LaTeX the model reads in each image (one image: the LaTeX alone; several: IMAGE<tab>LaTeX)."""
    if run is not None and checkpoint is not None:
        raise UsageError("give --run or --checkpoint, not both")
    _check_images(images)
    if beam < 1:
        raise UsageError(f"--beam must be at least 1 (1 is greedy decoding), got {beam}")
    predict_images, input_errors = _load_predictor()
    source = checkpoint if checkpoint is not None else newest_tarball(run)
    with tempfile.TemporaryDirectory(prefix="kr-predict-") as scratch:
        model_file = checkpoint_file(source, Path(scratch), best=best)
        progress(f"checkpoint: {source}" + ("" if model_file == source else f" ({model_file.name})"))
        try:
            formulas = predict_images(str(model_file), [str(path) for path in images], beam=beam)
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


Predictor = Callable[..., list[str]]  # (checkpoint, images, *, beam) -> one LaTeX line per image


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
    """``checkpoints/last.pth.tar`` (or ``BEST_*``) of a kr tarball, as ``scratch/<name>``. The whole tarball is
    checked by the contract's verifier first (every member against its MANIFEST)."""
    unpacked = scratch / ".unpacked"
    try:
        folder = extract_tarball(tarball, unpacked)
    except ContractError as exc:
        shutil.rmtree(unpacked, ignore_errors=True)
        raise KrError(
            f"cannot read {tarball}: {exc}",
            hint="a file that does not match its MANIFEST, or not a kr checkpoints tarball at all: download it "
            "again (kr download)",
        ) from None
    wanted = _pick(folder, tarball, best=best)
    target = scratch / wanted.name
    os.replace(wanted, target)
    shutil.rmtree(unpacked, ignore_errors=True)
    return target


def _pick(folder: Path, tarball: Path, *, best: bool) -> Path:
    if not best:
        return folder / LAST_CHECKPOINT  # the verifier guarantees it
    found = sorted(path for path in folder.iterdir() if is_best_name(path.name))
    if not found:
        raise KrError(f"{tarball} holds no {CHECKPOINT_DIR}/{BEST_PREFIX}*{CHECKPOINT_SUFFIX}",
                      hint="it has no best checkpoint yet; leave out --best for the newest")
    return found[0]
