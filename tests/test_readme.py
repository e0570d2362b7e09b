"""Checks that keep README.md true: its first commands, the kr commands it names, its configuration table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kaggle_runner import config
from kaggle_runner.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SETUP_COMMANDS = ["make demo", "make test"]
CONFIG_SECTION = "## Configuration reference"

# `kr <command>` in code, with the global --config/-c option allowed in between; not inside a quoted string
# ("kr latex ocr" is a title) or a longer name (kr.toml, kr-latex-ocr).
_KR_COMMAND = re.compile(r"(?<![\w.\-\"'])kr(?:[ \t]+(?:-c|--config)[ \t]+\S+)?[ \t]+([a-z][\w-]*)")
_FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
_TABLE_KEY = re.compile(r"^\|\s*`([a-z_.]+)`\s*\|")


def readme() -> str:
    return README.read_text(encoding="utf-8")


def code_texts(text: str) -> list[str]:
    """Fenced blocks and inline code spans: the places where a command is a command, not a word."""
    fenced = _FENCED.findall(text)
    outside = _FENCED.sub("", text)
    return fenced + _INLINE.findall(outside)


def named_commands(text: str) -> set[str]:
    return {match for code in code_texts(text) for match in _KR_COMMAND.findall(code)}


def registered_commands() -> set[str]:
    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def table_keys(text: str) -> list[str]:
    return [match.group(1) for line in text.splitlines() if (match := _TABLE_KEY.match(line))]


def test_starts_with_the_two_setup_commands() -> None:
    text = readme()
    title, _, rest = text.partition("\n")
    assert title.startswith("# "), "the README opens with its title"
    block = _FENCED.search(rest)
    assert block is not None and rest[: block.start()].strip() == "", (
        "the set-up block comes right after the title"
    )
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == SETUP_COMMANDS


def test_setup_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for command in SETUP_COMMANDS:
        target = command.split()[1]
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target}"


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    named = named_commands(readme())
    registered = registered_commands()
    assert named - registered == set(), "the README names kr commands that do not exist"
    assert registered - named == set(), "kr commands the README does not show"


@pytest.mark.parametrize("name", sorted(named_commands(readme())))
def test_named_command_has_help(name: str) -> None:
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output


def test_config_table_lists_exactly_the_real_keys() -> None:
    listed = table_keys(section(readme(), CONFIG_SECTION))
    assert len(listed) == len(set(listed)), "a key is listed twice"
    assert set(listed) == set(config.init_keys())


def test_config_table_defaults_match_the_code() -> None:
    """The first value in each row's default column is the local default (kr init --yes writes it)."""
    defaults = config.default_config("local").to_mapping()
    for line in section(readme(), CONFIG_SECTION).splitlines():
        match = _TABLE_KEY.match(line)
        if match is None or match.group(1) == "username":
            continue
        key = match.group(1)
        shown = line.split("|")[2].strip()
        value = defaults["trainer"][key[len("trainer.") :]] if key.startswith("trainer.") else defaults[key]
        assert shown.startswith(f"`{_toml(value)}`"), f"{key}: README says {shown}, code says {value!r}"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value)


def test_the_checks_see_what_they_should() -> None:
    """The extractors themselves: a word in prose is not a command, one in code is."""
    text = (
        "kr trains models.\n\n```bash\nkr --config a/kr.toml chain -n 2\n```\nsee `kr plot x` and kr.toml\n"
    )
    assert named_commands(text) == {"chain", "plot"}
    assert table_keys('| `backend` | `"local"` | x |\n| key | default |\n') == ["backend"]


def test_links_to_the_design_docs_resolve() -> None:
    text = readme()
    for target in ("docs/architecture.md", "kaggle_runner/README.md"):
        assert f"]({target})" in text and (ROOT / target).is_file()
