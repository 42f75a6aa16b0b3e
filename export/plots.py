"""Training figures: learning curves and the confusion matrix, as PNG files a person can open."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_curves", "plot_confusion_matrix"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: the training machine has no screen
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict], path: str | Path, best_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch, train and validation, with the selected epoch marked."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    validated = all("val_loss" in h for h in history)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    if validated:
        ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], label="train accuracy")
    if validated:
        ax_acc.plot(epochs, [h["val_accuracy"] for h in history], label="validation accuracy")
        ax_acc.plot(epochs, [h["val_macro_f1"] for h in history], label="validation macro-F1", linestyle="--")
    ax_acc.set(xlabel="epoch", ylabel="score", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"selected (epoch {best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(matrix: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str],
                          path: str | Path, title: str = "Validation confusion matrix") -> None:
    """Counts with true classes in rows, predictions in columns; each cell also shows its share of the row."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), constrained_layout=True)
    image = ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of true class")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in ticks:
        for j in ticks:
            share = matrix[i, j] / rows[i, 0]
            ax.text(j, i, f"{matrix[i, j]}\n{share:.0%}", ha="center", va="center",
                    color="white" if share > 0.5 else "black")
    fig.savefig(path, dpi=110)
    plt.close(fig)
