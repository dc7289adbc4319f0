"""replace_lstm: swap torch.nn.LSTM / LSTMCell modules of a model for ours, in place."""

from __future__ import annotations

from torch import nn

from torch_lstm_ext.module import LSTM, LSTMCell


def _converted(module: nn.Module, cells: bool) -> nn.Module | None:
    # Exact types only: a user's subclass may override forward, and swapping it would silently
    # change what the model computes.
    if type(module) is nn.LSTM:
        return LSTM.from_torch(module)
    if cells and type(module) is nn.LSTMCell:
        return LSTMCell.from_torch(module)
    return None


def replace_lstm(model: nn.Module, *, cells: bool = False) -> nn.Module:
    """Replace every nn.LSTM inside `model` (and nn.LSTMCell when `cells=True`) by ours.

    In place: the same Parameter objects are reused (optimizers built earlier keep working,
    state_dict keys are unchanged), no random numbers are drawn, device, dtype and train/eval
    mode are kept, and a module shared by several parents stays shared. Returns `model`; when
    `model` itself is an nn.LSTM / nn.LSTMCell, returns its replacement (a module cannot
    replace itself in place).
    """
    root = _converted(model, cells)
    if root is not None:
        return root
    swapped: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        # _modules, not named_children(): the latter yields a shared child under one name only.
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in swapped:
                replacement = _converted(child, cells)
                if replacement is None:
                    continue
                swapped[id(child)] = replacement
            setattr(parent, name, swapped[id(child)])
    return model
