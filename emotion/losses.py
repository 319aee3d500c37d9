"""Training losses behind one `build_criterion`: class-weighted cross-entropy on hard labels or on soft targets, with
optional logit adjustment."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against target distributions, class-weighted.

    Per sample: -sum_c w_c q_c log p_c, summed over the batch and divided by sum_i sum_c w_c q_ic, so one-hot targets
    give exactly `F.cross_entropy(logits, labels, weight=w, label_smoothing=eps)`.
    """
    targets = targets.to(logits.dtype)
    weighted = targets if weight is None else targets * weight
    smoothed = targets * (1 - label_smoothing) + label_smoothing / targets.shape[1]
    per_class = smoothed if weight is None else smoothed * weight
    log_probs = F.log_softmax(logits, dim=1)
    return -(per_class * log_probs).sum() / weighted.sum().clamp_min(torch.finfo(logits.dtype).tiny)


def logit_offsets(counts, tau: float) -> torch.Tensor | None:
    """tau x log(class share of the training counts), the logit adjustment of Menon et al. (2021); None when tau is 0.

    Added to the logits in the loss only, it leaves the model's own scores estimating a class-balanced posterior, so
    a face unlike the training set is not pulled to its majority class. Absent classes get the smallest present share.
    """
    if tau == 0:
        return None
    counts = torch.as_tensor(counts, dtype=torch.float64)
    share = counts / counts.sum()
    share = torch.where(share > 0, share, share[share > 0].min())
    return (tau * share.log()).to(torch.float32)


def build_criterion(weight: torch.Tensor | None, label_smoothing: float = 0.0, soft: bool = False,
                    offsets: torch.Tensor | None = None) -> Callable[[torch.Tensor, dict], torch.Tensor]:
    """loss(logits, batch): weighted CE on batch['labels'], or on batch['soft_labels'] when `soft`; computed in fp32
    from any logits dtype, with `offsets` (logit adjustment) added first."""
    def adjusted(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return logits if offsets is None else logits + offsets.to(logits.device)

    if soft:
        return lambda logits, batch: soft_cross_entropy(adjusted(logits), batch["soft_labels"], weight, label_smoothing)
    return lambda logits, batch: F.cross_entropy(adjusted(logits), batch["labels"], weight=weight, label_smoothing=label_smoothing)
