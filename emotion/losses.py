"""Training losses behind one `build_criterion`: class-weighted cross-entropy on hard labels or on soft targets."""
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


def build_criterion(weight: torch.Tensor | None, label_smoothing: float = 0.0,
                    soft: bool = False) -> Callable[[torch.Tensor, dict], torch.Tensor]:
    """loss(logits, batch): weighted CE on batch['labels'], or on batch['soft_labels'] when `soft`."""
    if soft:
        return lambda logits, batch: soft_cross_entropy(logits, batch["soft_labels"], weight, label_smoothing)
    return lambda logits, batch: F.cross_entropy(logits, batch["labels"], weight=weight, label_smoothing=label_smoothing)
