"""kr's configuration: ``kr.toml`` in the project directory, or ``[tool.kr]`` in its ``pyproject.toml``.

The file is flat: top-level keys for the Kaggle side and the session, one ``[trainer]`` table for the trainer's
arguments. Every value is validated on load (the rules are in ``config_rules.py``); an error names the key,
the bad value and what is allowed.

```toml
kernel_slug = "kr-latex-ocr"
kernel_title = "kr latex ocr"
dataset_slug = "kr-latex-ocr-checkpoints"
backend = "local"                 # local | kaggle
accelerator = "NvidiaTeslaT4"
internet = true
private = true
epochs_per_session = 1
session_budget_s = 41400          # 11.5 h: Kaggle stops a GPU session at 12 h
stall_timeout_s = 900             # the kernel's watchdog: no progress for 15 min ends the session
# username = "me"                 # optional; normally read from the Kaggle client's credentials

[trainer]
data_name = "synthetic"
use_huggingface = false
model_size = "tiny"
batch_size = 8
seed = 0
extra_args = []
```

Credentials are never part of the configuration (``backends/kaggle_credentials.py`` reads the username from
where the official client keeps it). Nothing here writes to the terminal: warnings go to a ``warn`` callback.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from kaggle_runner.config_rules import (  # noqa: F401 - the rules' names, as kaggle_runner.config.<NAME>
    ACCELERATORS,
    BACKENDS,
    CPU_ACCELERATOR,
    DATASET_SLUG_LEN,
    DEFAULT_SESSION_BUDGET_S,
    DEFAULT_STALL_TIMEOUT_S,
    GPU_ACCELERATORS,
    GPU_SESSION_LIMIT_S,
    KERNEL_SLUG_LEN,
    RETIRED_ACCELERATORS,
    TPU_ACCELERATORS,
    Warn,
    bad_value,
    check_choice,
    check_consistency,
    ignore_warning,
    slugify_title,
    validated_top,
    validated_trainer,
)
from kaggle_runner.errors import UsageError
from kr_contract.atomic import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE = "kr.toml"
PYPROJECT_FILE = "pyproject.toml"


@dataclass(frozen=True)
class TrainerArgs:
    """The trainer's arguments (docs/architecture.md §2) that stay the same across a chain's sessions."""

    data_name: str = "synthetic"
    use_huggingface: bool = False
    hf_repo: str = "linxy/LaTeX_OCR"
    model_size: str = "tiny"
    batch_size: int = 8
    seed: int = 0
    synthetic_train: int = 256
    synthetic_val: int = 32
    synthetic_test: int = 32
    extra_args: tuple[str, ...] = ()

    def to_argv(self) -> list[str]:
        """The trainer command-line flags for these arguments (out_dir, checkpoint and epochs come later)."""
        argv = ["--data_name", self.data_name]
        if self.use_huggingface:
            argv += ["--use_huggingface", "--hf_repo", self.hf_repo]
        else:
            argv += ["--no_huggingface"]
        argv += ["--model_size", self.model_size, "--batch_size", str(self.batch_size), "--seed", str(self.seed)]
        if self.data_name == "synthetic":
            argv += [
                "--synthetic_train", str(self.synthetic_train),
                "--synthetic_val", str(self.synthetic_val),
                "--synthetic_test", str(self.synthetic_test),
            ]  # fmt: skip
        return argv + list(self.extra_args)


@dataclass(frozen=True)
class KrConfig:
    """A validated configuration. Build it with ``load_config``, ``default_config`` or ``config_from_mapping``."""

    kernel_slug: str = "kr-latex-ocr"
    kernel_title: str = "kr latex ocr"
    dataset_slug: str = "kr-latex-ocr-checkpoints"
    backend: str = "local"
    accelerator: str = "NvidiaTeslaT4"
    internet: bool = True
    private: bool = True
    epochs_per_session: int = 1
    session_budget_s: int = DEFAULT_SESSION_BUDGET_S
    stall_timeout_s: int = DEFAULT_STALL_TIMEOUT_S
    username: str | None = None
    trainer: TrainerArgs = field(default_factory=TrainerArgs)
    # Where it was read from (None: defaults). Not a setting: never written back.
    source: Path | None = field(default=None, compare=False)

    @property
    def effective_accelerator(self) -> str:
        """The machine shape Kaggle will really run: retired names map to their replacement."""
        return RETIRED_ACCELERATORS.get(self.accelerator, self.accelerator)

    @property
    def uses_gpu(self) -> bool:
        return self.effective_accelerator in GPU_ACCELERATORS

    @property
    def uses_tpu(self) -> bool:
        return self.effective_accelerator in TPU_ACCELERATORS

    def to_mapping(self) -> dict[str, Any]:
        """The TOML form: what ``write_config`` writes, ``config_from_mapping`` reads back, and a chain keeps
        as the snapshot it renders every session from."""
        top = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("trainer", "source")}
        if top["username"] is None:
            del top["username"]
        trainer = dataclasses.asdict(self.trainer)
        trainer["extra_args"] = list(self.trainer.extra_args)
        return {**top, "trainer": trainer}


TOP_KEYS = tuple(f.name for f in dataclasses.fields(KrConfig) if f.name not in ("trainer", "source"))
TRAINER_KEYS = tuple(f.name for f in dataclasses.fields(TrainerArgs))
# Defaults that differ by backend: the local machine has no GPU and no Hugging Face access.
_KAGGLE_TRAINER_DEFAULTS = {"data_name": "full", "use_huggingface": True, "model_size": "base", "batch_size": 16}


def default_config(backend: str = "local") -> KrConfig:
    """The configuration ``kr init --yes`` writes for ``backend`` when no value is given."""
    check_choice("backend", backend, BACKENDS)
    if backend == "kaggle":
        return KrConfig(backend="kaggle", trainer=TrainerArgs(**_KAGGLE_TRAINER_DEFAULTS))  # type: ignore[arg-type]
    return KrConfig()


# ---------------------------------------------------------------------------------------------- loading


def find_config(project_dir: Path | None = None) -> Path | None:
    """``kr.toml`` in ``project_dir`` (default: the current directory), else a pyproject.toml with [tool.kr]."""
    directory = Path(project_dir) if project_dir is not None else Path.cwd()
    candidate = directory / CONFIG_FILE
    if candidate.is_file():
        return candidate
    pyproject = directory / PYPROJECT_FILE
    if pyproject.is_file() and "kr" in _parse_toml(pyproject).get("tool", {}):
        return pyproject
    return None


def load_config(path: Path | None = None, *, project_dir: Path | None = None, warn: Warn | None = None) -> KrConfig:
    """Read and validate the configuration.

    ``path`` (``--config``) names the file; otherwise it is found in ``project_dir``. With no file at all the
    defaults apply. Warnings (a retired accelerator, ...) go to ``warn``; without one they are dropped.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist", "pass an existing file to --config, or run `kr init`")
    else:
        path = find_config(project_dir)
        if path is None:
            return default_config()
    config = config_from_mapping(read_mapping(path), where=str(path), warn=warn)
    return dataclasses.replace(config, source=path)


def read_mapping(path: Path) -> dict[str, Any]:
    """The settings of a kr.toml (or of a pyproject.toml's [tool.kr]) as parsed, not yet validated."""
    data = _parse_toml(path)
    if path.name == PYPROJECT_FILE:
        data = data.get("tool", {}).get("kr")
        if not isinstance(data, dict):
            raise UsageError(f"{path} has no [tool.kr] table", "add one, or put the settings in kr.toml (`kr init`)")
    return data


def _parse_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", "check the file's permissions and encoding (UTF-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: malformed TOML: {exc}", 'fix that line (TOML syntax: key = "value")') from None


def config_from_mapping(data: Mapping[str, Any], *, where: str = "config", warn: Warn | None = None) -> KrConfig:
    """Validate a parsed TOML mapping into a ``KrConfig``. Unknown keys are errors (they are usually typos)."""
    data = dict(data)
    trainer_data = data.pop("trainer", {})
    if not isinstance(trainer_data, Mapping):
        raise UsageError(f"{where}: trainer = {trainer_data!r} must be a table", "write it as a [trainer] section")
    _reject_unknown(data, TOP_KEYS + ("trainer",), where, prefix="")
    _reject_unknown(trainer_data, TRAINER_KEYS, where, prefix="trainer.")
    backend = data.get("backend", "local")
    check_choice("backend", backend, BACKENDS, where)
    base = default_config(backend)
    top = {key: validated_top(key, data[key], where) for key in TOP_KEYS if key in data}
    _derive_names(top)
    trainer_values = {
        key: validated_trainer(key, trainer_data[key], where) for key in TRAINER_KEYS if key in trainer_data
    }
    trainer = dataclasses.replace(base.trainer, **trainer_values)
    config = dataclasses.replace(base, **top, trainer=trainer)
    check_consistency(config, where, warn or ignore_warning)
    return config


def _derive_names(top: dict[str, Any]) -> None:
    """A kernel slug given alone also names the title and the checkpoint dataset, so that they match."""
    slug = top.get("kernel_slug")
    if slug is None:
        return
    top.setdefault("kernel_title", slug.replace("-", " "))
    top.setdefault("dataset_slug", slug[: DATASET_SLUG_LEN[1] - len("-checkpoints")].rstrip("-") + "-checkpoints")


def _reject_unknown(data: Mapping[str, Any], allowed: tuple[str, ...], where: str, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"allowed keys: {', '.join(prefix + k for k in allowed)}"
            raise UsageError(f"{where}: unknown key {prefix}{key}", hint)


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys (``trainer.x`` for the trainer table) whose values differ between two ``to_mapping()``s."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    return sorted(key for key in flat_old.keys() | flat_new.keys() if flat_old.get(key) != flat_new.get(key))


def _flatten(mapping: Mapping[str, Any]) -> dict[str, Any]:
    flat = {key: value for key, value in mapping.items() if key != "trainer"}
    flat.update({f"trainer.{key}": value for key, value in (mapping.get("trainer") or {}).items()})
    return flat


# ---------------------------------------------------------------------------------------------- writing


def write_config(config: KrConfig, path: Path) -> Path:
    """Write ``config`` as TOML to ``path`` atomically (a crash leaves the old file whole)."""
    path = Path(path)
    header = "# kr configuration: see `kr init --help`. Credentials never go here.\n"
    atomic_write_text(path, header + tomli_w.dumps(config.to_mapping()))
    return path


# ---------------------------------------------------------------------------------------------- kr init

_INIT_KEYS = TOP_KEYS + tuple(f"trainer.{key}" for key in TRAINER_KEYS)


def init_keys() -> tuple[str, ...]:
    """Every key ``kr init`` sets, in the order it asks (``trainer.`` keys for the [trainer] table)."""
    return _INIT_KEYS


def parse_value(key: str, raw: object) -> Any:
    """Turn a command-line or prompt string into the TOML type of ``key`` (values that are already typed pass)."""
    if not isinstance(raw, str):
        return raw
    kind = _key_type(key)
    text = raw.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "y", "on", "1"):
            return True
        if lowered in ("false", "no", "n", "off", "0"):
            return False
        raise bad_value(key, raw, "true or false", "value")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise bad_value(key, raw, "a whole number", "value") from None
    if kind is tuple:
        return text.split() if text else []
    return text


def _key_type(key: str) -> type:
    if key.startswith("trainer."):
        default = getattr(TrainerArgs(), key.removeprefix("trainer."))
    else:
        default = getattr(KrConfig(), key)
    return str if default is None else type(default)


def display_value(value: object) -> str:
    """How a value is shown as a prompt's default."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return " ".join(value)
    return "" if value is None else str(value)


def parse_init_values(values: Mapping[str, object]) -> dict[str, Any]:
    """``kr init``'s given settings (keys of ``init_keys()``), typed; an unknown key is an error."""
    for key in values:
        if key not in _INIT_KEYS:
            close = difflib.get_close_matches(key, _INIT_KEYS, n=1)
            raise UsageError(f"unknown setting {key}", f"did you mean {close[0]}?" if close else None)
    return {key: parse_value(key, raw) for key, raw in values.items() if raw is not None}


def shown_default(parsed: Mapping[str, Any], key: str) -> str:
    """The default of ``key`` given the settings answered so far (backend and kernel_slug come first)."""
    config = config_from_mapping(nest_settings(parsed), where="answers")
    value = getattr(config.trainer, key.removeprefix("trainer.")) if key.startswith("trainer.") else getattr(config, key)
    return display_value(value)


def nest_settings(flat: Mapping[str, object]) -> dict[str, Any]:
    """``{"trainer.seed": 1, "backend": ...}`` -> the TOML mapping ``config_from_mapping`` reads."""
    nested: dict[str, Any] = {"trainer": {}}
    for key, value in flat.items():
        if key.startswith("trainer."):
            nested["trainer"][key.removeprefix("trainer.")] = list(value) if isinstance(value, tuple) else value
        else:
            nested[key] = value
    return nested


def init_project(
    directory: Path, values: Mapping[str, object] | None = None, *, force: bool = False, warn: Warn | None = None
) -> tuple[Path, KrConfig]:
    """``kr init``: write ``directory/kr.toml`` from ``values`` (keys of ``init_keys()``; strings are parsed);
    a missing key takes its default. The file is validated before it is written; an existing kr.toml is kept
    unless ``force``. Asking for the values is the CLI's part (``kaggle_runner.cli.init``)."""
    target = init_target(directory, force=force)
    config = config_from_mapping(nest_settings(parse_init_values(values or {})), where=CONFIG_FILE, warn=warn)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_config(config, target)
    return target, dataclasses.replace(config, source=target)


def init_target(directory: Path, *, force: bool) -> Path:
    """Where ``kr init`` writes; an existing kr.toml is an error unless ``force``."""
    target = Path(directory) / CONFIG_FILE
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", "edit it, or pass --force to overwrite it")
    return target
