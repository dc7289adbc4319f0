"""torch.ao.quantization.quantize_dynamic and our LSTM / LSTMCell: never left in floating point
silently.

quantize_dynamic(model, qconfig_spec, dtype, mapping, inplace) looks modules up by exact type, and
our LSTM is no nn.LSTM subclass (nor our LSTMCell an nn.LSTMCell), so it used to leave them in
fp32 without a word. On `import torch_lstm_ext`, `install()` puts a wrapper in its place whose
arguments name our classes wherever they name nn.LSTM / nn.LSTMCell:

- qconfig_spec (a set or dict, or None, whose default for qint8 and float16 has both): ours get
  torch's class's qconfig; a spec naming our class works as it is;
- mapping (None: torch's default): ours are converted by `_DynamicOurs.from_float`;
- a bare LSTM or LSTMCell as the model, which convert would never reach (it swaps children
  only), is converted as a child.

`_quantized` decides what ours become: quantize_weights(module, int8 or float16), the same path
as calling it directly (weight_quantization.py).

Why a wrapper, not only an entry in torch's DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS: the qconfig
lookup happens before any mapping, by exact type, so with {nn.LSTM} or the default spec our
module gets no qconfig and convert skips it; nothing but quantize_dynamic's arguments says that
nn.LSTM was asked for. And that global dict also feeds get_default_qconfig_propagation_list,
so an entry there would make static prepare() put an observer on our LSTM's (output, (h, c))
tuple, whose forward then fails. The wrapper hands torch extended copies and mutates no torch
state but the quantize_dynamic attributes.
"""

from __future__ import annotations

import copy
import functools
import importlib
import sys
import warnings

import torch
from torch import nn
from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

from torch_lstm_ext.module import LSTM, LSTMCell
from torch_lstm_ext.weight_quantization import quantize_weights

# torch 2.13's default qconfig_spec for the dtypes whose default includes nn.LSTM (quantize.py,
# quantize_dynamic); given as a set, these types get the same qconfigs. The tests compare the
# result with torch's own default on a model holding each of them.
_DEFAULT_SPEC_DTYPES = (torch.qint8, torch.float16)
_DEFAULT_SPEC_TYPES = frozenset({nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.RNNCell, nn.GRUCell})
# torch's module type -> ours, which quantize_dynamic covers wherever it covers torch's.
_OURS = {nn.LSTM: LSTM, nn.LSTMCell: LSTMCell}

# Where torch exports quantize_dynamic (torch.quantization is the deprecated alias); one imported
# later copies the attribute from torch.ao.quantization.quantize, the wrapper by then.
_EXPORTS = ("torch.ao.quantization", "torch.ao.quantization.quantize", "torch.quantization",
            "torch.quantization.quantize")
_MARK = "_torch_lstm_ext_wrapper"

# nn.Module's forward-hook dicts: swap_module registers the forward (pre-)hooks of the module it
# replaces on the module from_float returns.
_FORWARD_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                       "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


# quantize_dynamic's weight dtypes (the qconfig's weight observer) -> quantize_weights' storage.
_STORAGE = {torch.qint8: torch.int8, torch.float16: torch.float16}


def _quantized(module: LSTM | LSTMCell) -> LSTM | LSTMCell:
    """What quantize_dynamic makes of our LSTM under `module.qconfig`: `module` itself, its
    weights quantized in place by quantize_weights (quantize_dynamic works on a copy unless
    inplace=True). RuntimeError for a weight dtype torch's dynamic LSTM has no path for either."""
    dtype = module.qconfig.weight().dtype
    if dtype not in _STORAGE:
        raise RuntimeError(f"Unsupported dtype for dynamic RNN quantization: {dtype}")
    return quantize_weights(module, _STORAGE[dtype])


def _twin(module: LSTM | LSTMCell) -> LSTM | LSTMCell:
    """A second object of `module`'s class with the same Parameters, buffers, attributes and
    hooks, less the forward (pre-)hooks: swap_module registers those again on what from_float
    returns, so returning `module` itself would run each of them twice."""
    # Not copy.copy(module): a parametrized module refuses to be pickled, and so copied.
    twin = type(module).__new__(type(module))
    for name, value in vars(module).items():
        # nn.Module's containers (parameters, buffers, submodules, hooks): the twin gets its own.
        twin.__dict__[name] = copy.copy(value) if isinstance(value, (dict, set)) else value
    for name in _FORWARD_HOOK_DICTS:
        twin.__dict__[name].clear()
    return twin


class _DynamicOurs:
    """The mapping entry that convert uses for our LSTM and LSTMCell (like
    torch.ao.nn.quantized.dynamic.LSTM for nn.LSTM): from_float(mod) -> the module that replaces
    `mod` in its parent."""

    @classmethod
    def from_float(cls, mod: LSTM | LSTMCell) -> LSTM | LSTMCell:
        result = _quantized(mod)
        return _twin(result) if result is mod else result


class _Root(nn.Module):
    """Holds a bare LSTM under the name "", the root's own prefix in propagate_qconfig_, so that
    convert reaches it with the qconfig a root gets (its type's, the "" key's, its own)."""

    def __init__(self, lstm: LSTM) -> None:
        super().__init__()
        self._modules[""] = lstm  # add_module refuses "", named_children yields it


def _spec_naming_ours(qconfig_spec, dtype):
    """qconfig_spec with our LSTM / LSTMCell wherever it has nn.LSTM / nn.LSTMCell as a type
    key; a copy, or itself."""
    if qconfig_spec is None and dtype in _DEFAULT_SPEC_DTYPES:
        qconfig_spec = set(_DEFAULT_SPEC_TYPES)
    for theirs, ours in _OURS.items():
        if isinstance(qconfig_spec, set) and theirs in qconfig_spec:
            qconfig_spec = qconfig_spec | {ours}
        elif isinstance(qconfig_spec, dict) and theirs in qconfig_spec and ours not in qconfig_spec:
            qconfig_spec = {**qconfig_spec, ours: qconfig_spec[theirs]}
    return qconfig_spec


def _mapping_naming_ours(mapping):
    """mapping (None: torch's default) with our entries wherever it maps nn.LSTM / nn.LSTMCell;
    a copy, or itself."""
    if mapping is None:
        mapping = get_default_dynamic_quant_module_mappings()
    for theirs, ours in _OURS.items():
        if theirs in mapping and ours not in mapping:
            mapping = {**mapping, ours: _DynamicOurs}
    return mapping


def _naming_ours(original):
    """A quantize_dynamic with `original`'s signature and docstring that hands it arguments
    naming our LSTM wherever they name nn.LSTM."""
    # torch 2.10+ marks quantize_dynamic deprecated (typing_extensions.deprecated): its warning
    # names the frame that calls it. Calling the undecorated function and warning here with the
    # same stacklevel keeps it pointing at the user's call (which decides whether it is shown).
    deprecation = getattr(original, "__deprecated__", None)
    undecorated = original.__wrapped__ if deprecation is not None else original

    @functools.wraps(original)
    def quantize_dynamic(model, qconfig_spec=None, dtype=torch.qint8, mapping=None, inplace=False):
        if deprecation is not None:
            warnings.warn(deprecation, DeprecationWarning, stacklevel=2)
        spec, mapping = _spec_naming_ours(qconfig_spec, dtype), _mapping_naming_ours(mapping)
        if isinstance(model, (LSTM, LSTMCell)):
            return undecorated(_Root(model), spec, dtype, mapping, inplace)._modules[""]
        return undecorated(model, spec, dtype, mapping, inplace)

    setattr(quantize_dynamic, _MARK, True)
    return quantize_dynamic


def install() -> None:
    """Put the wrapper in place of torch's quantize_dynamic wherever torch exports it. Idempotent:
    with the wrapper in place (a second call, a reload of this module) it changes nothing."""
    # import_module: the attribute torch.ao.quantization.quantize is the function quantize.
    original = importlib.import_module("torch.ao.quantization.quantize").quantize_dynamic
    if getattr(original, _MARK, False):
        return
    wrapper = _naming_ours(original)
    for name in _EXPORTS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "quantize_dynamic", None) is original:
            module.quantize_dynamic = wrapper


install()
