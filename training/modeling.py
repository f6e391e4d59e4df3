"""Models by config (Pythia / GPT-NeoX and BLOOM) and the packed forward pass with per-article attention.

A packed row holds several articles. ``packed_forward`` builds a block-diagonal causal mask from the
segment ids (no token attends across articles) and passes position ids that restart per article:
GPT-NeoX's rotary embeddings then see each article from position 0. BLOOM's ALiBi bias is
``slope * key_position``; within one article block it differs from the article-alone bias by a
constant per query row, which softmax ignores, so absolute positions are exact. ``PackedBloomModel``
only teaches BLOOM to build that bias when given a 4D mask (its stock code expects a 2D one).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BloomConfig, BloomForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.models.bloom.modeling_bloom import BloomModel, BloomPreTrainedModel, _get_alibi_slopes

from training.config import ConfigError, ModelConfig
from training.loading import DsFacts, check_memory, load_model, model_config

LORA_TARGETS = {"pythia": ["query_key_value"], "bloom": ["query_key_value"]}


class PackedBloomModel(BloomModel):
    """BloomModel that accepts a prepared 4D attention mask (ALiBi from absolute key positions)."""

    def build_alibi_tensor(self, attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
        if attention_mask.ndim != 4:
            return super().build_alibi_tensor(attention_mask, num_heads, dtype)
        batch, length = attention_mask.shape[0], attention_mask.shape[-1]
        slopes = _get_alibi_slopes(num_heads, attention_mask.device)
        alibi = slopes[:, None, None] * torch.arange(length, device=attention_mask.device)
        return alibi.repeat(batch, 1, 1).to(dtype)


class PackedBloomForCausalLM(BloomForCausalLM):
    """BLOOM causal LM whose transformer is ``PackedBloomModel``; saves as a plain BloomForCausalLM."""

    def __init__(self, config):
        BloomPreTrainedModel.__init__(self, config)  # not BloomForCausalLM's: build the transformer once
        self.transformer = PackedBloomModel(config)
        # a tied head takes the embedding's weight in post_init: never build (or partition) a full one first
        tied = config.tie_word_embeddings
        self.lm_head = nn.Linear(config.hidden_size, 0 if tied else config.vocab_size, bias=False)
        self.lm_head.out_features = config.vocab_size
        self.post_init()
        self.config.architectures = ["BloomForCausalLM"]


MODEL_CLASSES = {"pythia": GPTNeoXForCausalLM, "bloom": PackedBloomForCausalLM}


def tiny_config(mc: ModelConfig, vocab_size: int, max_len: int):
    """A small random-init config of the chosen architecture; vocab rounded up to a multiple of 64.

    Rotary positions have no learned table, so the context is at least 2048 whatever the data length.
    """
    vocab = -(-vocab_size // 64) * 64
    t = mc.tiny
    if mc.kind == "pythia":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
                             num_attention_heads=t.num_heads,
                             intermediate_size=t.intermediate_size or 4 * t.hidden_size,
                             max_position_embeddings=max(max_len, 2048), rotary_pct=0.25, use_parallel_residual=True,
                             hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False,
                             bos_token_id=0, eos_token_id=0)
    return BloomConfig(vocab_size=vocab, hidden_size=t.hidden_size, n_layer=t.num_layers, n_head=t.num_heads,
                       hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0)


def build_model(mc: ModelConfig, vocab_size: int, max_len: int, init_from: Path | None = None, seed: int = 0,
                ds: dict | None = None, ds_name: str = "ds/cpu.json", lora: bool = False):
    """The model to train, checked against the data and the memory here, loaded as ``ds`` will train it.

    ``init_from`` / ``name_or_path`` load safetensors only, with no remote code; otherwise the tiny shape is
    built from config. Returns (model, keepalive): keep the second alive while training (ZeRO-3's
    ``HfDeepSpeedConfig``). Without ``ds`` the model is built in fp32 for one process (tests, tools).
    """
    cls = MODEL_CLASSES[mc.kind]
    source = str(init_from) if init_from else mc.name_or_path
    config = model_config(mc, source, vocab_size, max_len)
    if config.vocab_size < vocab_size:
        raise ConfigError(f"model has {config.vocab_size} embedding rows but the data's vocab_size is {vocab_size}; "
                          "tokenize with this model's tokenizer")
    max_pos = getattr(config, "max_position_embeddings", None)
    if mc.kind == "pythia" and max_pos is not None and max_pos < max_len:
        raise ConfigError(f"model handles {max_pos} positions but the data's max_seq_length is {max_len}")
    facts = DsFacts.of(ds or {})
    if ds is not None:
        check_memory(cls, config, facts, ds_name, lora)
    return load_model(cls, config, source, facts, ds or {}, seed)


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: 0 where key <= query in the same segment, a large negative elsewhere."""
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def packed_forward(model, batch: dict) -> torch.Tensor:
    """Logits of packed rows with attention isolated per article."""
    dtype = next(model.parameters()).dtype
    mask = block_causal_mask(batch["segment_ids"], dtype)
    return model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                 use_cache=False).logits


def weighted_loss(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Summed next-token cross-entropy weighted per target token, and the summed weight.

    Sums, not a mean: the trainer divides by the optimizer step's supervised weight over every micro-batch
    and rank, so each token counts the same whatever the batch shape.
    """
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                         reduction="none")
    w = weights[:, :-1].reshape(-1).to(ce.dtype)
    return (ce * w).sum(), float(w.sum())


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing per layer, non-reentrant: same loss and gradients, less memory.

    Non-reentrant checkpointing needs no input that requires grad, so it also works under a frozen LoRA base."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"gradient_checkpointing: {type(model).__name__} does not support it; set it to false")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def apply_lora(model, kind: str, lora):
    """Wrap the model with a peft LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                     target_modules=lora.target_modules or LORA_TARGETS[kind])
    return get_peft_model(model, cfg)
