"""A plain PyTorch autograd LSTM with the variants, step by step (nn.LSTMCell style).

Written from the equations in the issue, independently of the package: the reference the
variant tests compare against. Clear rather than fast. Random draws (weight dropout, zoneout,
inter-layer dropout) happen in the order the package documents: per layer and direction the
weight_hh mask, the cell zoneout mask [T, B, H], the hidden zoneout mask [T, B, P]; then the
dropout on the layer output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-5


def _ln(x: Tensor) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance
    return (x - mean) / torch.sqrt(var + EPS)


def _clip_grad(t: Tensor, bound: float | None) -> Tensor:
    if bound is not None and t.requires_grad:
        t.register_hook(lambda g: g.clamp(-bound, bound))
    return t


def _cell(x_t, h, c, p, cfg, m_c, m_h):
    """One step for one batch of sequences. p: this layer/direction's parameters by kind."""
    gi = x_t @ p["weight_ih"].T
    gh = h @ p["weight_hh"].T
    if cfg["layer_norm"]:
        gates = _ln(gi) * p["ln_ih_weight"] + _ln(gh) * p["ln_hh_weight"]
    else:
        gates = gi + gh
    if "bias_ih" in p:
        gates = gates + p["bias_ih"] + p["bias_hh"]
    i_pre, f_pre, g_pre, o_pre = gates.chunk(4, dim=-1)
    if cfg["peephole"]:
        i_pre = i_pre + p["weight_ci"] * c
        f_pre = f_pre + p["weight_cf"] * c
    i = torch.sigmoid(_clip_grad(i_pre, cfg["grad_clip"]))
    f = torch.sigmoid(_clip_grad(f_pre, cfg["grad_clip"]))
    g = torch.tanh(_clip_grad(g_pre, cfg["grad_clip"]))
    c_cand = f * c + i * g
    if cfg["cell_clip"] is not None:
        c_cand = torch.clamp(c_cand, -cfg["cell_clip"], cfg["cell_clip"])
    if cfg["peephole"]:
        o_pre = o_pre + p["weight_co"] * c_cand
    o = torch.sigmoid(_clip_grad(o_pre, cfg["grad_clip"]))
    c_shown = _ln(c_cand) * p["ln_c_weight"] + p["ln_c_bias"] if cfg["layer_norm"] else c_cand
    h_cand = o * torch.tanh(c_shown)
    if "weight_hr" in p:
        h_cand = h_cand @ p["weight_hr"].T
    c_new = m_c * c + (1 - m_c) * c_cand
    h_new = m_h * h + (1 - m_h) * h_cand
    return h_new, c_new


def reference_lstm(module, x: Tensor, lengths: list[int], hx=None, training: bool = False):
    """Run `module`'s config and parameters step by step.

    x: [T, B, I] time-major (zero-padded past each sequence's length); lengths: per sequence.
    Returns output [T, B, D*P] (zeros past each length), h_n [L*D, B, P], c_n [L*D, B, H].
    """
    v = module.variants
    cfg = dict(layer_norm=v.layer_norm, peephole=v.peephole, cell_clip=v.cell_clip, grad_clip=v.grad_clip)
    T, B, _ = x.shape
    H, P = module.hidden_size, module.proj_size or module.hidden_size
    D = 2 if module.bidirectional else 1
    params = dict(module.named_parameters())
    if hx is None:
        hx = (x.new_zeros(module.num_layers * D, B, P), x.new_zeros(module.num_layers * D, B, H))
    layer_input, h_n, c_n = x, [], []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(D):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            p = {name[: -len(suffix)]: t for name, t in params.items() if name.endswith(suffix)}
            if v.weight_dropout and training:
                p["weight_hh"] = F.dropout(p["weight_hh"], v.weight_dropout, training=True)
            m_c = _zoneout(v.zoneout_cell, (T, B, H), x, training)
            m_h = _zoneout(v.zoneout_hidden, (T, B, P), x, training)
            index = layer * D + direction
            out = x.new_zeros(T, B, P)
            finals_h, finals_c = [], []
            for b in range(B):
                h, c = hx[0][index, b : b + 1], hx[1][index, b : b + 1]
                steps = range(lengths[b])
                rows = []
                for t in reversed(steps) if direction else steps:
                    h, c = _cell(layer_input[t, b : b + 1], h, c, p, cfg, m_c[t, b : b + 1], m_h[t, b : b + 1])
                    rows.append((t, h))
                for t, h_t in rows:
                    out = out.index_put((torch.tensor([t]), torch.tensor([b])), h_t)
                finals_h.append(h)
                finals_c.append(c)
            outputs.append(out)
            h_n.append(torch.cat(finals_h))
            c_n.append(torch.cat(finals_c))
        layer_input = torch.cat(outputs, dim=-1)
        if module.dropout and training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)
    return layer_input, torch.stack(h_n), torch.stack(c_n)


def _zoneout(z: float, shape, like: Tensor, training: bool) -> Tensor:
    if z == 0:
        return like.new_zeros(shape)
    if training:
        return like.new_empty(shape).bernoulli_(z)
    return like.new_full(shape, z)
