"""Training settings, importable without torch so that the CLI can show defaults in `--help` cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.model.classes import DEFAULT_CLASSES

__all__ = ["ARCH_NAMES", "AUGMENTATION_NAMES", "TrainConfig"]

ARCH_NAMES = ("efficientnet_lite0", "resnet18", "resnet50", "simple_cnn")
"""Names of `cxr_edge.export.zoo.ARCHITECTURES`, listed here for the CLI (a test keeps both equal)."""
AUGMENTATION_NAMES = ("standard", "strong")
"""Names of `cxr_edge.export.train.AUGMENTATIONS`, listed here for the CLI (a test keeps both equal)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored whole in the checkpoint.

    Args:
        arch: architecture name (see ``cxr_edge.export.zoo.ARCHITECTURES``).
        epochs: upper bound on epochs; early stopping usually ends sooner.
        batch_size: images per optimisation step.
        lr: peak learning rate of AdamW, reached after the warm-up.
        weight_decay: AdamW decoupled weight decay (not applied to biases and norm layers).
        image_size: square input size written into the contract.
        seed: randomness of training (head initialisation, augmentation, batch order, dropout).
        init_seed: seed of the new head's initialisation (None: `seed`). Runs that a soup averages
            (`cxr_edge.export.soup`) share it and differ by `seed` only, so that their heads start alike.
        split_seed: which images are held out for validation; kept apart from `seed` so that runs with
            different seeds are judged on the same images.
        val_fraction: share of each class held out for validation.
        warmup_epochs: linear warm-up length.
        patience: epochs without a lower validation loss before stopping.
        label_smoothing: cross-entropy label smoothing.
        ema_decay: per-step decay of the exponential moving average of the weights that is validated and kept
            (0 keeps the raw weights). Averaging over a few epochs removes most epoch-to-epoch swing.
        freeze_early: keep the architecture's generic early layers frozen.
        thaw_epoch: from this epoch on, train the frozen early layers too, at a tenth of the rate (0: never).
        augmentation: ``standard`` or ``strong`` (`cxr_edge.export.train.AUGMENTATIONS`).
        intensity: per-image intensity standardisation written into the contract (``none`` or ``equalize``).
        balanced: draw batches so that every label, and within a label every source, weighs the same.
        label_weights: labels (a class or a coarse label) that weigh more or less than 1 in balanced sampling.
        classes: the classes the model outputs, in order; folders may name them, their aliases or coarse labels.
        exclude_sources: sources left out entirely (leave-one-source-out studies: how would an unseen hospital
            of that kind fare?).
        weights: optional user-supplied starting weights.
        pretrained: allow packaged ImageNet weights.
        threads: torch intra-op threads (default: every core).
    """

    arch: str = "efficientnet_lite0"
    epochs: int = 25
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int = 224
    seed: int = 0
    init_seed: int | None = None
    split_seed: int = 0
    val_fraction: float = 0.2
    warmup_epochs: int = 2
    patience: int = 6
    label_smoothing: float = 0.1
    ema_decay: float = 0.97
    freeze_early: bool = True
    thaw_epoch: int = 0
    augmentation: str = "standard"
    intensity: str = "equalize"
    balanced: bool = True
    label_weights: dict[str, float] = field(default_factory=dict)
    classes: tuple[str, ...] = DEFAULT_CLASSES
    exclude_sources: tuple[str, ...] = ()
    weights: str | None = None
    pretrained: bool = True
    threads: int | None = None
