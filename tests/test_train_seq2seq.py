"""scripts/train_seq2seq.py: the --quick run end to end (nn.LSTM's and our curves agree, the PNG
and checkpoints exist, a checkpoint reloads to its recorded accuracy), and its parts."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import TRAINING_CURVE_TOLERANCE, assert_close

import torch_lstm_ext

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
RUNS = ("nn_lstm", "ours", "ours_grad_clip")


@pytest.fixture(scope="module")
def s2s():
    """The script's helper modules (scripts/ is not a package: put it on sys.path, then take it off)."""
    sys.path.insert(0, str(SCRIPTS))
    names = ("seq2seq_data", "seq2seq_model", "seq2seq_train", "seq2seq_report", "train_seq2seq")
    try:
        yield {name.split("_")[-1]: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(SCRIPTS))
        for name in names:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `--quick` run in a subprocess with this interpreter (the venv's); (out dir, JSON, stdout)."""
    out = tmp_path_factory.mktemp("seq2seq")
    result = subprocess.run([sys.executable, str(SCRIPTS / "train_seq2seq.py"), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, json.loads((out / "curves.json").read_text()), result.stdout


def _max_diff(a, b):
    assert len(a) == len(b) > 0
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_quick_curves_agree_with_nn_lstm(quick):
    _, data, stdout = quick
    ref, ours = data["runs"]["nn_lstm"], data["runs"]["ours"]
    assert len(ref["train_loss"]) == data["config"]["steps"] == 100
    assert ref["eval_step"] == ours["eval_step"] and ref["eval_step"][-1] == 100
    # Recomputed from the curves, not read from the script's own summary.
    assert _max_diff(ref["train_loss"], ours["train_loss"]) <= TRAINING_CURVE_TOLERANCE
    assert _max_diff(ref["eval_loss"], ours["eval_loss"]) <= TRAINING_CURVE_TOLERANCE
    assert all(math.isfinite(x) for x in ref["train_loss"] + ours["train_loss"])
    assert ref["train_loss"][-1] < 0.5 * ref["train_loss"][0]  # it does train
    assert "OK:" in stdout and "| run | best exact match" in stdout


def test_quick_grad_clip_run_starts_alike_then_differs(quick):
    """The third run starts from the same weights (grad_clip changes only the backward, so the
    first loss is nn.LSTM's) and the clamp acts: its curve leaves ours by more than rounding."""
    _, data, _ = quick
    ref, ours, clipped = (data["runs"][name] for name in RUNS)
    assert_close(torch.tensor(clipped["train_loss"][0]), torch.tensor(ref["train_loss"][0]), torch.float32,
                 "first loss, grad_clip run vs nn.LSTM")
    assert _max_diff(ours["train_loss"], clipped["train_loss"]) > 100 * TRAINING_CURVE_TOLERANCE


def test_quick_writes_png_and_checkpoints(quick):
    out, data, _ = quick
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    for name in RUNS:
        assert (out / data["checkpoints"][name]).is_file()


@pytest.mark.parametrize("run", RUNS)
def test_checkpoint_reloads_to_its_accuracy(quick, s2s, run):
    """A fresh model (other seed) with the best checkpoint's weights scores what was recorded,
    while the same fresh model without them scores far below (so the load is what is tested)."""
    out, data, _ = quick
    train = s2s["train"]
    checkpoint = torch.load(out / f"best_{run}.pt", weights_only=True)
    cfg = train.Config(**checkpoint["config"])
    held_out = train.eval_batch(cfg)
    fresh = train.model_for(run, cfg, seed=cfg.seed + 1000)
    assert train.evaluate(fresh, held_out)[1] < 0.2

    model, loaded = train.load_checkpoint(out / f"best_{run}.pt")
    assert isinstance(model.decoder, torch_lstm_ext.LSTM) == (run != "nn_lstm")
    if run == "ours_grad_clip":
        assert model.decoder.variants.grad_clip == model.encoder.variants.grad_clip == cfg.grad_clip
    accuracy = train.evaluate(model, held_out)[1]
    # Counts of exact matches: the same computation on the same weights as in the run.
    assert round(accuracy * cfg.eval_size) == round(loaded["accuracy"] * cfg.eval_size)
    assert loaded["accuracy"] == data["runs"][run]["best_accuracy"] > 0.5
    assert loaded["step"] == data["runs"][run]["best_step"]


def _digits(tokens, data_mod, stop):
    """Source/target tokens -> digit string, up to the first token in `stop`."""
    out = []
    for token in tokens.tolist():
        if token in stop:
            break
        out.append(str(token - data_mod.DIGIT0))
    return "".join(out)


@pytest.mark.parametrize("task", ["reverse", "sort", "add"])
def test_generated_examples_are_correct(s2s, task):
    data = s2s["data"]
    batch = data.make_batch(task, 200, torch.Generator().manual_seed(5), 2, 4)
    for src, length, tgt in zip(batch.src, batch.src_len, batch.tgt, strict=True):
        assert (src[length:] == data.PAD).all() and (src[:length] != data.PAD).all()
        answer_len = int((tgt != data.PAD).sum()) - 1
        assert tgt[answer_len] == data.EOS and (tgt[:answer_len] >= data.DIGIT0).all()
        got = _digits(tgt, data, {data.EOS})
        if task == "add":
            plus = src.tolist().index(data.PLUS)
            a, b = _digits(src[:plus], data, set()), _digits(src[plus + 1 : length], data, set())
            assert 2 <= len(a) <= 4 and 2 <= len(b) <= 4
            assert int(got) == int(a) + int(b) and got == str(int(got))
        else:
            text = _digits(src[:length], data, set())
            assert 2 <= len(text) <= 4
            assert got == (text[::-1] if task == "reverse" else "".join(sorted(text)))


def test_exact_match_counts_up_to_eos(s2s):
    data = s2s["data"]
    d = data.DIGIT0
    tgt = torch.tensor([[d + 1, d + 2, data.EOS], [d + 3, data.EOS, data.PAD], [d + 3, data.EOS, data.PAD]])
    pred = torch.tensor([[d + 1, d + 2, data.EOS], [d + 3, data.EOS, d + 7], [d + 3, d + 3, data.EOS]])
    assert data.exact_match(pred, tgt).tolist() == [True, True, False]


def test_schedules(s2s):
    train = s2s["train"]
    cfg = train.Config(steps=101, warmup=10, lr=1.0, min_lr_ratio=0.1, tf_start=1.0, tf_end=0.5)
    assert train.lr_factor(0, cfg) == pytest.approx(0.1)
    assert train.lr_factor(9, cfg) == pytest.approx(1.0)  # warmup done
    assert train.lr_factor(10, cfg) == pytest.approx(1.0)  # cosine starts at its top
    assert train.lr_factor(100, cfg) == pytest.approx(0.1)  # and ends at min_lr_ratio
    assert train.lr_factor(55, cfg) == pytest.approx(0.55)  # halfway down the cosine
    assert train.teacher_ratio(0, cfg) == 1.0 and train.teacher_ratio(100, cfg) == pytest.approx(0.5)
    assert train.teacher_ratio(50, cfg) == pytest.approx(0.75)


def test_model_matches_nn_lstm_in_float64(s2s):
    """The model after replace_lstm computes nn.LSTM's logits and gradients, packed encoder and
    scheduled-sampling decoder included (float64, training mode with dropout between layers)."""
    data, model_mod = s2s["data"], s2s["model"]
    batch = data.make_batch("add", 6, torch.Generator().manual_seed(1), 1, 3)
    teacher = torch.rand(batch.tgt.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    results = []
    for run in ("nn_lstm", "ours"):
        model = model_mod.build(run, seed=3, embed_size=5, hidden_size=7, num_layers=2, dropout=0.3,
                                norm="layer", grad_clip=0.0).double()
        torch.manual_seed(4)  # the dropout masks
        logits = model(batch.src, batch.src_len, batch.tgt, teacher)
        logits.square().sum().backward()
        results.append((logits, {name: p.grad for name, p in model.named_parameters()}))
    (ref, ref_grads), (ours, our_grads) = results
    assert_close(ours, ref, torch.float64, "logits")
    assert our_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_close(our_grads[name], ref_grads[name], torch.float64, f"grad {name}")


def test_bad_arguments(s2s):
    data, model_mod, train = s2s["data"], s2s["model"], s2s["train"]
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unknown task"):
        data.make_batch("multiply", 2, gen, 1, 2)
    with pytest.raises(ValueError, match="min_len"):
        data.make_batch("reverse", 2, gen, 0, 2)
    with pytest.raises(ValueError, match="norm"):
        model_mod.Seq2Seq(4, 4, 1, 0.0, norm="group")
    with pytest.raises(ValueError, match="unknown run"):
        train.model_for("cudnn", train.Config())


@pytest.fixture
def keep_threads():
    """main() sets torch's thread count (--threads); give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_main_runs_other_task_and_norm(s2s, tmp_path, capsys, keep_threads):
    """The CLI wires --task, --norm, --steps and --dtype through (a few float64 steps of addition
    with LayerNorm)."""
    assert s2s["seq2seq"].main(["--quick", "--steps", "3", "--task", "add", "--norm", "layer",
                                "--dtype", "float64", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "curves.json").read_text())
    config = data["config"]
    assert (config["task"], config["norm"], config["steps"], config["dtype"]) == ("add", "layer", 3, "float64")
    model, _ = s2s["train"].load_checkpoint(tmp_path / "best_ours.pt")
    assert model.decoder.weight_hh_l0.dtype == model.head.weight.dtype == torch.float64
    assert all(len(data["runs"][name]["train_loss"]) == 3 for name in RUNS)
    assert "OK:" in capsys.readouterr().out


def test_main_fails_when_curves_diverge(s2s, tmp_path, monkeypatch, capsys, keep_threads):
    """Curves further apart than the tolerance, or NaN, make the script exit with status 1."""
    script, train = s2s["seq2seq"], s2s["train"]
    for bad in (1.0, float("nan")):
        def fake_runs(cfg, out, bad=bad):
            runs = {}
            for name in RUNS:
                loss = [2.0, 1.5 + (bad if name == "ours" else 0.0)]
                runs[name] = train.Run(name, train_loss=loss, lr=[1e-3] * 2, teacher_ratio=[1.0] * 2,
                                       grad_norm=[0.1] * 2, eval_step=[2], eval_loss=[1.0],
                                       eval_accuracy=[0.5], best_step=2, best_accuracy=0.5)
            return runs

        monkeypatch.setattr(script, "run_all", fake_runs)
        monkeypatch.setattr(script.seq2seq_report, "plot", lambda *args: None)  # the --quick test plots
        assert script.main(["--quick", "--steps", "2", "--out", str(tmp_path)]) == 1
        assert "FAIL" in capsys.readouterr().err
