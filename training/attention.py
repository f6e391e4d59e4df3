"""Attention over packed rows, isolated per article, for every implementation a stage config can name.

Packed rows reach the model as position ids that restart at every article, never as a dense mask built here:
- Pythia (GPT-NeoX): transformers finds the articles from the restarting positions (with no mask and no cache)
  and builds the block-causal mask for eager / sdpa, a block-sparse mask for flex_attention, and varlen
  sequence lengths for flash_attention_2 (rows flattened into one, as ``DataCollatorWithFlattening`` does).
- BLOOM: transformers' BLOOM has eager attention only, with ALiBi from absolute key positions (in bf16 those are
  8 apart above 1024). ``PackedBloomModel`` builds ALiBi from the per-article positions instead, so an article
  packed at offset 1700 sees the same biases as alone, and runs eager, SDPA (ALiBi + block mask as one additive
  bias), or flash-attn's varlen kernel with ``alibi_slopes`` on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.bloom.modeling_bloom import BloomAttention, BloomModel, _get_alibi_slopes, dropout_add

from training.config import ConfigError

IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")
SUPPORTED = {"pythia": IMPLEMENTATIONS, "bloom": ("sdpa", "eager", "flash_attention_2")}


def check_attention(kind: str, impl: str, training: bool = True) -> None:
    """One line if ``impl`` cannot run here (or train here) or cannot isolate packed articles on this model kind."""
    if impl not in SUPPORTED[kind]:
        raise ConfigError(
            f"attn_implementation {impl} cannot isolate packed articles with {kind}'s ALiBi; "
            f"use one of {', '.join(SUPPORTED[kind])}"
        )
    if impl == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ConfigError(
                "attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package "
                "(pip install flash-attn --no-build-isolation); use sdpa"
            )
    if impl == "flex_attention":
        from transformers.utils import is_torch_flex_attn_available

        if not is_torch_flex_attn_available():
            raise ConfigError("attn_implementation flex_attention needs torch >= 2.5; use sdpa")
        if training and not torch.cuda.is_available():
            raise ConfigError(
                "attn_implementation flex_attention has no backward pass on the CPU (torch "
                f"{torch.__version__}); use sdpa, or train on a GPU"
            )


def article_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """True where an article starts: wherever the position does not go up by one (transformers' rule too)."""
    return torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1


def segments(position_ids: torch.Tensor) -> torch.Tensor:
    """Article index of every token."""
    return article_starts(position_ids).cumsum(-1)


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: 0 where key <= query in the same segment, a large negative elsewhere."""
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@dataclass
class Varlen:
    """Flattened packed rows for flash-attn: cumulative article lengths, the longest, ALiBi slopes (fp32)."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    slopes: torch.Tensor

    @classmethod
    def of(cls, position_ids: torch.Tensor, slopes: torch.Tensor) -> Varlen:
        starts = torch.flatnonzero(article_starts(position_ids.reshape(1, -1))[0])
        cu = torch.cat([starts, starts.new_tensor([position_ids.numel()])]).to(torch.int32)
        return cls(cu, int((cu[1:] - cu[:-1]).max()), slopes.float())


class PackedBloomAttention(BloomAttention):
    """BLOOM attention that also runs SDPA (``alibi`` None: the mask is ALiBi + block mask) or flash-attn varlen."""

    def forward(
        self,
        hidden_states,
        residual,
        alibi,
        attention_mask,
        layer_past=None,
        use_cache=False,
        output_attentions=False,
        **kwargs,
    ):
        if alibi is not None and not isinstance(attention_mask, Varlen):
            return super().forward(
                hidden_states,
                residual,
                alibi,
                attention_mask,
                layer_past=layer_past,
                use_cache=use_cache,
                output_attentions=output_attentions,
                **kwargs,
            )
        batch, length, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(batch, length, self.num_heads, 3, self.head_dim)
        dropout = self.attention_dropout.p if self.training else 0.0
        if isinstance(attention_mask, Varlen):
            from flash_attn import flash_attn_varlen_func

            # flash-attn's causal ALiBi is -slope * (query - key): BLOOM's slope * key up to a per-query constant
            q, k, v = (qkv[..., i, :].reshape(batch * length, self.num_heads, self.head_dim) for i in range(3))
            out = flash_attn_varlen_func(
                q,
                k,
                v,
                attention_mask.cu_seqlens,
                attention_mask.cu_seqlens,
                attention_mask.max_seqlen,
                attention_mask.max_seqlen,
                dropout_p=dropout,
                softmax_scale=self.inv_norm_factor,
                causal=True,
                alibi_slopes=attention_mask.slopes,
            )
        else:
            q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=self.inv_norm_factor
            ).transpose(1, 2)
        out = self.dense(out.reshape(batch, length, self.hidden_size))
        return dropout_add(out, residual, self.hidden_dropout, self.training), None


class PackedBloomModel(BloomModel):
    """BloomModel whose packed forward (``position_ids`` given) takes ALiBi from per-article positions."""

    attn_impl = "sdpa"  # set by training.modeling.build_model

    def __init__(self, config):
        super().__init__(config)
        for block in self.h:
            block.self_attention.__class__ = PackedBloomAttention  # same parameters, one more forward

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if position_ids is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = self.word_embeddings_layernorm(self.word_embeddings(input_ids))
        batch, length = input_ids.shape
        slopes = _get_alibi_slopes(self.num_heads, hidden.device)
        if self.attn_impl == "flash_attention_2":
            alibi, mask = None, Varlen.of(position_ids, slopes)
        else:
            alibi = (slopes[None, :, None] * position_ids[:, None, :]).to(hidden.dtype)  # (B, H, L), per article
            mask = block_causal_mask(segments(position_ids), hidden.dtype)
            if self.attn_impl == "sdpa":
                alibi, mask = None, alibi[:, :, None, :] + mask  # one additive (B, H, L, L) bias
            else:
                alibi = alibi.reshape(batch * self.num_heads, 1, length)
        for block in self.h:
            hidden = block(hidden, alibi=alibi, attention_mask=mask, layer_past=None, use_cache=False)[0]
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self.ln_f(hidden))
