"""Rewrites of an exported graph that leave its arithmetic as it is, so that onnxruntime's dynamic quantization sees
every weight as one plain initializer whatever its version.

onnxruntime before 1.32 makes T2T-ViT models that do not load or run (seen with 1.22, 1.24, 1.30 and 1.31):
- `quant_pre_process` leaves a MatMul of two initializers (a weight computed from weights: the T2T layers'
  folded LayerNorm) unfolded, and `quantize_dynamic` quantizes its 1-D operand per channel, to a scale the
  output cannot broadcast with ("Incompatible dimensions" at load);
- a Gemm with `transB=1` whose weight two nodes share (the Performer's random features, for its queries and its
  keys) becomes a quantized MatMul on the untransposed weight ("dimension mismatch" at run time); 1.32 makes a
  transposed copy, as `plain_weights` does.
"""

from typing import Dict

import numpy as np
import onnx
from onnx import numpy_helper


def plain_weights(model: onnx.ModelProto) -> int:
    """In place: each MatMul of two initializers becomes its product, an initializer; each Gemm with `transB=1` on an
    initializer reads a transposed copy (one per weight, shared by its nodes) with `transB=0`. Initializers left
    unused are dropped. Returns how many nodes were rewritten."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    transposed: Dict[str, onnx.TensorProto] = {}
    nodes, rewritten = [], 0
    for node in graph.node:
        if node.op_type == "MatMul" and all(name in weights for name in node.input):
            a, b = (numpy_helper.to_array(weights[name]) for name in node.input)
            weights[node.output[0]] = numpy_helper.from_array(np.matmul(a, b).astype(a.dtype), node.output[0])
            graph.initializer.append(weights[node.output[0]])
            rewritten += 1
            continue
        trans_b = next((a for a in node.attribute if a.name == "transB"), None)
        if node.op_type == "Gemm" and trans_b is not None and trans_b.i == 1 and node.input[1] in weights:
            name = node.input[1]
            if name not in transposed:
                array = numpy_helper.to_array(weights[name]).T.copy()
                transposed[name] = numpy_helper.from_array(array, f"{name}_transposed")
                graph.initializer.append(transposed[name])
            node.input[1] = transposed[name].name
            trans_b.i = 0
            rewritten += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten
