"""How far two runs of one INT8 model may differ, derived from the model itself.

The integer products of an INT8 model are exact, but between layers the runtime requantises: a float value is
divided by the next layer's scale and rounded. Where the float work around it is split differently (another batch
size, another thread count, another process or CPU kernel), a value that lies within rounding error of a half step
can round to the neighbouring step. That is not a bug, and the same file can give probabilities a few 1e-5 apart.

The bound here is what such flips in the last quantised feature map can do to a probability. The head after it is
float: a global mean over h x w positions, a linear layer W, a division by the temperature T and a softmax, whose
output moves by at most a quarter of the largest change in a difference of two logits. One element flipped by one
step s moves pooled feature c by s / (h w), so logit difference k - j by |W_kc - W_jc| s / (h w T), and a
probability by at most a quarter of that. `FLIPS` such flips are allowed: far more than observed (a run on another
machine differed by 1.4e-4, about ten), far fewer than a real change of the model or its input makes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["FLIPS", "int8_rerun_bound", "assert_same_results"]

FLIPS = 100
"""Requantisation flips in the last feature map tolerated between two runs (0.16 % of a 7 x 7 x 1280 map)."""


def int8_rerun_bound(model: Path) -> float:
    """The largest change of a probability that `FLIPS` one-step flips in the last quantised map can cause.

    Walks back from ``probabilities``: Softmax <- Div (temperature) <- Gemm (W) <- ReduceMean <- DequantizeLinear
    (the scale s of the last quantised tensor). A model without that head is not an INT8 model of this project.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    made_by = {output: node for node in graph.node for output in node.output}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    chain, name = {}, "probabilities"
    for expected in ("Softmax", "Div", "Gemm", "ReduceMean", "DequantizeLinear"):
        node = made_by[name]
        assert node.op_type == expected, f"{model}: expected {expected} before {name}, found {node.op_type}"
        chain[expected] = node
        name = node.input[0]
    temperature = float(constants[chain["Div"].input[1]])
    weight = constants[chain["Gemm"].input[1]]
    scale = float(constants[chain["DequantizeLinear"].input[1]])
    shapes = {v.name: v for v in (*graph.value_info, *graph.output)}
    positions = _positions(shapes.get(chain["ReduceMean"].input[0]))
    spread = np.abs(weight[:, None, :] - weight[None, :, :]).max()
    return float(FLIPS * 0.25 * spread * scale / (positions * temperature))


def _positions(value_info: object) -> int:
    """h x w of the pooled map, 49 (7 x 7, EfficientNet-Lite0 at 224 px) where the graph does not say."""
    try:
        dims = value_info.type.tensor_type.shape.dim  # type: ignore[attr-defined]
        return int(dims[2].dim_value * dims[3].dim_value) or 49
    except (AttributeError, IndexError):
        return 49


def assert_same_results(these: list, those: list, bound: float) -> None:
    """Two runs' predictions agree: status and gate decision, probabilities within `bound`, and the label wherever
    the top two classes are further apart than twice the bound (closer than that, either may legitimately win)."""
    assert len(these) == len(those)
    for a, b in zip(these, those, strict=True):
        assert a.error == b.error and a.status == b.status, (a.path, a.status, b.status)
        if a.probabilities is None:
            continue
        worst = max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities)
        assert worst <= bound, f"{a.path}: probabilities {worst:.2e} apart, bound {bound:.2e}"
        first, second = sorted(a.probabilities.values())[-2:][::-1]
        if first - second > 2 * bound:
            assert a.label == b.label, (a.path, a.label, b.label)
