"""Random configurations of checkpoint=True against the stored path, compared to rounding.

    python scripts/checkpoint_sweep.py --seed 1 --configs 40 [--small-blocks]

Each configuration draws dtype (fp32/fp64), sizes, layers, direction, batch_first, projection,
variants, dropout and packed or padded input, trains one step with each path from the same seed
and measures, for outputs and every gradient, max|checkpointed - stored| in units of
eps * max|stored| (eps of the dtype). The bound is tests/support.py's: CHECKPOINT_EPS_PER_STEP
times T. A configuration over it is ill-conditioned rather than wrong when the stored path moves
as much (CHECKPOINT_PERTURBATION_RATIO) when its input is perturbed by one rounding error,
x * (1 + eps * z) with z ~ N(0, 1); otherwise it is reported as a mismatch. Prints the
configurations over the bound and the counts; exit status 1 when any mismatch. --small-blocks
lowers schedule.MIN_BLOCK_ROWS to 32 so that short sequences span many blocks.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
from torch.nn.utils.rnn import pack_sequence

import torch_lstm_ext
from torch_lstm_ext import schedule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import CHECKPOINT_EPS_PER_STEP, CHECKPOINT_PERTURBATION_RATIO, eps_units  # noqa: E402


def draw(rng: random.Random, k: int):
    """(description, T, module config, input) of configuration k."""
    dtype = rng.choice([torch.float32, torch.float64])
    I, H = rng.randint(1, 40), rng.randint(2, 40)
    config = dict(num_layers=rng.choice([1, 2]), bidirectional=rng.random() < 0.5,
                  batch_first=rng.random() < 0.3)
    if rng.random() < 0.4:
        config["proj_size"] = rng.randint(1, H - 1)
    if rng.random() < 0.5:
        config.update(peephole=rng.random() < 0.5, layer_norm=rng.random() < 0.5,
                      zoneout_cell=rng.choice([0.0, 0.2]), zoneout_hidden=rng.choice([0.0, 0.3]),
                      weight_dropout=rng.choice([0.0, 0.25]), cell_clip=rng.choice([None, 1.0]),
                      grad_clip=rng.choice([None, 0.2]))
    if config["num_layers"] > 1 and rng.random() < 0.5:
        config["dropout"] = 0.3
    T, B = rng.randint(1, 400), rng.randint(1, 9)
    gen = torch.Generator().manual_seed(k)
    if rng.random() < 0.4:
        lengths = [T] + [rng.randint(1, T) for _ in range(B - 1)]
        seqs = [torch.randn(n, I, generator=gen, dtype=dtype) for n in lengths]
        x = pack_sequence(seqs, enforce_sorted=False)
        x.data.requires_grad_()
    else:
        shape = (B, T, I) if config["batch_first"] else (T, B, I)
        x = torch.randn(*shape, generator=gen, dtype=dtype, requires_grad=True)
    description = f"{dtype} I{I} H{H} T{T} B{B} packed={hasattr(x, 'batch_sizes')} {config}"
    return description, T, (I, H, dtype, config), x


def results(checkpoint: bool, I: int, H: int, dtype: torch.dtype, config: dict, x) -> list[torch.Tensor]:
    """Outputs, final states and the gradients of the input and every parameter of one training
    step from fixed seeds (the same masks for either path)."""
    torch.manual_seed(0)
    module = torch_lstm_ext.LSTM(I, H, checkpoint=checkpoint, dtype=dtype, **config).train()
    torch.manual_seed(3)
    out, (h_n, c_n) = module(x)
    data = out.data if hasattr(out, "batch_sizes") else out
    leaf = x.data if hasattr(x, "batch_sizes") else x
    loss = (data * data.detach().cos()).sum() + h_n.sum() + c_n.pow(2).sum()
    return [data, h_n, c_n, *torch.autograd.grad(loss, [leaf, *module.parameters()])]


def perturbed(x, seed: int):
    """x * (1 + eps * z), z ~ N(0, 1): the input moved by about one rounding error."""
    data = x.data if hasattr(x, "batch_sizes") else x
    z = torch.randn(data.shape, generator=torch.Generator().manual_seed(seed), dtype=data.dtype)
    moved = (data.detach() * (1 + torch.finfo(data.dtype).eps * z)).requires_grad_()
    return x._replace(data=moved) if hasattr(x, "batch_sizes") else moved


def worst_units(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(eps_units(a, e) for a, e in zip(actual, expected, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--configs", type=int, default=40)
    parser.add_argument("--small-blocks", action="store_true", help="MIN_BLOCK_ROWS = 32")
    args = parser.parse_args()
    if args.small_blocks:
        schedule.MIN_BLOCK_ROWS = 32
    rng = random.Random(args.seed)
    bad = ill_conditioned = 0
    worst_per_step = 0.0
    for k in range(args.configs):
        description, T, (I, H, dtype, config), x = draw(rng, k)
        stored, checkpointed = (results(c, I, H, dtype, config, x) for c in (False, True))
        units = worst_units(checkpointed, stored)
        worst_per_step = max(worst_per_step, units / T)
        if units <= CHECKPOINT_EPS_PER_STEP * T:
            continue
        sensitivity = worst_units(results(False, I, H, dtype, config, perturbed(x, k)), stored)
        verdict = "ILL-CONDITIONED" if units <= CHECKPOINT_PERTURBATION_RATIO * sensitivity else "MISMATCH"
        bad += verdict == "MISMATCH"
        ill_conditioned += verdict == "ILL-CONDITIONED"
        print(f"{verdict} {units / T:.3g} T eps (a one-eps input perturbation: {sensitivity / T:.3g} T eps) "
              f"{description}")
    print(f"worst difference: {worst_per_step:.3g} T eps * max|stored| (bound {CHECKPOINT_EPS_PER_STEP:g}); "
          f"{ill_conditioned} over it, ill-conditioned")
    print(f"seed {args.seed}: {bad} of {args.configs} configurations differ beyond rounding")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
