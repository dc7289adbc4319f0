# Every target sets up .venv from nothing when needed.
# On a machine without a GPU, TORCH_SPEC picks the CPU build of torch (its wheel lies on this
# project's machines' disk); a GPU machine keeps whatever torch it has or installs the default.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)
TRITON_SPEC ?= triton==3.6.0

.PHONY: venv demo test test-cpu test-interpreter fuzz bench profile lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test,scripts,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# The two suites side by side: the interpreter's is mostly one Python thread, so on 2 cores the
# pair takes about as long as the CPU suite alone (3 min 26 s instead of 5 min 20 s, measured on
# a fresh clone). --output-sync prints each suite's output in one piece when it ends.
test: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-cpu test-interpreter

test-cpu: $(STAMP)
	$(BIN)/python -m pytest -q

test-interpreter: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m interpreter

# The differential fuzz against nn.LSTM (tests/test_fuzz.py), long: FUZZ_EXAMPLES examples drawn
# from FUZZ_SEED (a fresh random seed unless given; printed before and after the run). The same
# FUZZ_SEED and FUZZ_EXAMPLES run the same examples, so `make fuzz FUZZ_SEED=... FUZZ_EXAMPLES=...`
# reproduces a failure. make test runs the same test derandomized (tests/conftest.py, profile "ci").
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	@seed=$(or $(FUZZ_SEED),$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')); \
	echo "make fuzz: FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$$seed"; \
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz.py \
		--hypothesis-seed=$$seed --hypothesis-show-statistics

bench: $(STAMP)
	$(BIN)/python scripts/bench.py --quick

profile: $(STAMP)
	$(BIN)/python scripts/profile_lstm.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
