"""Models by config (Pythia / GPT-NeoX and BLOOM) and the packed forward pass: per-article attention, fused loss.

A packed row holds several articles. ``packed_loss`` passes position ids that restart per article
(``training/attention.py`` isolates the articles for each attention implementation) and the per-token loss
weights; the model returns the summed weighted next-token loss from its hidden states through a
``LinearCEHead`` (``training/loss.py``), without ever making the full-vocabulary fp32 logits. Everything runs
inside the model's own forward, so DeepSpeed (ZeRO-3 parameter gathering included) sees one ordinary call.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BloomConfig, BloomForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.modeling_outputs import CausalLMOutput
from transformers.models.bloom.modeling_bloom import BloomPreTrainedModel

from common.errors import ConfigError, first_line
from training.attention import PackedBloomModel, Varlen, check_attention
from training.config import ModelConfig
from training.loss import LinearCEHead, as_loss_head
from training.plan import Workload
from training.preflight import DsFacts, check_memory
from training.weights import load_model

LORA_TARGETS = {"pythia": ["query_key_value"], "bloom": ["query_key_value"]}


class PackedLM:
    """Mixin: ``forward(input_ids, position_ids, loss_weights=...)`` returns the summed weighted loss (``.loss``),
    ``packed=True`` the logits; any other call is the stock forward (generation). ``preference`` (a
    ``training.preference.PairLoss``): the DPO surrogate of 2B preference sequences, run inside the head."""

    def forward(
        self,
        input_ids=None,
        position_ids=None,
        loss_weights=None,
        packed=False,
        per_token=False,
        preference=None,
        **kwargs,
    ):
        if loss_weights is None and not packed:
            if position_ids is not None:
                kwargs["position_ids"] = position_ids
            return super().forward(input_ids=input_ids, **kwargs)
        hidden = self.packed_hidden(input_ids, position_ids)
        head = self.get_output_embeddings()
        if loss_weights is None:
            return CausalLMOutput(logits=head(hidden))
        return CausalLMOutput(loss=head(hidden, input_ids, loss_weights, per_token, preference=preference))


class PackedGPTNeoXForCausalLM(PackedLM, GPTNeoXForCausalLM):
    """GPT-NeoX (Pythia) with the packed forward; saves as a plain GPTNeoXForCausalLM."""

    def __init__(self, config):
        super().__init__(config)
        as_loss_head(self.get_output_embeddings())
        self.config.architectures = ["GPTNeoXForCausalLM"]

    def packed_hidden(self, input_ids, position_ids):
        batch, length = input_ids.shape
        kwargs = {}
        if self.config._attn_implementation == "flash_attention_2":  # padding-free: rows flattened into one
            input_ids, position_ids = input_ids.reshape(1, -1), position_ids.reshape(1, -1)
            kwargs = Varlen.of(position_ids).flash_kwargs()  # article boundaries once, not in every layer
        out = self.gpt_neox(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs)  # no mask,
        return out.last_hidden_state.reshape(batch, length, -1)  # no cache: transformers detects the articles


class PackedBloomForCausalLM(PackedLM, BloomForCausalLM):
    """BLOOM causal LM whose transformer is ``PackedBloomModel``; saves as a plain BloomForCausalLM."""

    def __init__(self, config):
        BloomPreTrainedModel.__init__(self, config)  # not BloomForCausalLM's: build the transformer once
        self.transformer = PackedBloomModel(config)
        # a tied head takes the embedding's weight in post_init: never build (or partition) a full one first
        tied = config.tie_word_embeddings
        self.lm_head = LinearCEHead(config.hidden_size, 0 if tied else config.vocab_size, bias=False)
        self.lm_head.out_features = config.vocab_size
        self.post_init()
        self.config.architectures = ["BloomForCausalLM"]

    def packed_hidden(self, input_ids, position_ids):
        return self.transformer(input_ids=input_ids, position_ids=position_ids).last_hidden_state


MODEL_CLASSES = {"pythia": PackedGPTNeoXForCausalLM, "bloom": PackedBloomForCausalLM}


def tiny_config(mc: ModelConfig, vocab_size: int, max_len: int):
    """A small random-init config of the chosen architecture; vocab rounded up to a multiple of 64.

    Rotary positions have no learned table, so the context is at least 2048 whatever the data length.
    """
    vocab = -(-vocab_size // 64) * 64
    t = mc.tiny
    if mc.kind == "pythia":
        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=t.hidden_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            intermediate_size=t.intermediate_size or 4 * t.hidden_size,
            max_position_embeddings=max(max_len, 2048),
            rotary_pct=0.25,
            use_parallel_residual=True,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
    return BloomConfig(
        vocab_size=vocab,
        hidden_size=t.hidden_size,
        n_layer=t.num_layers,
        n_head=t.num_heads,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def model_config(mc: ModelConfig, source: str | None, vocab_size: int, max_len: int):
    """The transformers config of the model to train (from the saved model, or the tiny shape)."""
    if not source:
        return tiny_config(mc, vocab_size, max_len)
    try:
        return MODEL_CLASSES[mc.kind].config_class.from_pretrained(source)
    except Exception as exc:
        raise ConfigError(f"model {source}: cannot load as {mc.kind} ({first_line(exc)})") from None


def build_model(
    mc: ModelConfig,
    vocab_size: int,
    max_len: int,
    init_from: Path | None = None,
    seed: int = 0,
    ds: dict | None = None,
    ds_name: str = "ds/cpu.json",
    lora: bool = False,
    attn: str = "sdpa",
    work: Workload | None = None,
    check: bool = True,
):
    """The model to train, checked against the data and the memory here, loaded as ``ds`` will train it.

    ``init_from`` / ``name_or_path`` load safetensors only, with no remote code; otherwise the tiny shape is
    built from config. Returns (model, keepalive): keep the second alive while training (ZeRO-3's
    ``HfDeepSpeedConfig``). Without ``ds`` the model is built in fp32 for one process (tests, tools).
    ``attn`` is the attention implementation for packed rows (``training/attention.py``); ``work`` what one
    micro-step runs, for the memory plan (default: one row of ``max_len``); ``check=False`` skips that plan (the
    frozen reference model of ``dpo.reference: live``, which holds weights only).
    """
    check_attention(mc.kind, attn, training=False)  # the trainer checks training support before
    cls = MODEL_CLASSES[mc.kind]
    source = str(init_from) if init_from else mc.name_or_path
    config = model_config(mc, source, vocab_size, max_len)
    if config.vocab_size < vocab_size:
        raise ConfigError(
            f"model has {config.vocab_size} embedding rows but the data's vocab_size is {vocab_size}; "
            "tokenize with this model's tokenizer"
        )
    max_pos = getattr(config, "max_position_embeddings", None)
    if mc.kind == "pythia" and max_pos is not None and max_pos < max_len:
        raise ConfigError(f"model handles {max_pos} positions but the data's max_seq_length is {max_len}")
    if attn == "flex_attention" and getattr(config, "attention_dropout", 0.0):
        raise ConfigError(
            f"attn_implementation flex_attention has no attention dropout and the model's attention_dropout is "
            f"{config.attention_dropout}; use sdpa"
        )
    facts = DsFacts.of(ds or {})
    if ds is not None and check:
        check_memory(
            cls, config, facts, ds, ds_name, work or Workload(micro_batch=1, seq_len=max_len, attn=attn, lora=lora)
        )
    # transformers runs BLOOM eager only; PackedBloomModel picks its own packed kernel from attn_impl
    config._attn_implementation = attn if mc.kind == "pythia" else "eager"
    model, keep = load_model(cls, config, source, facts, ds or {}, seed)
    if mc.kind == "bloom":
        model.transformer.attn_impl = attn
    elif model.config._attn_implementation != attn:
        raise ConfigError(
            f"attn_implementation {attn}: transformers chose {model.config._attn_implementation} "
            "for this model; use sdpa"
        )
    return model, keep


def packed_loss(model, batch: dict) -> torch.Tensor:
    """Summed weighted next-token loss of packed rows (attention isolated per article, no full fp32 logits)."""
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], loss_weights=batch["weights"]).loss


def packed_token_losses(model, batch: dict) -> torch.Tensor:
    """Per-token weighted next-token losses (B, L) of packed rows, for evaluation by source and category."""
    return model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], loss_weights=batch["weights"], per_token=True
    ).loss


def packed_forward(model, batch: dict) -> torch.Tensor:
    """Logits of packed rows with attention isolated per article (tests, benchmarks)."""
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], packed=True).logits


def weighted_loss(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Summed next-token cross-entropy weighted per target token, and the summed weight, from full logits.

    The reference that ``packed_loss`` must equal (tests, benchmarks). Sums, not a mean: the trainer divides by
    the optimizer step's supervised weight over every micro-batch and rank.
    """
    ce = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    )
    w = weights[:, :-1].reshape(-1).to(ce.dtype)
    return (ce * w).sum(), float(w.sum())


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing per layer, non-reentrant: same loss and gradients, less memory.

    Non-reentrant checkpointing needs no input that requires grad, so it also works under a frozen LoRA base."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"gradient_checkpointing: {type(model).__name__} does not support it; set it to false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23; before, gradient_checkpointing_*
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def apply_lora(model, kind: str, lora):
    """Wrap the model with a peft LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        task_type="CAUSAL_LM",
        target_modules=lora.target_modules or LORA_TARGETS[kind],
    )
    return get_peft_model(model, cfg)


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (linear and embedding weights), none on biases and norm weights.

    The rule transformers' Trainer and nanoGPT use: decaying a LayerNorm's gain or a bias toward 0 only hurts."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    return [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
