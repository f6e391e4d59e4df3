"""Per-GPU memory plan of a training stage, from shapes alone: will this recipe fit, and what to change if not.

Model states come from DeepSpeed's own estimators on a parameter count taken on the meta device. Activations
are counted per layer from what autograd keeps for backward in this code base (held within 2% of the bytes
autograd saves on CPU by tests/training/test_plan.py). In units of T = micro_batch x seq_len tokens, hidden h,
intermediate I, H heads, d bytes per element (bf16/fp16: 2, fp32: 4):

  Pythia layer (parallel residual, rotary): x, ln1 out, rotated q and k, dense input, ln2 out (6 Th), fc1 and
    gelu outputs (2 TI); sdpa/flash/flex keep the fused qkv (3 Th), the output (Th) and fp32 log-sum-exp; sdpa
    with packed rows also keeps torch's float copy of the B x 1 x L x L mask in every layer (B L^2 d); eager
    keeps a v copy (Th) and the fp32 probabilities plus their d copy (B H L^2 (4 + d)).
  BLOOM layer (ALiBi): x, ln1 out, residual, ln2 out (4 Th), fc1 and gelu (2 TI), qkv (3 Th) and the output
    (Th, flex one more copy); eager instead keeps q, k, v and merged-head copies (4 Th) and the probabilities.
    BLOOM sdpa passes one (B, H, L, L) additive bias shared by all layers (training/attention.py); eager one
    B x 1 x L x L mask; flex and flash no L x L tensor.
  LoRA (query_key_value): frozen linears keep no inputs (-2 Th - TI, Pythia -1 Th more); the adapter keeps
    its dropout output and mask (2 Th, fp32 where peft keeps adapters in fp32) and rank-r activations.
  Gradient checkpointing keeps only each layer's input (Th).

On top, the larger of two peaks: the loss head's (training/loss.py: a chunk's fp32 logits, the gradients it
computes in the forward) and one layer's backward working set (``backward_bytes``); then DeepSpeed's reduce
bucket(s) and ZeRO-3 prefetch, and an allowance for the CUDA context and fragmentation.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from training.config import IMPLEMENTATIONS, ModelKind
from training.loss import chunk_tokens

GiB = 1024**3
CUDA_CONTEXT = int(1.5 * GiB)  # CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers, per GPU
FRAGMENTATION = 0.05  # the caching allocator's unusable share of what it holds
Attn = Literal[IMPLEMENTATIONS]


class Shape(BaseModel):
    """What the plan needs of an architecture; BLOOM's MLP is always 4 x hidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ModelKind
    hidden: int = Field(ge=1)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    vocab: int = Field(ge=1)
    intermediate: int = Field(ge=1)

    @classmethod
    def of(cls, config) -> Shape:
        """The shape of a transformers GPTNeoXConfig / BloomConfig."""
        h = config.hidden_size
        inter = getattr(config, "intermediate_size", None) or 4 * h
        return cls(
            kind={"gpt_neox": "pythia", "bloom": "bloom"}[config.model_type],
            hidden=h,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            vocab=config.vocab_size,
            intermediate=inter,
        )


class Workload(BaseModel):
    """What one micro-step runs: the activation side of the plan (the trainer builds it from the stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    micro_batch: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    gradient_checkpointing: bool = False
    attn: Attn = "sdpa"
    lora: bool = False

    @classmethod
    def of(cls, cfg, seq_len: int, attn: str) -> Workload:
        """The workload of a StageConfig at the data's max_seq_length, with the attention ``auto`` resolved to."""
        return cls(  # objective dpo: a micro-batch of B pairs runs 2B sequences (chosen and rejected)
            micro_batch=cfg.micro_batch_size * (2 if getattr(cfg, "objective", "sft") == "dpo" else 1),
            seq_len=seq_len,
            gradient_checkpointing=cfg.gradient_checkpointing,
            attn=attn,
            lora=cfg.lora is not None,
        )


# ---- activations ----


def layer_bytes(s: Shape, w: Workload, d: int) -> int:
    """Bytes one transformer layer keeps for backward without checkpointing (see the module docstring)."""
    b, length, h, inter = w.micro_batch, w.seq_len, s.hidden, s.intermediate
    t = b * length
    th, scores = t * h * d, b * s.heads * length * length
    kept = 2 * t * inter * d + 16 * t  # fc1 and gelu outputs; LayerNorm means and rstds (fp32, upper bound)
    probs = scores * (4 + (d if d < 4 else 0))  # fp32 softmax output, and its copy in the weights' dtype
    lse = b * s.heads * length * 4
    if s.kind == "pythia":
        kept += 6 * th + (th + probs if w.attn == "eager" else 4 * th + lse)
        if w.attn == "sdpa":
            kept += t * length * d  # torch's float copy of the boolean block mask, saved per layer
    else:  # flex's output goes through one more copy on its way to the dense layer
        kept += 4 * th + (4 * th + probs if w.attn == "eager" else (5 if w.attn == "flex_attention" else 4) * th + lse)
    if w.lora:  # frozen linears keep no inputs; the adapter keeps its dropout output and mask (a noise tensor
        kept -= (3 if s.kind == "pythia" else 2) * th + t * inter * d  # on CPU, bool on CUDA) and its rank-8
        kept += 2 * t * h * 4 + 8 * t * 4  # activations, in fp32 where peft keeps the adapter in fp32
    return kept


def shared_bytes(s: Shape, w: Workload, d: int) -> tuple[int, int]:
    """(bytes, bytes still held in backward without checkpointing) of the masks and position tables built once
    per forward for every layer: a mask no operation saves is freed when the forward ends."""
    b, length = w.micro_batch, w.seq_len
    if s.kind == "bloom":
        if w.attn == "sdpa":
            bias = b * s.heads * length * length * d  # ALiBi + block mask as one additive bias, saved by sdpa
            return bias, bias
        return (b * length * length * d + b * s.heads * length * d if w.attn == "eager" else 0), 0
    rope = 2 * b * length * (s.hidden // s.heads) * d  # cos and sin, saved
    return rope + {"sdpa": b * length * length, "eager": b * length * length * d}.get(w.attn, 0), rope


@dataclass(frozen=True)
class Activations:
    """Activation-side bytes of one micro-step on one GPU: what is kept for backward, then the larger of the
    loss head's peak (at the end of the forward) and one layer's backward (after the loss head's is over)."""

    saved: int  # kept for backward at the end of the forward: layers, embeddings, final norm, ids
    shared: int  # masks / bias / rotary tables
    loss: int  # the loss head's peak: a chunk's logits, or its head and hidden gradients and their copies
    working: int  # one layer's backward working set (+ the recomputed layer under checkpointing)
    shared_in_backward: int = 0  # the part of ``shared`` still held in backward

    @property
    def total(self) -> int:
        return self.saved + max(self.shared + self.loss, self.shared_in_backward + self.working)


def loss_bytes(s: Shape, t: int, d: int, lora: bool) -> int:
    """Peak bytes of ``training/loss.py`` for ``t`` supervised tokens beside what the layers keep.

    A chunk of c tokens makes fp32 logits and logsumexp's fp32 temporary (8 cV), then returns the logits'
    gradient in the weights' dtype (cV d) for the head's gradient g.t() @ h (V h d). Over several chunks the
    head's gradient is accumulated (in fp32 while that is <= 1 GiB), and the previous chunk's logit gradient and
    head gradient are still referenced while the next chunk runs. Around it: the final hidden states, their
    supervised copy and grad_h (T h d each). Backward scales grad_h and the head's gradient into new tensors."""
    chunk = chunk_tokens(t, s.vocab)
    th, vh, cv = t * s.hidden * d, s.vocab * s.hidden, chunk * s.vocab
    head = 0 if lora else vh * d
    peak = max(8 * cv, cv * d + head)
    if chunk < t:  # several chunks
        acc = 0 if lora else vh * 4 if vh * 4 <= 2**30 else head
        earlier_head = head if acc != head or -(-t // chunk) > 2 else 0  # not the accumulator itself
        peak = acc + earlier_head + cv * d + max(8 * cv, head)
    return max(3 * th + peak, 2 * (th + head))


def backward_bytes(s: Shape, w: Workload, d: int, checkpointing: bool) -> int:
    """One layer's backward working set, calibrated on the CPU allocator's peak (benchmarks/bench_memory.py):
    the gradients of the MLP's intermediates (GPT-NeoX 2 TI + 3 Th; BLOOM's GeLU backward 4 TI + 4 Th), of the
    attention (eager: 5 bytes a score; fused kernels: fp32 q, k, v gradients); under checkpointing the
    recomputed layer, whose MLP outputs are freed before the attention's gradients are made."""
    t = w.micro_batch * w.seq_len
    th, ti = t * s.hidden * d, t * s.intermediate * d
    grads = 2 * ti + 3 * th if s.kind == "pythia" else 4 * ti + 4 * th
    scores = w.micro_batch * s.heads * w.seq_len**2
    grads += 5 * scores if w.attn == "eager" else 3 * t * s.hidden * 4
    if not checkpointing:
        return grads
    return layer_bytes(s, w, d) + grads - 2 * ti  # the MLP's outputs are freed before the attention's backward


def activations(s: Shape, w: Workload, d: int, checkpointing: bool) -> Activations:
    """Activation memory of one micro-step, with or without gradient checkpointing."""
    t = w.micro_batch * w.seq_len
    th = t * s.hidden * d
    ends = th + 8 * t + 24 * t + (th + 8 * t if s.kind == "bloom" else 0)  # final norm, ids; BLOOM's emb norm
    saved = ends + s.layers * (th if checkpointing else layer_bytes(s, w, d))
    shared, kept = shared_bytes(s, w, d)
    backward = backward_bytes(s, w, d, checkpointing)  # under checkpointing every layer's arguments are held
    return Activations(saved, shared, loss_bytes(s, t, d, w.lora), backward, shared if checkpointing else kept)


# ---- model states and DeepSpeed buffers ----


def count_params(cls, config) -> tuple[int, int]:
    """(total parameters with tied ones once, largest single module's own parameters) on the meta device."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # a tied head's placeholder
        model = cls(config)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def memory_needs(
    total: int, largest: int, facts, gpus_per_node: int, nodes: int, lora: bool = False
) -> tuple[int, int]:
    """(host bytes per node, device bytes per rank) for the model states, by DeepSpeed's own estimators.

    ZeRO-0 has no estimator: every state on every rank (ZeRO-2's formula on one GPU); ZeRO-1 is ZeRO-2's plus
    unpartitioned 16-bit gradients. With LoRA the frozen base needs only its weights (the adapter's states are
    negligible). Host needs assume this stage's loader (zero.Init, no full copy) and exclude activations.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    size = facts.dtype.itemsize
    if lora:
        dev = size * total // (gpus_per_node * nodes) + 4 * largest if facts.stage == 3 else size * total
        host = 4 * largest * gpus_per_node if facts.stage == 3 else size * total * gpus_per_node
        return host, dev
    if facts.stage == 3:
        host, dev, _ = estimate_zero3_model_states_mem_needs(
            total,
            largest,
            gpus_per_node,
            nodes,
            cpu_offload=facts.offload_optimizer,
            cpu_offload_params=facts.offload_params,
            zero_init=True,
        )
        if not facts.offload_optimizer:
            host = 4 * largest * gpus_per_node  # one gathered layer per rank while loading
        return host, dev
    parts = (gpus_per_node, nodes) if facts.stage >= 1 else (1, 1)
    host, dev = estimate_zero2_model_states_mem_needs(total, *parts, cpu_offload=facts.offload_optimizer)
    if facts.stage == 1:
        dev += 2 * total  # ZeRO-1 keeps whole 16-bit gradients
    if facts.dtype == torch.float32:
        dev = dev * 16 // 20  # no 16-bit copies: 4 params + 4 grads + 8 Adam per parameter
    if not facts.offload_optimizer:
        host = total * size * gpus_per_node  # each rank loads the whole model in the train dtype
    return host, dev


def deepspeed_buffers(ds: dict, d: int) -> tuple[int, str]:
    """(bytes, what) DeepSpeed holds beside activations during backward, with its defaults for omitted keys
    (deepspeed/runtime/zero/config.py): ZeRO-1/2's reduce bucket, doubled with overlap_comm (default off
    below ZeRO-3); ZeRO-3's reduce bucket plus the parameters prefetched ahead of the gathered module (which
    DeepSpeed's estimator already counts). The ZeRO-1/2 allgather bucket is used at the optimizer step, when the
    activations are gone, so it is not part of this peak."""
    zero = ds.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))
    if stage == 0:
        return 0, "none at ZeRO-0"
    reduce = int(float(zero.get("reduce_bucket_size", 5e8)))
    if not zero.get("contiguous_gradients", True) and stage < 3:
        reduce = 0
    if stage < 3:
        copies = 2 if zero.get("overlap_comm", False) else 1
        return copies * reduce * d, f"reduce bucket {reduce:.0e} x{copies}"
    prefetch = min(
        int(float(zero.get("stage3_prefetch_bucket_size", 5e7))),
        int(float(zero.get("stage3_max_live_parameters", 1e9))),
    )
    return (reduce + prefetch) * d, f"reduce bucket {reduce:.0e}, prefetch {prefetch:.0e}"


# ---- the plan ----


@dataclass(frozen=True)
class Plan:
    """One GPU's memory for a model, a DeepSpeed config and a workload on ``gpus_per_node`` x ``nodes`` GPUs.

    ``cuda`` adds the CUDA context and fragmentation allowance (off for the CPU accelerator)."""

    shape: Shape
    params: int
    largest: int
    facts: object  # training.preflight.DsFacts: stage, dtype, offload
    ds: dict
    work: Workload
    gpus_per_node: int = 1
    nodes: int = 1
    cuda: bool = True

    @property
    def dtype_bytes(self) -> int:
        return self.facts.dtype.itemsize

    @property
    def accumulation(self) -> int:
        return int(self.ds.get("gradient_accumulation_steps", 1))

    def states(self) -> tuple[int, int]:
        """(host bytes per node, device bytes per GPU) of the model states."""
        return memory_needs(self.params, self.largest, self.facts, self.gpus_per_node, self.nodes, self.work.lora)

    def activations(self, checkpointing: bool) -> Activations:
        return activations(self.shape, self.work, self.dtype_bytes, checkpointing)

    def buffers(self) -> tuple[int, str]:
        return deepspeed_buffers(self.ds, self.dtype_bytes)

    def allowance(self, tensors: int) -> int:
        return CUDA_CONTEXT + int(FRAGMENTATION * tensors) if self.cuda else 0

    def need(self, checkpointing: bool | None = None) -> int:
        """Device bytes per GPU at the peak (the configured checkpointing unless given)."""
        ck = self.work.gradient_checkpointing if checkpointing is None else checkpointing
        tensors = self.states()[1] + self.activations(ck).total + self.buffers()[0]
        return tensors + self.allowance(tensors)

    def but(self, **work) -> Plan:
        """The same plan with other workload settings (micro_batch, gradient_checkpointing, ...)."""
        return dataclasses.replace(self, work=self.work.model_copy(update=work))

    def verdict(self, capacity: int, host_capacity: int | None = None) -> tuple[bool, str]:
        """(fits, one line): the configured setting against ``capacity`` bytes per GPU (and per node on the
        host); when it does not fit, the settings that would, by name."""
        ck, need, host = self.work.gradient_checkpointing, self.need(), self.states()[0]
        per = "per GPU" if self.cuda else "per process"
        if host_capacity is not None and host > host_capacity:
            return False, (
                f"needs {host / GiB:.1f} GiB of host memory per node but has {host_capacity / GiB:.1f} GiB; "
                "add nodes or host memory, or use a DeepSpeed config without offload"
            )
        if need <= capacity:
            also = (
                "; gradient_checkpointing: false would fit too (faster)" if ck and self.need(False) <= capacity else ""
            )
            return True, f"fits: {need / GiB:.1f} of {capacity / GiB:.1f} GiB {per}{also}"
        fixes = ["gradient_checkpointing: true"] if not ck and self.need(True) <= capacity else []
        rows = self.work.micro_batch * self.accumulation
        for ck_try in dict.fromkeys([ck, True]):
            micro = self._largest_micro(capacity, ck_try)
            if micro:
                with_ck = " and gradient_checkpointing: true" if ck_try and not ck else ""
                fixes.append(f"micro_batch_size: {micro} with gradient_accumulation_steps: {rows // micro}{with_ck}")
                break
        return False, (
            f"does not fit: needs {need / GiB:.1f} GiB {per} but has {capacity / GiB:.1f} GiB; set "
            + ", or ".join(fixes or self._bigger_fixes(capacity))
        )

    def _largest_micro(self, capacity: int, checkpointing: bool) -> int | None:
        """The largest smaller micro-batch that divides micro x accumulation (same global batch) and fits."""
        rows = self.work.micro_batch * self.accumulation
        for micro in range(self.work.micro_batch - 1, 0, -1):
            if (
                rows % micro == 0
                and self.but(micro_batch=micro, gradient_checkpointing=checkpointing).need() <= capacity
            ):
                return micro
        return None

    def _bigger_fixes(self, capacity: int) -> list[str]:
        """When no micro-batch fits: optimizer offload, or how many nodes of this size would do."""
        smallest = self.but(micro_batch=1, gradient_checkpointing=True)
        at = "micro_batch_size: 1" + ("" if self.work.gradient_checkpointing else " and gradient_checkpointing: true")
        fixes = []
        if self.facts.stage == 3 and not self.facts.offload_optimizer:
            offload = dataclasses.replace(smallest, facts=dataclasses.replace(self.facts, offload_optimizer=True))
            if offload.need() <= capacity:
                config = (
                    "ds/zero3_offload_bf16.json"
                    if self.facts.dtype == torch.bfloat16
                    else "zero_optimization.offload_optimizer: {device: cpu}"
                )
                fixes.append(f"optimizer offload ({config}) with {at}")
        if self.facts.stage == 3:
            fits = (n for n in range(self.nodes + 1, 65) if dataclasses.replace(smallest, nodes=n).need() <= capacity)
            nodes = next(fits, 0)
            if nodes:
                fixes.append(f"more GPUs: {nodes} nodes of {self.gpus_per_node} with {at}")
        return fixes or ["a ZeRO-3 config (ds/zero3_bf16.json), more GPUs, LoRA (lora:) or a smaller model"]
