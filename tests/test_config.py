"""kr.toml / [tool.kr]: loading, validation errors, writing, kr init, and the username from credentials."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kaggle_runner.backends.kaggle_credentials import resolve_username
from kaggle_runner.cli.init import ask_missing
from kaggle_runner.config import (
    DEFAULT_SESSION_BUDGET_S,
    KrConfig,
    TrainerArgs,
    default_config,
    find_config,
    init_project,
    load_config,
    write_config,
)
from kaggle_runner.errors import UsageError

SECRET = "0123456789abcdef-secret-key"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project directory (tmp_path itself also holds the isolated HOME)."""
    path = tmp_path / "project"
    path.mkdir()
    return path


def write_toml(directory: Path, text: str, name: str = "kr.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_with_warnings(path: Path) -> tuple[KrConfig, list[str]]:
    warnings: list[str] = []
    return load_config(path, warn=warnings.append), warnings


def test_no_file_gives_the_local_defaults(project: Path) -> None:
    config = load_config(project_dir=project)
    assert config == default_config()
    assert config.backend == "local" and config.accelerator == "NvidiaTeslaT4" and config.private is True
    assert config.session_budget_s == DEFAULT_SESSION_BUDGET_S == 41400
    assert config.source is None


def test_kr_toml_is_read_and_validated(project: Path) -> None:
    path = write_toml(
        project,
        'kernel_slug = "my-ocr"\nbackend = "kaggle"\nepochs_per_session = 3\ninternet = false\n'
        '[trainer]\ndata_name = "human_handwrite"\nbatch_size = 4\nextra_args = ["--lr", "1e-4"]\n',
    )
    config, warnings = load_with_warnings(path)
    assert config.source == path
    assert (config.kernel_slug, config.kernel_title, config.dataset_slug) == (
        "my-ocr",
        "my ocr",
        "my-ocr-checkpoints",
    )
    assert config.backend == "kaggle" and config.epochs_per_session == 3 and config.internet is False
    # The kaggle backend's trainer defaults, with the file's values on top.
    assert config.trainer.model_size == "base" and config.trainer.use_huggingface is True
    assert config.trainer.batch_size == 4 and config.trainer.extra_args == ("--lr", "1e-4")
    assert warnings == [
        "trainer.use_huggingface = true but internet = false: the kernel cannot download the data set"
    ]


def test_pyproject_tool_kr_is_found(project: Path) -> None:
    write_toml(
        project, '[project]\nname = "x"\n[tool.kr]\nkernel_slug = "from-pyproject"\n', "pyproject.toml"
    )
    assert find_config(project) == project / "pyproject.toml"
    assert load_config(project_dir=project).kernel_slug == "from-pyproject"


def test_kr_toml_wins_over_pyproject(project: Path) -> None:
    write_toml(project, '[tool.kr]\nkernel_slug = "from-pyproject"\n', "pyproject.toml")
    write_toml(project, 'kernel_slug = "from-kr-toml"\n')
    assert load_config(project_dir=project).kernel_slug == "from-kr-toml"


def test_pyproject_without_tool_kr_is_not_a_config(project: Path) -> None:
    write_toml(project, '[project]\nname = "x"\n', "pyproject.toml")
    assert find_config(project) is None
    with pytest.raises(UsageError, match=r"no \[tool.kr\] table"):
        load_config(project / "pyproject.toml")


def test_missing_config_file_named_by_flag(project: Path) -> None:
    with pytest.raises(UsageError, match="does not exist") as info:
        load_config(project / "nope.toml")
    assert info.value.exit_code == 2


def test_malformed_toml_names_the_line(project: Path) -> None:
    path = write_toml(project, 'kernel_slug = "ok-slug"\nbackend = local\n')
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert "malformed TOML" in info.value.message and "line 2" in info.value.message
    assert str(path) in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ('accelerator = "NvidiaGTX1080"', "accelerator", "NvidiaTeslaT4"),
        ('kernel_slug = "abc"', "kernel_slug", "5-50 characters"),
        ('kernel_slug = "My_Kernel"', "kernel_slug", "lower-case letters"),
        ('kernel_slug = "double--hyphen"', "kernel_slug", "single hyphens"),
        ('dataset_slug = "ckpts"', "dataset_slug", "6-50 characters"),
        (f'dataset_slug = "{"a" * 51}"', "dataset_slug", "6-50 characters"),
        ('kernel_title = "abc"', "kernel_title", "5-50 characters"),
        ('backend = "colab"', "backend", "local, kaggle"),
        ('internet = "yes"', "internet", "true or false"),
        ("epochs_per_session = 0", "epochs_per_session", "from 1"),
        ("session_budget_s = 50000", "session_budget_s", "to 43200"),
        ('username = "bad name"', "username", "Kaggle username"),
        ('[trainer]\ndata_name = "imagenet"', "trainer.data_name", "synthetic"),
        ('[trainer]\nmodel_size = "huge"', "trainer.model_size", "tiny, small, base"),
        ("[trainer]\nbatch_size = true", "trainer.batch_size", "whole number"),
        ('[trainer]\nextra_args = "--lr 1"', "trainer.extra_args", "list of strings"),
        ('[trainer]\nextra_args = ["--out_dir", "/x"]', "trainer.extra_args", "--out_dir: kr sets"),
        ('[trainer]\nextra_args = ["--batch_size=4"]', "trainer.extra_args", "--batch_size: kr sets"),
        ('accelerator = "TpuV5E8"\nsession_budget_s = 40000', "session_budget_s", "on a TPU"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(
    project: Path, text: str, key: str, allowed: str
) -> None:
    path = write_toml(project, text + "\n")
    with pytest.raises(UsageError) as info:
        load_config(path, warn=lambda message: None)
    message = info.value.message
    assert f"{key} = " in message and allowed in message
    assert info.value.exit_code == 2


def test_synthetic_data_cannot_come_from_hugging_face(project: Path) -> None:
    path = write_toml(project, '[trainer]\ndata_name = "synthetic"\nuse_huggingface = true\n')
    with pytest.raises(UsageError, match="use_huggingface = true with trainer.data_name = 'synthetic'"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [('acelerator = "x"', "accelerator"), ("[trainer]\nbatchsize = 2", "trainer.batch_size")],
)
def test_unknown_key_is_an_error_with_a_suggestion(project: Path, text: str, suggestion: str) -> None:
    path = write_toml(project, text + "\n")
    with pytest.raises(UsageError, match="unknown key") as info:
        load_config(path)
    assert info.value.hint == f"did you mean {suggestion}?"


def test_retired_accelerator_warns_and_maps(project: Path) -> None:
    config, warnings = load_with_warnings(write_toml(project, 'accelerator = "NvidiaTeslaP100"\n'))
    assert config.accelerator == "NvidiaTeslaP100" and config.effective_accelerator == "NvidiaTeslaT4"
    assert config.uses_gpu
    assert len(warnings) == 1 and "retired" in warnings[0] and "'NvidiaTeslaT4'" in warnings[0]


def test_retired_tpu_maps_to_cpu(project: Path) -> None:
    config, warnings = load_with_warnings(write_toml(project, 'accelerator = "TpuV232"\n'))
    assert config.effective_accelerator == "None" and not config.uses_gpu and not config.uses_tpu
    assert "'None'" in warnings[0]


def test_title_that_resolves_to_another_slug_warns(project: Path) -> None:
    _, warnings = load_with_warnings(
        write_toml(project, 'kernel_slug = "my-ocr"\nkernel_title = "Other Title"\n')
    )
    assert any("resolves to the slug 'other-title'" in w for w in warnings)
    _, warnings = load_with_warnings(write_toml(project, 'kernel_slug = "my-ocr"\nkernel_title = "My OCR"\n'))
    assert warnings == []


def test_write_then_load_round_trips(project: Path) -> None:
    config = KrConfig(
        kernel_slug="round-trip",
        kernel_title="Round Trip",
        dataset_slug="round-trip-data",
        backend="kaggle",
        accelerator="NvidiaL4",
        internet=False,
        private=False,
        epochs_per_session=7,
        session_budget_s=3600,
        username="someone",
        trainer=TrainerArgs(
            data_name="full", model_size="small", batch_size=32, seed=5, extra_args=("--lr", "3e-4")
        ),
    )
    path = write_config(config, project / "kr.toml")
    assert load_config(path) == config


def test_write_config_replaces_atomically(project: Path) -> None:
    path = write_toml(project, "old = 1\n")
    write_config(default_config(), path)
    assert load_config(path) == default_config()
    assert [p.name for p in project.iterdir()] == ["kr.toml"]  # no temp file left behind


def test_init_non_interactive_writes_a_valid_file(project: Path) -> None:
    values = {"kernel_slug": "ocr-run", "backend": "kaggle", "epochs_per_session": "2", "internet": "false",
              "trainer.batch_size": "12", "trainer.extra_args": "--lr 2e-4"}  # fmt: skip
    path, config = init_project(project, values, warn=lambda message: None)
    assert path == project / "kr.toml"
    assert load_config(path, warn=lambda message: None) == config
    assert config.epochs_per_session == 2 and config.internet is False and config.trainer.batch_size == 12
    assert config.trainer.extra_args == ("--lr", "2e-4") and config.dataset_slug == "ocr-run-checkpoints"


def test_init_keeps_an_existing_file_unless_forced(project: Path) -> None:
    path = write_toml(project, 'kernel_slug = "keep-me"\n')
    with pytest.raises(UsageError, match="already exists"):
        init_project(project, {})
    assert load_config(path).kernel_slug == "keep-me"
    init_project(project, {"kernel_slug": "new-one"}, force=True)
    assert load_config(path).kernel_slug == "new-one"


def test_init_rejects_bad_values_and_writes_nothing(project: Path) -> None:
    with pytest.raises(UsageError, match="accelerator = 'K80'"):
        init_project(project, {"accelerator": "K80"})
    with pytest.raises(UsageError, match="epochs_per_session = 'two'"):
        init_project(project, {"epochs_per_session": "two"})
    with pytest.raises(UsageError, match="unknown setting"):
        init_project(project, {"kernel-slug": "abcde"})
    assert list(project.iterdir()) == []


def test_init_interactive_asks_missing_keys_with_defaults_that_follow_answers(project: Path) -> None:
    asked: dict[str, str] = {}
    answers = {"backend": "kaggle", "kernel_slug": "asked-slug", "trainer.seed": "9"}

    def prompt(key: str, default: str) -> str:
        asked[key] = default
        return answers.get(key, "")

    _, config = init_project(project, ask_missing({"epochs_per_session": 4}, prompt))
    assert "epochs_per_session" not in asked  # given on the command line
    assert asked["kernel_title"] == "asked slug"  # follows the slug answered before it
    assert asked["trainer.model_size"] == "base"  # kaggle backend default, answered before it
    assert (config.kernel_slug, config.trainer.seed, config.epochs_per_session) == ("asked-slug", 9, 4)


def test_username_from_config_env_and_kaggle_json(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_username(KrConfig(username="configured")) == "configured"
    monkeypatch.setenv("KAGGLE_USERNAME", "from-env")
    assert resolve_username(default_config()) == "from-env"
    monkeypatch.delenv("KAGGLE_USERNAME")
    kaggle_json = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    kaggle_json.write_text(json.dumps({"username": "from-json", "key": SECRET}))
    assert resolve_username(default_config()) == "from-json"


def test_username_needs_some_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="no Kaggle credentials found") as info:
        resolve_username(default_config())
    assert "--backend local" in (info.value.hint or "")
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    with pytest.raises(UsageError, match="access token") as info:
        resolve_username(default_config())
    assert SECRET not in str(info.value)


def test_username_lookup_never_prints_or_keeps_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    kaggle_json = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    kaggle_json.write_text(json.dumps({"username": "someone", "key": SECRET}))
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    config = load_config(project_dir=project)
    assert resolve_username(config) == "someone"
    path, _ = init_project(project, {"backend": "kaggle"}, warn=lambda message: None)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in path.read_text() and SECRET not in repr(config)
