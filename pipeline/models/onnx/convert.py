"""ONNX -> torch: :func:`onnx_to_torch` imports a pretrained ONNX CNN as an :class:`OnnxGraphModule` of standard
torch layers.

Why our own converter: onnx2torch imports torchvision, which does not import here, and the rest of the pipeline needs
*real* ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm2d`` modules that the factorizer can find with ``named_modules()``
and replace by qualified name. The file is checked and prepared first (:func:`~.prepare.load_for_import`:
Constant-node weights folded into initializers, the opset brought into range), constant sub-graphs are folded at
build time, and the same file always yields the same module names, structure and state-dict keys
(``pipeline/checkpoint.py`` rebuilds models by re-importing the file and loading a state dict into it).
"""
from __future__ import annotations

import os
from typing import Any

from pipeline.errors import InputError
from pipeline.logs import ROOT, get_logger
from pipeline.models.onnx.builder import MULTI_OUTPUT
from pipeline.models.onnx.graph_module import OnnxGraphModule
from pipeline.models.onnx.layer_ops import LayerOps
from pipeline.models.onnx.op_attrs import InterpretedOps
from pipeline.models.onnx.ops import check_supported
from pipeline.models.onnx.prepare import load_for_import
from pipeline.models.onnx.symbolic import SymbolicShapes
from pipeline.models.onnx.validate import check_finite_weights

__all__ = ["onnx_to_torch"]

log = get_logger(ROOT)  # the runner's logger: stderr and run.log


class Converter(SymbolicShapes, LayerOps, InterpretedOps):
    """The graph walk: symbolic shape ops first, then the op's handler, else a generic interpreted node."""

    def run(self) -> OnnxGraphModule:
        """Convert every node; the finished module."""
        init_names = {t.name for t in self.g.initializer}
        inputs = [i for i in self.g.input if i.name not in init_names]
        if len(inputs) != 1:
            raise InputError(f"ONNX model {self.path!r} has {len(inputs)} graph inputs "
                             f"({', '.join(i.name for i in inputs)}); an image classifier with exactly one input "
                             f"is expected")
        inp = inputs[0]
        elem = inp.type.tensor_type.elem_type
        if elem != self.onnx.TensorProto.FLOAT:
            raise InputError(f"ONNX model {self.path!r}: input {inp.name!r} has element type "
                             f"{self.onnx.TensorProto.DataType.Name(elem)}; a float32 model is expected")
        self.runtime.add(inp.name)
        for t in self.g.initializer:
            self.consts[t.name] = self.tensor(t)
        for n in self.g.node:
            self.convert_node(n)
        # Graph outputs that are constants or symbols still have to come out of forward().
        for o in self.g.output:
            if o.name in self.syms:
                self.materialize(o.name)
        needed_consts = {i for nd in self.nodes for i in nd.inputs if i in self.consts}
        needed_consts |= {o.name for o in self.g.output if o.name in self.consts}
        consts = {}
        for name in sorted(needed_consts, key=self.first_use):
            consts[name] = (self.unique_name("const_" + name, "const"), self.consts[name])
        nodes = self.with_release([o.name for o in self.g.output])
        module = OnnxGraphModule(inp.name, [o.name for o in self.g.output], nodes, self.layers, consts, self.path)
        module.fp16_weights = tuple(self.fp16_weights)
        return module

    def convert_node(self, n: Any) -> None:
        """Fold, evaluate symbolically or emit one ONNX node through its ``op_<OpType>`` handler."""
        op = n.op_type
        if op == "Constant":
            self.consts[n.output[0]] = self.constant_value(n)
            return
        if self.convert_symbolic(n):
            return
        # Anything still symbolic that reaches a non-shape op is turned into a run-time tensor.
        for i in n.input:
            if i in self.syms:
                self.materialize(i)
        for extra in n.output[1:]:
            if extra and self.consumers.get(extra) and op not in MULTI_OUTPUT:
                raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} output {extra!r} is used, but "
                                 f"only the first output of {op} is supported (inference graphs do not use it)")
        handler = getattr(self, f"op_{op}", None)
        if handler is not None:
            handler(n)
            return
        self.generic(n, {})


def onnx_to_torch(path: str | os.PathLike[str]) -> OnnxGraphModule:
    """Import an ONNX CNN as an :class:`OnnxGraphModule` of standard torch layers.

    Conv, ConvTranspose, BatchNormalization, Gemm, MatMul with a constant 2-D weight and LayerNormalization become
    ``nn`` layers (trainable ``nn.Parameter`` weights); every other supported op
    (:data:`~pipeline.models.onnx.ops.SUPPORTED_OPS`) is interpreted with torch ops. Half-precision weights become
    float32 parameters (logged, and listed in the module's ``fp16_weights``); an initializer used by several
    nodes gives each of their layers its own copy.

    Args:
        path: the ``.onnx`` file (checked, Constant-node weights folded, opset converted into 9-21).

    Returns:
        The module, in eval mode (BatchNorm uses the file's running statistics until someone calls ``train()``).
        Importing the same file twice gives identical module names, structure and state-dict keys.

    Raises:
        InputError: invalid file (see :func:`~pipeline.models.onnx.validate.check_onnx_file`), an opset that cannot
            be converted, unsupported operators (all of them listed), or an op configuration the importer cannot
            express.
        NumericalError: an initializer or constant holds NaN/Inf (the tensor is named).
    """
    spath = str(path)
    model = load_for_import(path)
    check_supported(model, spath)
    check_finite_weights(model, spath)
    module = Converter(model, spath).run()
    if module.fp16_weights:
        log.info("ONNX model %s: %d half-precision weight tensor(s) imported as float32 (e.g. %s)", spath,
                 len(module.fp16_weights), ", ".join(module.fp16_weights[:3]))
    return module.eval()
