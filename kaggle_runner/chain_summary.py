"""The chains as ``kr status`` shows them: one dict per chain (``--json``) and one table row per dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kaggle_runner.chain_state import ChainRecord, chain_dir, is_locked, list_chains


def chain_summaries(home: Path | None = None) -> list[dict[str, Any]]:
    """One dict per chain for ``kr status``: session k of N, state, epochs, best metrics, GPU hours spent,
    retries and why, whether a ``kr chain`` process drives it now. Oldest first."""
    return [summarize(record, home) for record in list_chains(home)]


def summarize(record: ChainRecord, home: Path | None = None) -> dict[str, Any]:
    done = [s for s in record.sessions if s.dataset_version is not None or s.finished_at is not None]
    last = done[-1] if done else None
    retries = [
        {"session": s.index, "attempt": a.number, "why": a.reason}
        for s in record.sessions
        for a in s.attempts
        if a.number > 1
    ]
    return {
        "chain": record.spec.chain_id,
        "backend": record.spec.backend,
        "kernel": record.spec.kernel_ref,
        "dataset": record.spec.dataset_ref,
        "state": record.state.value,
        "terminal": record.state.is_terminal,
        "failed": record.state.is_failed,
        "session": record.session,
        "sessions": record.spec.sessions,
        "sessions_done": len(done),
        "epoch": last.epoch if last else None,
        "step": last.step if last else None,
        "best": _best_so_far(record),
        "gpu_hours": round(sum(s.gpu_seconds for s in record.sessions) / 3600, 3),
        "retries": retries,
        "message": record.message,
        "halted": record.halted,
        "active": is_locked(record.spec.chain_id, home),
        "stages": {str(s.index): dict(s.stages) for s in record.sessions},
        "updated_at": record.updated_at,
        "folder": str(chain_dir(record.spec.chain_id, home)),
    }


def _best_so_far(record: ChainRecord) -> dict[str, Any] | None:
    """The best validation metrics any session reported (the trainer's best is cumulative, so the latest
    session that has one wins)."""
    for session in reversed(record.sessions):
        if session.best:
            return session.best
    return None


CHAIN_TABLE_HEADERS = ["CHAIN", "BACKEND", "SESSION", "STATE", "EPOCH", "BEST", "GPU H", "RETRIES", "MESSAGE"]
_BEST_SHOWN = ("bleu4", "exact_match", "edit_score")


def chain_table_row(summary: dict[str, Any]) -> list[str]:
    """One ``kr status`` table row of a ``chain_summaries()`` entry (headers: ``CHAIN_TABLE_HEADERS``)."""
    best = summary.get("best") or {}
    shown = " ".join(f"{k}={best[k]:.4g}" for k in _BEST_SHOWN if isinstance(best.get(k), (int, float)))
    retries = summary.get("retries") or []
    why = ", ".join(sorted({r["why"] for r in retries}))
    state = summary["state"] + (" (running)" if summary.get("active") else "")
    return [
        str(summary["chain"]),
        str(summary["backend"]),
        f"{summary['session']}/{summary['sessions']}",
        state,
        "-" if summary.get("epoch") is None else str(summary["epoch"]),
        shown or "-",
        f"{summary.get('gpu_hours') or 0:.2f}",
        f"{len(retries)} ({why})" if retries else "0",
        str(summary.get("halted") or summary.get("message") or ""),
    ]
