"""The session's two splits, loaded and prepared once: by this process, or under torchrun by rank 0 for every
rank (trainer/exchange.py). Preparing reports its progress to the watchdog chunk by chunk."""

from __future__ import annotations

import os
from collections.abc import Callable

from trainer import watch
from trainer.config import TrainConfig
from trainer.data import DataConfig, DataError, PreparedSplit, load_texts_and_images, prepare_split
from trainer.exchange import SplitExchange
from trainer.images import ImageSpec
from trainer.logs import get_logger, log_metrics
from trainer.tokenizer import Vocab

Prepared = tuple[PreparedSplit, list[str] | None]  # the split, and the vocabulary it was tokenized with


def data_config(cfg: TrainConfig) -> DataConfig:
    return DataConfig(data_name=cfg.data_name, use_huggingface=cfg.resolved_use_huggingface, hf_repo=cfg.hf_repo,
                      data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, synthetic_train=cfg.synthetic_train,
                      synthetic_val=cfg.synthetic_val, synthetic_test=cfg.synthetic_test, seed=cfg.seed)


def prepare_procs(world_size: int, exchange: SplitExchange | None) -> int:
    """Decoding processes: every CPU when one process prepares for all, else the CPUs shared among the ranks."""
    cpus = os.cpu_count() or 1
    return cpus if world_size == 1 or exchange is not None else max(1, cpus // world_size)


def shared(exchange: SplitExchange | None, name: str, prepare: Callable[[], Prepared]) -> Prepared:
    """``prepare()`` here, or rank 0's result under an exchange (rank 0 prepares and publishes it; a failure
    is published too, so that the other ranks stop with the same message instead of waiting)."""
    if exchange is not None and not exchange.is_source:
        return exchange.receive(name)
    try:
        split, vocab = prepare()
        return (exchange.publish(name, split, vocab) if exchange else split), vocab
    except BaseException as exc:
        if exchange is not None:
            exchange.publish_error(name, exc)
        raise


def load_train(cfg: TrainConfig, data_cfg: DataConfig, spec: ImageSpec, saved_vocab: list[str] | None,
               procs: int) -> Prepared:
    texts, images = load_texts_and_images(data_cfg, "train")
    vocab = Vocab.from_list(saved_vocab) if saved_vocab else Vocab.build(texts)
    split = prepare_split(texts, images, vocab, spec, cfg.max_target_len, procs, reporter("train"))
    log_data_report("train", split, spec, cfg.max_target_len)
    return split, vocab.to_list()


def load_validation(cfg: TrainConfig, data_cfg: DataConfig, spec: ImageSpec, vocab: Vocab, procs: int) -> Prepared:
    texts, images = load_texts_and_images(data_cfg, "validation")
    if cfg.val_max_samples:
        texts, images = texts[: cfg.val_max_samples], images[: cfg.val_max_samples]
    split = prepare_split(texts, images, vocab, spec, cfg.max_target_len, procs, reporter("validation"))
    log_data_report("validation", split, spec, cfg.max_target_len)
    return split, None


def reporter(name: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        watch.beat("prepare", split=name, images=done, of=total)

    return report


def log_data_report(name: str, split: PreparedSplit, spec: ImageSpec, max_target_len: int) -> None:
    log = get_logger()
    log_metrics("data", split=name, **split.report)
    for message in split.errors:
        log.warning(f"{name}: unreadable image left out: {message}")
    if split.report.get("shrunk_to_fit"):
        log.warning(f"{name}: {split.report['shrunk_to_fit']} images were larger than the model input "
                    f"({spec.height}x{spec.max_width}) and were shrunk to fit")
    if split.report.get("truncated_targets"):
        log.warning(f"{name}: {split.report['truncated_targets']} formulas are longer than "
                    f"--max_target_len {max_target_len} tokens and were cut for training")
    if len(split) == 0:
        raise DataError(f"no readable image in the {name} split: check the data source")
