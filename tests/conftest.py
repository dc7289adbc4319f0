"""Shared fixtures: a fixed torch RNG state for every test (reproducible results and CI), and
small time blocks on request. Hypothesis profiles, picked by HYPOTHESIS_PROFILE."""

import os

import pytest
import torch
from hypothesis import settings

from torch_lstm_ext import schedule


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 32 rows instead of schedule.MIN_BLOCK_ROWS, so that sequences short enough for
    gradcheck and float64 comparisons still run checkpointing in several blocks (the block
    boundaries are what those tests are about)."""
    monkeypatch.setattr(schedule, "MIN_BLOCK_ROWS", 32)
    return 32


# Hypothesis profiles, picked by the HYPOTHESIS_PROFILE environment variable (default "ci"). Tests
# that pass their own @settings keep them. No example database in either: a failure is
# reproduced from its seed (or from the falsifying example printed), not from local state.
# - "ci" (make test): the same examples every run, sized to keep tests/test_fuzz.py under a
#   minute on a 2-core CPU.
# - "fuzz" (make fuzz): FUZZ_EXAMPLES examples drawn from the seed that make fuzz passes as
#   --hypothesis-seed; the terminal summary says how to re-run it.
settings.register_profile("ci", derandomize=True, max_examples=500, deadline=None, database=None)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")), deadline=None, database=None,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter, config):
    if settings.get_current_profile_name() != "fuzz":
        return
    seed = config.getoption("--hypothesis-seed")
    examples = settings.default.max_examples
    if seed is None:
        terminalreporter.write_line(f"fuzz: {examples} examples per test from an unrecorded seed "
                                    "(make fuzz fixes and prints one)")
    else:
        terminalreporter.write_line(f"fuzz: {examples} examples per test, seed {seed}; re-run with: "
                                    f"make fuzz FUZZ_SEED={seed} FUZZ_EXAMPLES={examples}")
