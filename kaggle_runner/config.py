"""kr's configuration: ``kr.toml`` in the project directory, or ``[tool.kr]`` in its ``pyproject.toml``.

The file is flat: top-level keys for the Kaggle side and the session, one ``[trainer]`` table for the trainer's
arguments. Every value is validated on load; an error names the key, the bad value and what is allowed.

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
# username = "me"                 # optional; normally read from the Kaggle client's credentials

[trainer]
data_name = "synthetic"
use_huggingface = false
model_size = "tiny"
batch_size = 8
seed = 0
extra_args = []
```

Credentials are never part of the configuration: the username, when not given, is read from the place the
official client reads it, and the secret next to it is neither kept nor printed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from kaggle_runner.errors import UsageError
from kaggle_runner.fsutil import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE = "kr.toml"
PYPROJECT_FILE = "pyproject.toml"

BACKENDS = ("local", "kaggle")
DATA_NAMES = ("small", "full", "synthetic_handwrite", "human_handwrite", "human_handwrite_print", "synthetic")
MODEL_SIZES = ("tiny", "small", "base")

# Kaggle's machine shapes (kaggle-cli docs/kernels.md, Feb 2026). "None" runs the kernel on CPU.
CPU_ACCELERATOR = "None"
GPU_ACCELERATORS = (
    "NvidiaTeslaT4",
    "NvidiaTeslaT4Highmem",
    "NvidiaL4",
    "NvidiaL4X1",
    "NvidiaTeslaA100",
    "NvidiaH100",
    "NvidiaRtxPro6000",
)
TPU_ACCELERATORS = ("TpuV5E8", "TpuV6E8")
ACCELERATORS = (*GPU_ACCELERATORS, *TPU_ACCELERATORS, CPU_ACCELERATOR)
# Retired shapes still go through a push (the client only warns); Kaggle runs them on these instead.
RETIRED_ACCELERATORS = {
    "NvidiaTeslaP100": "NvidiaTeslaT4",
    "TpuV38": "TpuV5E8",
    "Tpu1VmV38": "TpuV5E8",
    "TpuV232": CPU_ACCELERATOR,
    "TpuV2256": CPU_ACCELERATOR,
}

HOUR_S = 3600
GPU_SESSION_LIMIT_S = 12 * HOUR_S
TPU_SESSION_LIMIT_S = 9 * HOUR_S
# Half an hour under Kaggle's 12 h limit: room for start-up, packing and Kaggle saving the outputs.
DEFAULT_SESSION_BUDGET_S = GPU_SESSION_LIMIT_S - HOUR_S // 2

# Kaggle's own limits (kaggle client 2.2.5 validation and the site's slug rules).
KERNEL_SLUG_LEN = (5, 50)
DATASET_SLUG_LEN = (6, 50)
KERNEL_TITLE_LEN = (5, 50)
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$")
_HF_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Trainer flags that kr sets itself: per session (out_dir, checkpoint, max_epochs) or from their own keys.
RESERVED_TRAINER_FLAGS = frozenset(
    [
        "--out_dir",
        "--checkpoint",
        "--max_epochs",
        "--data_name",
        "--use_huggingface",
        "--no_huggingface",
        "--hf_repo",
        "--model_size",
        "--batch_size",
        "--seed",
        "--synthetic_train",
        "--synthetic_val",
        "--synthetic_test",
    ]
)

Warn = Callable[[str], None]


def _warn_to_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


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
        argv += [
            "--model_size",
            self.model_size,
            "--batch_size",
            str(self.batch_size),
            "--seed",
            str(self.seed),
        ]
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
        """The TOML form: what ``write_config`` writes and ``config_from_mapping`` reads back."""
        top = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("trainer", "source")
        }
        if top["username"] is None:
            del top["username"]
        trainer = dataclasses.asdict(self.trainer)
        trainer["extra_args"] = list(self.trainer.extra_args)
        return {**top, "trainer": trainer}


TOP_KEYS = tuple(f.name for f in dataclasses.fields(KrConfig) if f.name not in ("trainer", "source"))
TRAINER_KEYS = tuple(f.name for f in dataclasses.fields(TrainerArgs))
# Defaults that differ by backend: the local machine has no GPU and no Hugging Face access.
_KAGGLE_TRAINER_DEFAULTS = {
    "data_name": "full",
    "use_huggingface": True,
    "model_size": "base",
    "batch_size": 16,
}


def default_config(backend: str = "local") -> KrConfig:
    """The configuration ``kr init --yes`` writes for ``backend`` when no value is given."""
    _check_choice("backend", backend, BACKENDS)
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


def load_config(
    path: Path | None = None, *, project_dir: Path | None = None, warn: Warn | None = None
) -> KrConfig:
    """Read and validate the configuration.

    ``path`` (``--config``) names the file; otherwise it is found in ``project_dir``. With no file at all the
    defaults apply. Warnings (a retired accelerator, ...) go to ``warn``, by default stderr.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(
                f"config file {path} does not exist", "pass an existing file to --config, or run `kr init`"
            )
    else:
        path = find_config(project_dir)
        if path is None:
            return default_config()
    data = _parse_toml(path)
    if path.name == PYPROJECT_FILE:
        data = data.get("tool", {}).get("kr")
        if not isinstance(data, dict):
            raise UsageError(
                f"{path} has no [tool.kr] table", "add one, or put the settings in kr.toml (`kr init`)"
            )
    config = config_from_mapping(data, where=str(path), warn=warn)
    return dataclasses.replace(config, source=path)


def _parse_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read {path}: {exc}", "check the file's permissions and encoding (UTF-8)"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"{path}: malformed TOML: {exc}", 'fix that line (TOML syntax: key = "value")'
        ) from None


def config_from_mapping(
    data: Mapping[str, Any], *, where: str = "config", warn: Warn | None = None
) -> KrConfig:
    """Validate a parsed TOML mapping into a ``KrConfig``. Unknown keys are errors (they are usually typos)."""
    data = dict(data)
    trainer_data = data.pop("trainer", {})
    if not isinstance(trainer_data, Mapping):
        raise UsageError(
            f"{where}: trainer = {trainer_data!r} must be a table", "write it as a [trainer] section"
        )
    _reject_unknown(data, TOP_KEYS + ("trainer",), where, prefix="")
    _reject_unknown(trainer_data, TRAINER_KEYS, where, prefix="trainer.")
    backend = data.get("backend", "local")
    _check_choice("backend", backend, BACKENDS, where)
    base = default_config(backend)
    top = {key: _validated_top(key, data[key], where) for key in TOP_KEYS if key in data}
    _derive_names(top)
    trainer_values = {
        key: _validated_trainer(key, trainer_data[key], where) for key in TRAINER_KEYS if key in trainer_data
    }
    trainer = dataclasses.replace(base.trainer, **trainer_values)
    config = dataclasses.replace(base, **top, trainer=trainer)
    _check_consistency(config, where, warn or _warn_to_stderr)
    return config


def _derive_names(top: dict[str, Any]) -> None:
    """A kernel slug given alone also names the title and the checkpoint dataset, so that they match."""
    slug = top.get("kernel_slug")
    if slug is None:
        return
    top.setdefault("kernel_title", slug.replace("-", " "))
    top.setdefault(
        "dataset_slug", slug[: DATASET_SLUG_LEN[1] - len("-checkpoints")].rstrip("-") + "-checkpoints"
    )


def _reject_unknown(data: Mapping[str, Any], allowed: tuple[str, ...], where: str, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = (
                f"did you mean {prefix}{close[0]}?"
                if close
                else f"allowed keys: {', '.join(prefix + k for k in allowed)}"
            )
            raise UsageError(f"{where}: unknown key {prefix}{key}", hint)


# ---------------------------------------------------------------------------------------------- validation


def _bad(key: str, value: object, allowed: str, where: str = "config") -> UsageError:
    return UsageError(f"{where}: {key} = {value!r} is not allowed: {allowed}")


def _check_choice(key: str, value: object, choices: tuple[str, ...], where: str = "config") -> None:
    if value not in choices:
        raise _bad(key, value, f"one of {', '.join(choices)}", where)


def _check_bool(key: str, value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false", where)
    return value


def _check_int(key: str, value: object, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(key, value, f"a whole number from {low} to {high}", where)
    return value


def _check_slug(key: str, value: object, lengths: tuple[int, int], where: str) -> str:
    low, high = lengths
    allowed = f"{low}-{high} characters of lower-case letters, digits and single hyphens (as Kaggle requires)"
    if not isinstance(value, str) or not low <= len(value) <= high or not _SLUG_RE.match(value):
        raise _bad(key, value, allowed, where)
    return value


def slugify_title(title: str) -> str:
    """The slug Kaggle derives from a title (the official client uses python-slugify the same way)."""
    try:
        from slugify import slugify
    except ImportError:  # python-slugify comes with the kaggle client; this fallback matches it on ASCII
        return "-".join(re.findall(r"[a-z0-9]+", title.lower().replace("'", "")))
    return str(slugify(title))


def _validated_top(key: str, value: object, where: str) -> Any:
    if key == "kernel_slug":
        return _check_slug(key, value, KERNEL_SLUG_LEN, where)
    if key == "dataset_slug":
        return _check_slug(key, value, DATASET_SLUG_LEN, where)
    if key == "kernel_title":
        low, high = KERNEL_TITLE_LEN
        if not isinstance(value, str) or not low <= len(value.strip()) <= high:
            raise _bad(key, value, f"a title of {low}-{high} characters", where)
        return value
    if key == "backend":
        _check_choice(key, value, BACKENDS, where)
        return value
    if key == "accelerator":
        if value not in ACCELERATORS and value not in RETIRED_ACCELERATORS:
            raise _bad(key, value, f"one of {', '.join(ACCELERATORS)}", where)
        return value
    if key in ("internet", "private"):
        return _check_bool(key, value, where)
    if key == "epochs_per_session":
        return _check_int(key, value, 1, 100_000, where)
    if key == "session_budget_s":
        return _check_int(key, value, 1, GPU_SESSION_LIMIT_S, where)
    if key == "username":
        if not isinstance(value, str) or not _USERNAME_RE.match(value):
            raise _bad(key, value, "a Kaggle username (letters, digits, '-' or '_')", where)
        return value
    raise AssertionError(f"unhandled key {key}")  # TOP_KEYS and this function are kept in step


def _validated_trainer(key: str, value: object, where: str) -> Any:
    name = f"trainer.{key}"
    if key == "data_name":
        _check_choice(name, value, DATA_NAMES, where)
        return value
    if key == "model_size":
        _check_choice(name, value, MODEL_SIZES, where)
        return value
    if key == "use_huggingface":
        return _check_bool(name, value, where)
    if key == "hf_repo":
        if not isinstance(value, str) or not _HF_REPO_RE.match(value):
            raise _bad(name, value, "a Hugging Face dataset id such as linxy/LaTeX_OCR", where)
        return value
    if key == "batch_size":
        return _check_int(name, value, 1, 4096, where)
    if key == "seed":
        return _check_int(name, value, 0, 2**31 - 1, where)
    if key in ("synthetic_train", "synthetic_val", "synthetic_test"):
        return _check_int(name, value, 1, 10_000_000, where)
    if key == "extra_args":
        if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
            raise _bad(name, value, 'a list of strings, e.g. ["--lr", "3e-4"]', where)
        for arg in value:
            if arg.split("=")[0] in RESERVED_TRAINER_FLAGS:
                raise _bad(
                    name, value, f"trainer flags other than {arg.split('=')[0]}: kr sets that one", where
                )
        return tuple(value)
    raise AssertionError(f"unhandled key {name}")


def _check_consistency(config: KrConfig, where: str, warn: Warn) -> None:
    """Rules that involve more than one key."""
    trainer = config.trainer
    if trainer.use_huggingface and trainer.data_name == "synthetic":
        raise UsageError(
            f"{where}: trainer.use_huggingface = true with trainer.data_name = 'synthetic': the synthetic set is "
            "generated, not downloaded",
            "set trainer.use_huggingface = false, or choose a Hugging Face config such as 'full'",
        )
    if config.uses_tpu and config.session_budget_s > TPU_SESSION_LIMIT_S:
        raise _bad(
            "session_budget_s",
            config.session_budget_s,
            f"at most {TPU_SESSION_LIMIT_S} on a TPU (9 h sessions)",
            where,
        )
    if config.accelerator in RETIRED_ACCELERATORS:
        warn(
            f"accelerator {config.accelerator!r} is retired: Kaggle runs it on {config.effective_accelerator!r}; "
            f"set accelerator = {config.effective_accelerator!r} to silence this"
        )
    if config.backend == "kaggle" and trainer.use_huggingface and not config.internet:
        warn("trainer.use_huggingface = true but internet = false: the kernel cannot download the data set")
    if slugify_title(config.kernel_title) != config.kernel_slug:
        warn(
            f"kernel_title {config.kernel_title!r} resolves to the slug {slugify_title(config.kernel_title)!r}, not "
            f"kernel_slug {config.kernel_slug!r}: Kaggle derives a new kernel's slug from its title"
        )


# ---------------------------------------------------------------------------------------------- writing


def write_config(config: KrConfig, path: Path) -> Path:
    """Write ``config`` as TOML to ``path`` atomically (a crash leaves the old file whole)."""
    path = Path(path)
    header = "# kr configuration: see `kr init --help`. Credentials never go here.\n"
    atomic_write_text(path, header + tomli_w.dumps(config.to_mapping()))
    return path


# ---------------------------------------------------------------------------------------------- credentials


def kaggle_config_dir() -> Path:
    """The folder the official client reads kaggle.json from (same rules as kaggle 2.2.5)."""
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    legacy = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(xdg) / "kaggle"
    return legacy


def _username_from_json(path: Path) -> str | None:
    """The ``username`` field of a credentials file; the secret beside it is not kept."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    username = data.get("username") if isinstance(data, dict) else None
    return username if isinstance(username, str) and username else None


def _has_access_token() -> bool:
    home_kaggle = Path.home() / ".kaggle"
    return bool(os.environ.get("KAGGLE_API_TOKEN")) or any(
        (home_kaggle / name).is_file() for name in ("access_token", "access_token.txt")
    )


def resolve_username(config: KrConfig) -> str:
    """The Kaggle account to use: ``username`` in the config, else what the official client would find
    (``KAGGLE_USERNAME``, kaggle.json, ~/.kaggle/credentials.json). Only the name is read: no secret is kept,
    returned or printed. An access token alone does not name its user offline, so it needs ``username``."""
    if config.username:
        return config.username
    from_env = os.environ.get("KAGGLE_USERNAME")
    if from_env:
        return from_env
    for path in (kaggle_config_dir() / "kaggle.json", Path.home() / ".kaggle" / "credentials.json"):
        username = _username_from_json(path)
        if username:
            return username
    if _has_access_token():
        raise UsageError(
            "found a Kaggle access token, but it does not say which user it belongs to",
            'set username = "<your Kaggle username>" in kr.toml, or export KAGGLE_USERNAME',
        )
    raise UsageError(
        "no Kaggle credentials found (KAGGLE_USERNAME, kaggle.json, access token)",
        f"create an API token at https://www.kaggle.com/settings and save it as {kaggle_config_dir() / 'kaggle.json'}, "
        "or use --backend local",
    )


# ---------------------------------------------------------------------------------------------- kr init

Prompt = Callable[[str, str], str]

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
        raise _bad(key, raw, "true or false", "value")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise _bad(key, raw, "a whole number", "value") from None
    if kind is tuple:
        return text.split() if text else []
    return text


def _key_type(key: str) -> type:
    if key.startswith("trainer."):
        default = getattr(TrainerArgs(), key.removeprefix("trainer."))
    else:
        default = getattr(KrConfig(), key)
    return str if default is None else type(default)


def _display(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return " ".join(value)
    return "" if value is None else str(value)


def init_project(
    directory: Path,
    values: Mapping[str, object] | None = None,
    *,
    interactive: bool = False,
    prompt: Prompt | None = None,
    force: bool = False,
    warn: Warn | None = None,
) -> tuple[Path, KrConfig]:
    """``kr init``: write ``directory/kr.toml`` from ``values`` (keys of ``init_keys()``; strings are parsed).

    Non-interactive (``--yes``), a missing key takes its default. Interactive, each missing key is asked with
    ``prompt(key, default_text)``. The file is validated before it is written; an existing kr.toml is kept
    unless ``force``.
    """
    directory = Path(directory)
    target = directory / CONFIG_FILE
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", "edit it, or pass --force to overwrite it")
    given = dict(values or {})
    for key in given:
        if key not in _INIT_KEYS:
            close = difflib.get_close_matches(key, _INIT_KEYS, n=1)
            raise UsageError(f"unknown setting {key}", f"did you mean {close[0]}?" if close else None)
    parsed = {key: parse_value(key, raw) for key, raw in given.items() if raw is not None}
    if interactive:
        ask = prompt or _stdin_prompt
        for key in _INIT_KEYS:
            if key not in parsed and key != "trainer.extra_args":
                # The defaults shown follow earlier answers (backend, kernel_slug come first).
                shown = _lookup(config_from_mapping(_nest(parsed), where="answers", warn=_ignore), key)
                answer = ask(key, _display(shown))
                if answer.strip():
                    parsed[key] = parse_value(key, answer)
    config = config_from_mapping(_nest(parsed), where=CONFIG_FILE, warn=warn)
    directory.mkdir(parents=True, exist_ok=True)
    write_config(config, target)
    return target, dataclasses.replace(config, source=target)


def _lookup(config: KrConfig, key: str) -> object:
    if key.startswith("trainer."):
        return getattr(config.trainer, key.removeprefix("trainer."))
    return getattr(config, key)


def _nest(flat: Mapping[str, object]) -> dict[str, Any]:
    nested: dict[str, Any] = {"trainer": {}}
    for key, value in flat.items():
        if key.startswith("trainer."):
            nested["trainer"][key.removeprefix("trainer.")] = (
                list(value) if isinstance(value, tuple) else value
            )
        else:
            nested[key] = value
    return nested


def _ignore(message: str) -> None:
    """Warnings about a half-answered configuration: the final one is checked (and warns) once."""


def _stdin_prompt(key: str, default: str) -> str:
    return input(f"{key} [{default}]: ")
