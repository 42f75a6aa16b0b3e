"""PyTorch eager FP32 inference of a checkpoint: the reference row of `cxr-edge bench` (how the seed project ran).

Lives on the build side so that the edge runtime never imports torch; the bench loads it only when torch is
installed and a checkpoint is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..runtime.errors import CxrEdgeError
from ..runtime.model.contract import Contract
from .to_onnx import model_from_checkpoint
from .train import load_checkpoint

__all__ = ["torch_runner"]


def torch_runner(checkpoint: str | Path, contract: Contract, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function from preprocessed batches to probabilities, running the checkpoint in PyTorch eager mode.

    Raises:
        CxrEdgeError: the checkpoint's contract differs from the models it is compared with.
    """
    loaded = load_checkpoint(checkpoint)
    if loaded["contract"] != contract:
        raise CxrEdgeError(f"{checkpoint} has a different contract from the models; they are not the same model")
    torch.set_num_threads(threads)
    model = model_from_checkpoint(loaded)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).softmax(dim=1).numpy()

    return run
