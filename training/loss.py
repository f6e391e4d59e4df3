"""Next-token loss straight from the hidden states, never the full-vocabulary fp32 logits.

At BLOOM's 250,880 vocab a batch of 4 x 2048 has 8 GB of fp32 logits, and autograd keeps them and their
log-softmax for backward. ``LinearCrossEntropy`` (Liger-Kernel's fused linear cross-entropy, in plain torch)
makes the logits of a chunk of tokens, turns them into the chunk's loss and its gradients for the hidden states
and the head weight, frees them, and goes on; backward only scales the stored gradients. Tokens with loss weight
0 (padding, prompts at prompt_loss_weight 0) never get logits at all. Chunks are sized in bytes, so a small
vocabulary or a short batch is one chunk and the CPU path does no extra work.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK_BYTES = 512 * 2**20  # fp32 logits of one chunk


def chunk_tokens(tokens: int, vocab: int) -> int:
    """How many tokens' fp32 logits fit in ``CHUNK_BYTES`` (at least one, at most all)."""
    return max(1, min(tokens, CHUNK_BYTES // (4 * vocab)))


def _chunk(hidden, weight, targets, w, want_grads: bool, per_token: bool = False):
    """Summed (or, ``per_token``, each token's) weighted CE of one chunk and, if asked, d(loss)/d(logits) in the
    weight's dtype."""
    logits = (hidden @ weight.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    losses = (lse - logits.gather(1, targets[:, None]).squeeze(1)) * w
    loss = losses if per_token else losses.sum()
    if not want_grads:
        return loss, None
    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
    probs[torch.arange(len(targets), device=probs.device), targets] -= 1
    return loss, probs.mul_(w[:, None]).to(weight.dtype)


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(hidden_i @ weight.T, target_i), gradients computed chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, w, chunk: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = hidden.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None
        # several chunks accumulate the head's gradient in fp32 when that copy is small (<= 1 GiB), else in the
        # weight's dtype (BLOOM-176B's fp32 copy would be 14 GB a rank)
        acc_dtype = torch.float32 if weight.numel() * 4 <= 2**30 else weight.dtype
        for lo in range(0, n, chunk):
            h = hidden[lo : lo + chunk]
            part, g = _chunk(h, weight, targets[lo : lo + chunk], w[lo : lo + chunk], need_h or need_w)
            loss += part
            if need_h:
                grad_h[lo : lo + chunk] = g @ weight
            if need_w:
                gw = g.t() @ h
                if chunk >= n:  # one chunk: the same single matmul autograd would do
                    grad_w = gw
                else:
                    grad_w = gw.to(acc_dtype) if grad_w is None else grad_w.add_(gw.to(acc_dtype))
        if need_w and grad_w is None:  # no supervised token: still a gradient, so every rank reduces the same
            grad_w = torch.zeros_like(weight)
        ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        scale = lambda g: None if g is None else g * grad_loss.to(g.dtype)  # noqa: E731
        return scale(grad_h), scale(grad_w), None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor, per_token: bool = False
) -> torch.Tensor:
    """Summed weighted next-token CE of (B, L, H) hidden states under a (V, H) head; ``weights[:, i]`` weighs
    predicting token i+1 (the last column never counts). Only tokens with a nonzero weight are computed.
    ``per_token`` (evaluation, no gradients): the (B, L) weighted losses instead of their sum."""
    w = weights.clone()
    w[:, -1] = 0
    flat_w = w.reshape(-1)
    keep = flat_w.nonzero().squeeze(1)
    targets = input_ids.roll(-1, dims=1).reshape(-1)[keep]
    h = hidden.reshape(-1, hidden.shape[-1])[keep]
    w_keep = flat_w[keep].float()
    chunk = chunk_tokens(len(keep), weight.shape[0])
    if per_token:
        out = torch.zeros(flat_w.shape, dtype=torch.float32, device=h.device)
        with torch.no_grad():
            for lo in range(0, len(keep), chunk):
                out[keep[lo : lo + chunk]] = _chunk(
                    h[lo : lo + chunk], weight, targets[lo : lo + chunk], w_keep[lo : lo + chunk], False, per_token=True
                )[0]
        return out.reshape(weights.shape)
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):  # eval: the loss alone
        return sum(
            (
                _chunk(h[lo : lo + chunk], weight, targets[lo : lo + chunk], w_keep[lo : lo + chunk], False)[0]
                for lo in range(0, len(keep), chunk)
            ),
            torch.zeros((), device=h.device),
        )
    return LinearCrossEntropy.apply(h, weight, targets, w_keep, chunk)


class LinearCEHead(nn.Linear):
    """An output head that returns the summed weighted loss when given targets, and logits otherwise.

    The loss is computed inside the head's own forward so that ZeRO-3 gathers its weight once for the
    whole batch (and again for backward) exactly as for a plain head call."""

    def forward(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        per_token: bool = False,
        preference=None,
    ):
        if targets is None:
            return super().forward(hidden)
        if self.bias is not None:
            raise ValueError("LinearCEHead: heads with a bias are not supported")
        if preference is not None:  # objective dpo: training.preference.PairLoss, with the gathered weight
            return preference(hidden, self.weight, targets, weights)
        return linear_cross_entropy(hidden, self.weight, targets, weights, per_token)


def as_loss_head(head: nn.Linear) -> LinearCEHead:
    """Make an existing ``nn.Linear`` head a ``LinearCEHead`` in place (same parameters, same state dict)."""
    if type(head) is not nn.Linear and not isinstance(head, LinearCEHead):
        raise TypeError(f"output head is a {type(head).__name__}, expected nn.Linear")
    head.__class__ = LinearCEHead
    return head
