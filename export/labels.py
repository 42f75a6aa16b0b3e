"""Labels as a loss sees them: the classes each label allows, and the likelihood of a label that allows several.

A coarse label (``pneumonia``: bacterial or viral, not known which) is supervised by the summed probability of the
classes it allows, in training, in the temperature fit and in every figure; a one-class label is plain
cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..runtime.evaluation.dataset import Sample

__all__ = ["allowed_mask", "partial_nll"]


def allowed_mask(samples: Sequence[Sample], class_names: Sequence[str]) -> np.ndarray:
    """N x classes booleans: which classes each sample's label allows (one for a class, several for a coarse one)."""
    mask = np.zeros((len(samples), len(class_names)), bool)
    for i, sample in enumerate(samples):
        mask[i, [class_names.index(c) for c in sample.classes]] = True
    return mask


def partial_nll(logits: torch.Tensor, allowed: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Per image, -log of the probability the label allows (the sum over its classes), smoothed towards the mean
    of -log p over every class. For a one-class label this is label-smoothed cross-entropy exactly."""
    log_p = logits.log_softmax(dim=1)
    allowed_log_p = torch.logsumexp(log_p.masked_fill(~allowed, float("-inf")), dim=1)
    return -(1 - smoothing) * allowed_log_p - smoothing * log_p.mean(dim=1)
