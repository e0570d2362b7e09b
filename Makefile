# Set-up and entry points. `make demo` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU machines this project is developed on carry these wheels on disk; see README.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.kr-installed
KR := $(VENV)/bin/kr

.PHONY: demo test lint bench-cpu clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH_SPEC)
	$(VENV)/bin/pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

# The main job: a 3-session chain on the local backend, synthetic data, tiny model. No account, no network.
# --new: every `make demo` trains a fresh chain (a plain rerun of kr chain only reports the finished one).
demo: $(STAMP)
	KR_HOME=$(CURDIR)/demo-home $(KR) chain --sessions 3 --backend local --config demo/kr.toml --new

# Two or more workers: most tests wait on subprocesses (a kernel, a trainer, torchrun), so the CPUs of even a
# 2-core machine are idle much of the time with one worker (543 tests: 9 min in CI with one).
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4

lint: $(STAMP)
	$(VENV)/bin/ruff check kaggle_runner trainer tests bench
	$(VENV)/bin/mypy kaggle_runner trainer

clean-venv:
	rm -rf $(VENV)
