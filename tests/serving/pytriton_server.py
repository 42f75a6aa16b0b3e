"""A real Triton server (PyTriton's tritonserver with its Python backend) serving an ONNX model through ONNX
Runtime, for the remote-engine tests. Runs in its own environment (PyTriton pins numpy below 2):

    python pytriton_server.py MODEL.onnx HTTP_PORT [--name cxr-edge] [--max-batch 16]

Prints READY when the model is loaded; serves until killed. Not imported by the test suite: started by it.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

ACCESS_TOKEN = "cxr-edge-tests"
"""PyTriton guards statistics and the repository API with a token; the tests read statistics with this one."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("port", type=int)
    parser.add_argument("--name", default="cxr-edge")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--access-token", default=ACCESS_TOKEN, help="Header triton-access-token for statistics.")
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {"image": image.astype(np.float32)}), strict=True))

    def dims(shape: list) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in shape[1:]) or (1,)

    config = TritonConfig(http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
                          grpc_port=args.port + 1, metrics_port=args.port + 2)
    with Triton(config=config, security_config=TritonSecurityConfig(access_token=args.access_token)) as triton:
        triton.bind(model_name=args.name, infer_func=infer,
                    inputs=[Tensor(name="image", dtype=np.float32, shape=dims(session.get_inputs()[0].shape))],
                    outputs=[Tensor(name=o.name, dtype=np.float32, shape=dims(o.shape)) for o in session.get_outputs()],
                    config=ModelConfig(max_batch_size=args.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=20000)))
        print("READY", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
