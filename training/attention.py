"""Attention over packed rows, isolated per article, for every implementation a stage config can name.

Packed rows reach the model as position ids that restart at every article, never as a dense mask built here:
- Pythia (GPT-NeoX): transformers finds the articles from the restarting positions (with no mask and no cache)
  and builds the block-causal mask for eager / sdpa, a block-sparse mask for flex_attention; for
  flash_attention_2 the rows are flattened into one and the article boundaries (``cu_seqlens``) are computed
  once per batch here and passed to every layer (as ``DataCollatorWithFlattening`` + FlashAttentionKwargs).
- BLOOM: transformers' BLOOM has eager attention only, with ALiBi from absolute key positions (in bf16 those are
  8 apart above 1024). ``PackedBloomModel`` builds ALiBi from the per-article positions instead, so an article
  packed at offset 1700 sees the same biases as alone, and runs eager, SDPA (ALiBi + block mask as one additive
  bias), flex attention (a document block mask built once per batch, ALiBi as a score modification: no L x L
  tensor at all) or flash-attn's varlen kernel with ``alibi_slopes`` on CUDA.
``auto`` (the default) picks the fastest isolating kernel installed: flash_attention_2 on CUDA in 16 bits when
flash-attn is installed, else flex_attention on CUDA, else sdpa (CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.bloom.modeling_bloom import BloomAttention, BloomModel, dropout_add

from common.errors import ConfigError
from training.config import IMPLEMENTATIONS

SUPPORTED = {"pythia": IMPLEMENTATIONS, "bloom": IMPLEMENTATIONS}


def resolve_attention(impl: str, cuda: bool, dtype: torch.dtype) -> str:
    """``auto``: flash_attention_2 (CUDA, 16 bits, flash-attn installed), else flex_attention (CUDA), else sdpa."""
    if impl != "auto":
        return impl
    if not cuda:
        return "sdpa"
    from transformers.utils import is_flash_attn_2_available, is_torch_flex_attn_available

    if dtype in (torch.bfloat16, torch.float16) and is_flash_attn_2_available():
        return "flash_attention_2"
    return "flex_attention" if is_torch_flex_attn_available() else "sdpa"


def alibi_slopes(num_heads: int, device=None) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al. 2022), fp32, as BLOOM computes them.

    For n the largest power of two <= heads: 2^(-8/n)^1..n; the remaining heads take the odd powers of
    2^(-4/n) (the slopes of 2n heads, interleaved)."""
    n = 2 ** math.floor(math.log2(num_heads))
    base = torch.full((), 2 ** (-(2 ** -(math.log2(n) - 3))), device=device, dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + n, device=device, dtype=torch.int32))
    if n != num_heads:
        extra = torch.full((), 2 ** (-(2 ** -(math.log2(2 * n) - 3))), device=device, dtype=torch.float32)
        odd = torch.arange(1, 1 + 2 * min(n, num_heads - n), 2, device=device, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra, odd)])
    return slopes


def check_attention(kind: str, impl: str, training: bool = True) -> None:
    """One line if ``impl`` cannot run here (or train here) or cannot isolate packed articles on this model kind."""
    if impl not in SUPPORTED[kind]:
        raise ConfigError(
            f"attn_implementation {impl} cannot isolate packed articles on {kind}; use one of "
            f"{', '.join(SUPPORTED[kind])} or auto"
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
    """Flattened packed rows for flash-attn: cumulative article lengths, the longest, ALiBi slopes (fp32, BLOOM)."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    slopes: torch.Tensor | None = None

    @classmethod
    def of(cls, position_ids: torch.Tensor, slopes: torch.Tensor | None = None) -> Varlen:
        starts = torch.flatnonzero(article_starts(position_ids.reshape(1, -1))[0])
        cu = torch.cat([starts, starts.new_tensor([position_ids.numel()])]).to(torch.int32)
        return cls(cu, int((cu[1:] - cu[:-1]).max()), None if slopes is None else slopes.float())

    def flash_kwargs(self) -> dict:
        """transformers' FlashAttentionKwargs: every layer reuses these boundaries instead of re-deriving them."""
        cu = self.cu_seqlens
        return {
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": self.max_seqlen,
            "max_length_k": self.max_seqlen,
        }


_COMPILED_FLEX = None


def flex(q, k, v, block_mask, score_mod, scale):
    """flex_attention, compiled once on CUDA (its fused kernel; eager flex is a reference implementation)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if not q.is_cuda:
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


@dataclass
class FlexDoc:
    """A document (article) block mask and ALiBi as a score modification, built once per batch for all layers.

    Block-sparse: tiles wholly outside an article's causal triangle are skipped, so a row of many short
    articles costs far less than L^2. ALiBi is added as ``slope * (key position - query position)`` within the
    article: BLOOM's ``slope * key position`` up to a per-query constant, which softmax ignores."""

    block_mask: object
    score_mod: object

    @classmethod
    def of(cls, position_ids: torch.Tensor, slopes: torch.Tensor | None) -> FlexDoc:
        from torch.nn.attention.flex_attention import create_block_mask

        seg, pos = segments(position_ids), position_ids
        batch, length = position_ids.shape

        def same_article_causal(b, h, q, kv):
            return (seg[b, q] == seg[b, kv]) & (q >= kv)

        def alibi(score, b, h, q, kv):
            return score + slopes[h] * (pos[b, kv] - pos[b, q])

        mask = create_block_mask(
            same_article_causal, batch, None, length, length, device=position_ids.device, _compile=pos.is_cuda
        )
        return cls(mask, alibi if slopes is not None else None)


class PackedBloomAttention(BloomAttention):
    """BLOOM attention that also runs SDPA (``alibi`` None: the mask is ALiBi + block mask), flex attention
    (``FlexDoc``) or flash-attn varlen (``Varlen``)."""

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
        if isinstance(attention_mask, FlexDoc):
            if dropout:
                raise ValueError("flex_attention has no attention dropout; set attention_dropout 0 or use sdpa")
            q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
            out = flex(q, k, v, attention_mask.block_mask, attention_mask.score_mod, self.inv_norm_factor)
            out = out.transpose(1, 2)
        elif isinstance(attention_mask, Varlen):
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
        slopes = alibi_slopes(self.num_heads, hidden.device)
        if self.attn_impl == "flash_attention_2":
            alibi, mask = None, Varlen.of(position_ids, slopes)
        elif self.attn_impl == "flex_attention":
            alibi, mask = None, FlexDoc.of(position_ids, slopes)
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
