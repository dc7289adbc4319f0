"""scripts/demo.py (`make demo`) runs end to end, and its two loss curves match, in a few steps."""

import importlib.util
import sys
from pathlib import Path

import pytest

DEMO_PATH = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    """scripts/ is not a package, so load demo.py from its path (registered first, as dataclasses
    look their module up in sys.modules)."""
    spec = importlib.util.spec_from_file_location("lstm_ext_demo", DEMO_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_main_succeeds_and_plots(demo, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert demo.main(["--steps", "3", "--sample", "20", "--plot", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "max |diff|" in out and "median time per step" in out and "OK:" in out
    assert "sample from the replaced model" in out


def test_curves_match(demo):
    result = demo.run(demo.Config(steps=5), sample_length=20)
    assert len(result.reference.losses) == len(result.ours.losses) == 5
    # The first steps start from identical weights and have had no time to amplify rounding
    # differences, so they must agree far more closely than the demo's whole-run TOLERANCE: a few
    # float32 ulps of a loss near 4.
    assert result.max_diff <= 1e-5, (result.reference.losses, result.ours.losses)
    assert result.reference.losses[-1] < result.reference.losses[0]  # it does train
    assert result.sample.startswith(demo.PROMPT) and len(result.sample) == len(demo.PROMPT) + 20


def test_divergence_fails(demo, monkeypatch, capsys):
    """Curves further apart than the tolerance make main return 1, so `make demo` fails; so does NaN."""
    for bad in (1.0, float("nan")):
        run = demo.Run(losses=[2.0, 1.5], times=[0.01, 0.01])
        diverged = demo.Run(losses=[2.0, 1.5 + bad], times=[0.01, 0.01])
        monkeypatch.setattr(demo, "run", lambda cfg, r=run, d=diverged, **_: demo.Result(r, d, sample=""))
        assert demo.main(["--steps", "2", "--sample", "0"]) == 1
        assert "FAIL" in capsys.readouterr().err
