"""A KV cache that grows by doubling instead of concatenating, so a turn does not copy the whole history.

transformers' ``DynamicLayer`` appends with ``torch.cat``: every forward (the prefill of a new turn and each
decoded token) copies the layer's whole cache, which at turn 20 of a chat is most of what the turn costs after
the new tokens themselves. ``GrowingLayer`` keeps a buffer with spare room (doubling, up to the context) and
exposes the filled part as views; cropping to a common prefix only moves the end.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

MIN_ROOM = 256


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` with amortised appends: keys/values are views of a buffer of ``capacity`` positions."""

    def __init__(self, max_len: int | None = None):
        super().__init__()
        self.max_len = max_len
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._n = 0

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * (0 if self._k is None else self._k.shape[-2]), MIN_ROOM)
        if self.max_len:
            cap = max(need, min(cap, self.max_len))
        shape = list(self.keys.shape if self._k is None else self._k.shape)
        k = self.keys.new_empty(shape[:-2] + [cap, shape[-1]])
        v = self.values.new_empty(shape[:-2] + [cap, self.values.shape[-1]])
        if self._n:
            k[..., : self._n, :] = self.keys
            v[..., : self._n, :] = self.values
        self._k, self._v = k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        n_new = key_states.shape[-2]
        if self._k is None or self._n + n_new > self._k.shape[-2]:
            self._grow(self._n + n_new)
        self._k[..., self._n : self._n + n_new, :] = key_states
        self._v[..., self._n : self._n + n_new, :] = value_states
        self._n += n_new
        self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._n if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop ``-tokens_to_remove`` positions from the end (transformers' negative-count convention)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._n = max(0, self._n + tokens_to_remove)
        self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]

    def reset(self) -> None:
        self._k = self._v = None
        self._n = 0
        super().reset()

    def _detach_buffer(self) -> None:
        """Beam search reshapes the batch: continue from plain tensors (a new buffer on the next update)."""
        self._k = self._v = None
        self.keys, self.values = self.keys.contiguous(), self.values.contiguous()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._detach_buffer()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._detach_buffer()


def growing_cache(model, max_len: int | None = None) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose layers are ``GrowingLayer`` (at most ``max_len`` positions)."""
    n = model.config.get_text_config(decoder=True).num_hidden_layers
    cache = DynamicCache()
    cache.layers = [GrowingLayer(max_len) for _ in range(n)]
    cache.layer_class_to_replicate = partial(GrowingLayer, max_len)
    return cache
