"""Shape arithmetic evaluated at build time: ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chains become
symbols ("dim i of tensor t"), so Flatten-style reshapes keep a dynamic batch and dynamic spatial axes, and a
re-export through ``torch.onnx.export`` stays dynamic.
"""
from __future__ import annotations

from typing import Any

import torch

from pipeline.errors import InputError
from pipeline.models.onnx.builder import GraphBuilder, Sym

__all__ = ["SymbolicShapes"]


class SymbolicShapes(GraphBuilder):
    """Symbolic evaluation of the shape ops of a graph (mixed into the converter)."""

    def sym_or_const_ints(self, name: str) -> Sym | None:
        if name in self.syms:
            return self.syms[name]
        t = self.consts.get(name)
        if t is not None and not t.is_floating_point() and t.dim() <= 1:
            return Sym(tuple(int(v) for v in t.reshape(-1).tolist()), scalar=t.dim() == 0)
        return None

    def set_sym(self, name: str, s: Sym) -> None:
        if all(isinstance(e, int) for e in s.entries):
            t = torch.tensor(list(s.entries), dtype=torch.int64)
            self.consts[name] = t.reshape(()) if s.scalar else t
        else:
            self.syms[name] = s

    def convert_symbolic(self, n: Any) -> bool:
        """Evaluate shape arithmetic on (tensor, dim) symbols; True when the node was fully handled."""
        op, ins, out = n.op_type, list(n.input), n.output[0] if n.output else ""
        if op == "Shape" and ins[0] in self.runtime and ins[0] in self.ranks:
            rank = self.ranks[ins[0]]
            start, end = self.attr(n, "start", 0), self.attr(n, "end", rank)
            dims = list(range(rank))[slice(start, end)]
            self.set_sym(out, Sym(tuple((ins[0], d) for d in dims)))
            return True
        if not any(i in self.syms for i in ins):
            return False
        if op in ("Identity", "Cast") and ins[0] in self.syms:
            if op == "Cast" and self.attr(n, "to") not in (6, 7):
                return False
            self.syms[out] = self.syms[ins[0]]
            return True
        if op == "Gather" and ins[0] in self.syms and self.is_const(ins[1]):
            s, idx = self.syms[ins[0]], self.consts[ins[1]]
            if s.scalar or idx.dim() > 1 or self.attr(n, "axis", 0) not in (0, -1):
                return False
            picks = [s.entries[int(i)] for i in idx.reshape(-1).tolist()]
            self.set_sym(out, Sym(tuple(picks), scalar=idx.dim() == 0))
            return True
        if op == "Unsqueeze" and ins[0] in self.syms and self.syms[ins[0]].scalar:
            self.set_sym(out, Sym(self.syms[ins[0]].entries))
            return True
        if op == "Squeeze" and ins[0] in self.syms and len(self.syms[ins[0]].entries) == 1:
            self.set_sym(out, Sym(self.syms[ins[0]].entries, scalar=True))
            return True
        if op == "Concat" and self.attr(n, "axis") in (0, -1):
            parts = [self.sym_or_const_ints(i) for i in ins if i]
            if any(p is None or p.scalar for p in parts):
                return False
            self.set_sym(out, Sym(tuple(e for p in parts for e in p.entries)))  # type: ignore[union-attr]
            return True
        if op == "Slice" and ins[0] in self.syms and not self.syms[ins[0]].scalar:
            try:
                a = self.slice_attrs(n)
            except InputError:
                return False
            if a["axes"] not in ([0], [-1]):
                return False
            entries = self.syms[ins[0]].entries[slice(a["starts"][0], a["ends"][0], a["steps"][0])]
            self.set_sym(out, Sym(tuple(entries)))
            return True
        if op == "Reshape" and ins[1] in self.syms and ins[0] not in self.syms:
            s = self.syms[ins[1]]
            allowzero = bool(self.attr(n, "allowzero", 0))
            if list(s.entries) == [(ins[0], 0), -1]:
                # The x.view(x.size(0), -1) idiom: export it back as a single Flatten.
                self.emit(n, [ins[0]], {"flatten1": True})
                return True
            inputs, entries = self.ref_inputs(s.entries, first=[ins[0]])
            self.emit(n, inputs, {"shape": entries, "allowzero": allowzero})
            return True
        return False
