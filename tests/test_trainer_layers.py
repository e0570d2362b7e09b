"""The trainer's layer rule: it runs inside the kernel on kr_contract alone, never on kaggle_runner or kr_kernel,
and it defines none of the contract's names itself."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import kr_contract.heartbeat
import kr_contract.metric_lines
import kr_contract.names
import kr_contract.runjson
import kr_contract.tarball
from tests.trainer_support import REPO, tiny_args, trainer_env

TRAINER = REPO / "trainer"

# Imports every trainer module, then trains one step through `python -m trainer`'s entry point (lazy imports
# on the training path count too), and reports the kr modules that got imported.
PROBE = """
import json, pkgutil, importlib, sys
import trainer
for info in pkgutil.walk_packages(trainer.__path__, "trainer."):
    if info.name != "trainer.__main__":
        importlib.import_module(info.name)
from trainer.__main__ import main
code = main(json.loads(sys.argv[1]))
foreign = sorted(m for m in sys.modules if m.split(".")[0] in ("kaggle_runner", "kr_kernel"))
print("PROBE " + json.dumps({"code": code, "foreign": foreign, "contract": "kr_contract" in sys.modules}))
"""


def test_the_trainer_imports_nothing_of_kaggle_runner_in_a_clean_process(tmp_path: Path,
                                                                          shared_cache_dir: Path) -> None:
    args = tiny_args(tmp_path / "out", "--max_steps", "1", cache_dir=shared_cache_dir)
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], cwd=REPO, env=trainer_env(),
                          capture_output=True, text=True, timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, done.stderr[-3000:]
    probe = json.loads(lines[-1].removeprefix("PROBE "))
    assert probe == {"code": 0, "foreign": [], "contract": True}


def _contract_names() -> set[str]:
    constants = {name for name in dir(kr_contract.names) if name.isupper()}
    constants |= {"LOG_FORMAT", "LOG_DATE_FORMAT", "METRIC_KINDS", "VAL_METRICS", "HEARTBEAT_FILE",
                  "RESULT_NAME", "LOG_NAME", "DEADLINE_ENV", "GZIP_LEVEL"}
    return constants


CONTRACT_FUNCTIONS = {
    name for module in (kr_contract.tarball, kr_contract.metric_lines, kr_contract.runjson, kr_contract.heartbeat)
    for name in dir(module) if not name.startswith("_") and callable(getattr(module, name))
} | {"atomic_write_bytes", "atomic_write_text", "atomic_write_json", "read_json", "sha256_file"}


def _literal(node: ast.expr) -> bool:
    """A string or number, or a tuple/list of them: a definition, not an alias of the contract's."""
    if isinstance(node, ast.Constant):
        return True
    return isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts)


def test_no_trainer_module_defines_the_contracts_names() -> None:
    constants = _contract_names()
    found = []
    for path in sorted(TRAINER.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and _literal(node.value):
                found += [f"{path.name}: {t.id}" for t in node.targets if isinstance(t, ast.Name) and t.id in constants]
            if isinstance(node, ast.FunctionDef) and node.name in CONTRACT_FUNCTIONS - {"extract_tarball", "read_manifest",
                                                                                        "write_manifest"}:
                found.append(f"{path.name}: def {node.name}")
    assert not found, f"defined in the trainer, but the contract's: {found}"


def test_the_models_sizes_are_the_contracts() -> None:
    from trainer.model import MODEL_SIZES as MODEL_TABLE

    assert tuple(MODEL_TABLE) == kr_contract.names.MODEL_SIZES
