"""What saving costs: seconds to save and restore the full state of the default (base) model, pack time and
tarball size (last.pth.tar full, BEST_ weights only, as the trainer writes them), and the share of a 12-hour
session spent outside training steps at the default save interval.

    python bench/checkpoint_io.py [--model_size base] [--vocab 600] [--save_every_minutes 8] [--epoch_minutes 20]

Uses the trainer's own checkpoint code (serialize, weights_only, atomic write, manifest, pack). A BEST_ write
is counted at every epoch end (the worst case: a new best every epoch). Prints
JSON and one summary line. Target: under 3 % of a 12-hour session.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainer import FORMAT_VERSION
from trainer import checkpoint as ckpt
from trainer.budget import MAX_MARGIN_S
from trainer.model import ImageToLatex, count_parameters, model_config_for

SESSION_S = 12 * 3600
BEST_NAME = ckpt.best_file_name("hf", "full")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_size", default="base", choices=("tiny", "small", "base"))
    p.add_argument("--vocab", type=int, default=600, help="vocabulary size (linxy full: a few hundred tokens)")
    p.add_argument("--save_every_minutes", type=float, default=8.0, help="the trainer's default interval")
    p.add_argument("--epoch_minutes", type=float, default=20.0,
                   help="length of an epoch on the GPU (each epoch adds an epoch checkpoint and a validation)")
    p.add_argument("--repeats", type=int, default=2)
    return p.parse_args()


def full_state(model: ImageToLatex, optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """The same keys the trainer saves (Trainer._state), with the real model and optimizer state."""
    return {"format_version": FORMAT_VERSION, "model": model.state_dict(), "model_config": model.cfg.to_dict(),
            "optimizer": optimizer.state_dict(), "scaler": {}, "rng": ckpt.capture_rng(),
            "schedule": {"base_lr": 3e-4, "warmup_steps": 500, "total_steps": 100000},
            "progress": {"epoch": 3, "batch_in_epoch": 17, "global_step": 9000}, "loss_window": {},
            "vocab": [f"t{i}" for i in range(model.cfg.vocab_size)], "best": None, "last_val": None}


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> int:
    a = parse()
    torch.manual_seed(0)
    model = ImageToLatex(model_config_for(a.model_size, a.vocab, 202))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.rand(2, 1, 64, 128), torch.randint(0, a.vocab, (2, 8))).sum().backward()
    optimizer.step()  # fills both AdamW moments: the state is full size
    out = Path(tempfile.mkdtemp(prefix="kr-ckpt-bench-"))
    folder = out / "checkpoints"
    folder.mkdir()
    save_s, best_s, pack_s, restore_s = [], [], [], []
    sizes: dict[str, float] = {}
    digests: dict[str, str] = {}
    for _ in range(a.repeats):
        state = full_state(model, optimizer)

        def write_last() -> None:
            data = ckpt.serialize(state)  # noqa: B023
            sizes["checkpoint_mb"] = len(data) / 1e6
            ckpt.write_checkpoint(folder, ckpt.LAST_NAME, data)
            digests[ckpt.LAST_NAME] = ckpt.sha256_bytes(data)
            ckpt.write_manifest(folder, {ckpt.LAST_NAME: digests[ckpt.LAST_NAME]}, 3, 9000)

        def write_best() -> None:
            data = ckpt.serialize(ckpt.weights_only(state))  # noqa: B023
            sizes["best_mb"] = len(data) / 1e6
            ckpt.write_checkpoint(folder, BEST_NAME, data)
            digests[BEST_NAME] = ckpt.sha256_bytes(data)

        save_s.append(timed(write_last))
        best_s.append(timed(write_best))
        members = {folder / name: digest for name, digest in digests.items()}
        pack_s.append(timed(lambda: ckpt.pack(out, members, 3, 9000, keep_timestamped=3)))  # noqa: B023

        def read_last() -> None:
            state = ckpt.load_checkpoint(folder / ckpt.LAST_NAME)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])

        restore_s.append(timed(read_last))
    sizes["tarball_bytes"] = (out / ckpt.TARBALL_NAME).stat().st_size
    sizes["tarball_mb"] = sizes["tarball_bytes"] / 1e6
    save, save_best, pack, restore = min(save_s), min(best_s), min(pack_s), min(restore_s)
    epochs_per_session = SESSION_S / (a.epoch_minutes * 60)
    saves_per_session = SESSION_S / (a.save_every_minutes * 60) + epochs_per_session
    # Outside training steps: every save and pack, a BEST_ per epoch, the restore at start, and the stop margin.
    overhead = saves_per_session * (save + pack) + epochs_per_session * save_best + restore + MAX_MARGIN_S
    report = {"model_size": a.model_size, "parameters": count_parameters(model), "save_s": round(save, 2),
              "best_save_s": round(save_best, 2), "pack_s": round(pack, 2), "restore_s": round(restore, 2),
              "checkpoint_mb": round(sizes["checkpoint_mb"], 1), "best_mb": round(sizes["best_mb"], 1),
              "tarball_mb": round(sizes["tarball_mb"], 1), "tarball_bytes": int(sizes["tarball_bytes"]),
              "saves_per_12h_session": round(saves_per_session, 1), "overhead_s": round(overhead, 1),
              "share_of_session": round(overhead / SESSION_S, 4),
              "stop_margin_s": MAX_MARGIN_S, "threads": torch.get_num_threads(),
              "note": "validation passes are not counted: they measure the model, they are not checkpoint I/O"}
    print(json.dumps(report, indent=2))
    print(f"checkpoint_io: {a.model_size} ({report['parameters'] / 1e6:.1f} M params, {report['checkpoint_mb']} MB): "
          f"BEST_ {report['best_mb']} MB, tarball {report['tarball_mb']} MB; "
          f"save {save:.2f} s (BEST_ {save_best:.2f} s), pack {pack:.2f} s, restore {restore:.2f} s; {saves_per_session:.0f} saves per 12 h "
          f"-> {100 * overhead / SESSION_S:.2f} % of the session outside training steps (target < 3 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
