"""Build a BERT-like ONNX encoder over protobuf's 2 GB limit, its weights streamed to one external data file.

    python bench/make_big_transformer.py --out /tmp/bigbench/big.onnx [--layers 48] [--hidden 1024] [--heads 16]
        [--ffn 4096] [--vocab 8192] [--seq 128] [--seed 0] [--calib N]

The graph is written with ``onnx.helper`` (no torch), opset 17, batch fixed at 1 as some exports are (the
Reshape shape constants hard-code it: ``[1, SEQ, HEADS, HEAD_DIM]`` and ``[1, SEQ, HIDDEN]``):

    input_ids [1, S] -> Gather(word embedding) + Gather(position embedding, constant range)
    attention_mask [1, S] -> Cast float -> (1 - m) * -10000 -> Unsqueeze -> [1, 1, 1, S]
    per layer (pre-LN): LayerNormalization, Q/K/V MatMul+Add, Reshape+Transpose to heads, MatMul,
        Div by sqrt(head_dim), Add mask, Softmax, MatMul, Transpose, Reshape, MatMul+Add, residual Add,
        LayerNormalization, MatMul+Add (hidden -> ffn), GELU as x * 0.5 * (1 + Erf(x / sqrt 2)),
        MatMul+Add (ffn -> hidden), residual Add
    final LayerNormalization -> last_hidden_state [1, S, hidden]

Weights are seeded (``np.random.default_rng(seed)``, normal * 0.02; LayerNorm gamma 1, beta 0), generated one
tensor at a time and appended to ``<out>.data`` at offsets aligned to 4096; each TensorProto gets its
``external_data`` (location, offset, length) by hand, so the weights are never all in memory and the .onnx
stays small. Tensors under 1 KiB (shape constants, scalars) stay inline. The defaults give about 613 M
parameters, 2.45 GB of float32 weights.

``--calib N`` also writes ``<out stem>.calib.npz`` in the layout ``convert --calib-data`` reads: one array per
input, samples on axis 0, i.e. ``input_ids`` and ``attention_mask`` int64 ``[N, SEQ]`` (each sample is one
batch-1 feed), with random padding lengths (mask 0 and token 0 past each sample's length).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ALIGN = 4096
INLINE_LIMIT = 1024
"""Tensors of fewer bytes stay inside the .onnx."""


@dataclass
class _Writer:
    """Appends tensors to the external data file, one at a time, and makes their TensorProtos."""

    data: BinaryIO
    location: str
    initializers: list[TensorProto] = field(default_factory=list)
    params: int = 0
    weight_bytes: int = 0

    def external(self, name: str, array: np.ndarray) -> str:
        """Write ``array`` at the next aligned offset; its TensorProto points there."""
        pad = -self.data.tell() % ALIGN
        if pad:
            self.data.write(b"\0" * pad)
        offset = self.data.tell()
        raw = np.ascontiguousarray(array).tobytes()
        self.data.write(raw)
        tensor = TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return self._add(tensor, array)

    def inline(self, name: str, array: np.ndarray) -> str:
        return self._add(numpy_helper.from_array(array, name), array)

    def weight(self, name: str, array: np.ndarray) -> str:
        """A learned parameter: counted, and external unless tiny."""
        self.params += array.size
        self.weight_bytes += array.nbytes
        return self.external(name, array) if array.nbytes >= INLINE_LIMIT else self.inline(name, array)

    def _add(self, tensor: TensorProto, array: np.ndarray) -> str:
        self.initializers.append(tensor)
        return tensor.name


@dataclass(frozen=True)
class Sizes:
    layers: int = 48
    hidden: int = 1024
    heads: int = 16
    ffn: int = 4096
    vocab: int = 8192
    seq: int = 128

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params(self) -> int:
        """Learned parameters: embeddings, per layer 4 attention and 2 FFN linears with biases and 2 LayerNorms."""
        h, f = self.hidden, self.ffn
        per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
        return (self.vocab + self.seq) * h + self.layers * per_layer + 2 * h


class _Graph:
    def __init__(self, writer: _Writer, rng: np.random.Generator) -> None:
        self.w, self.rng, self.nodes = writer, rng, []

    def normal(self, name: str, *shape: int) -> str:
        array = self.rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(0.02)
        return self.w.weight(name, array)

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{output}/{op_type}", **attrs))
        return output

    def linear(self, x: str, prefix: str, n_in: int, n_out: int) -> str:
        weight = self.normal(f"{prefix}.weight", n_in, n_out)
        bias = self.normal(f"{prefix}.bias", n_out)
        return self.op("Add", [self.op("MatMul", [x, weight], f"{prefix}/matmul"), bias], f"{prefix}/out")

    def layer_norm(self, x: str, prefix: str, hidden: int, output: str = "") -> str:
        gamma = self.w.weight(f"{prefix}.weight", np.ones(hidden, np.float32))
        beta = self.w.weight(f"{prefix}.bias", np.zeros(hidden, np.float32))
        return self.op("LayerNormalization", [x, gamma, beta], output or f"{prefix}/out", axis=-1, epsilon=1e-5)

    def heads(self, x: str, shape: str, prefix: str, perm: list[int]) -> str:
        """[1, S, hidden] -> Reshape [1, S, heads, head_dim] -> Transpose ``perm``."""
        return self.op("Transpose", [self.op("Reshape", [x, shape], f"{prefix}/heads")], f"{prefix}/t", perm=perm)


def _layer(g: _Graph, x: str, i: int, s: Sizes, c: dict[str, str]) -> str:
    p = f"layers.{i}"
    h = g.layer_norm(x, f"{p}.ln1", s.hidden)
    q, k, v = (g.linear(h, f"{p}.attn.{n}", s.hidden, s.hidden) for n in ("q", "k", "v"))
    q = g.heads(q, c["heads_shape"], f"{p}.attn.q", [0, 2, 1, 3])  # [1, heads, S, head_dim]
    k = g.heads(k, c["heads_shape"], f"{p}.attn.k", [0, 2, 3, 1])  # [1, heads, head_dim, S]
    v = g.heads(v, c["heads_shape"], f"{p}.attn.v", [0, 2, 1, 3])
    scores = g.op("Div", [g.op("MatMul", [q, k], f"{p}.attn/qk"), c["sqrt_head_dim"]], f"{p}.attn/scaled")
    probs = g.op("Softmax", [g.op("Add", [scores, c["mask"]], f"{p}.attn/masked")], f"{p}.attn/probs", axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v], f"{p}.attn/ctx")], f"{p}.attn/ctx_t", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, c["hidden_shape"]], f"{p}.attn/merged")
    x = g.op("Add", [x, g.linear(ctx, f"{p}.attn.out", s.hidden, s.hidden)], f"{p}/residual1")
    f = g.linear(g.layer_norm(x, f"{p}.ln2", s.hidden), f"{p}.ffn.up", s.hidden, s.ffn)
    erf = g.op("Erf", [g.op("Div", [f, c["sqrt2"]], f"{p}.gelu/div")], f"{p}.gelu/erf")
    gelu = g.op("Mul", [f, g.op("Add", [erf, c["one"]], f"{p}.gelu/add")], f"{p}.gelu/mul")
    gelu = g.op("Mul", [gelu, c["half"]], f"{p}.gelu/out")
    return g.op("Add", [x, g.linear(gelu, f"{p}.ffn.down", s.ffn, s.hidden)], f"{p}/residual2")


def build(out: Path, sizes: Sizes = Sizes(), seed: int = 0) -> dict[str, int]:
    """Write the model to ``out`` and its weights to ``<out>.data``; returns params, weight bytes, data file bytes."""
    s = sizes
    if s.hidden % s.heads:
        raise ValueError(f"hidden {s.hidden} is not a multiple of heads {s.heads}")
    out.parent.mkdir(parents=True, exist_ok=True)
    data_path = out.with_name(out.name + ".data")
    with open(data_path, "wb") as data:
        g = _Graph(_Writer(data, data_path.name), np.random.default_rng(seed))
        f32 = np.float32
        c = {
            "heads_shape": g.w.inline("heads_shape", np.array([1, s.seq, s.heads, s.head_dim], np.int64)),
            "hidden_shape": g.w.inline("hidden_shape", np.array([1, s.seq, s.hidden], np.int64)),
            "sqrt_head_dim": g.w.inline("sqrt_head_dim", np.array(math.sqrt(s.head_dim), f32)),
            "sqrt2": g.w.inline("sqrt2", np.array(math.sqrt(2.0), f32)),
            "one": g.w.inline("one", np.array(1.0, f32)),
            "half": g.w.inline("half", np.array(0.5, f32)),
        }
        word = g.op("Gather", [g.normal("embeddings.word", s.vocab, s.hidden), "input_ids"], "embeddings/word")
        positions = g.w.inline("position_ids", np.arange(s.seq, dtype=np.int64).reshape(1, s.seq))
        pos = g.op("Gather", [g.normal("embeddings.position", s.seq, s.hidden), positions], "embeddings/position")
        x = g.op("Add", [word, pos], "embeddings/out")
        m = g.op("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
        inverted = g.op("Sub", [c["one"], m], "mask/inverted")
        m = g.op("Mul", [inverted, g.w.inline("mask_value", np.array(-10000.0, f32))], "mask/additive")
        c["mask"] = g.op("Unsqueeze", [m, g.w.inline("mask_axes", np.array([1, 2], np.int64))], "mask/out")
        for i in range(s.layers):
            x = _layer(g, x, i, s, c)
        g.layer_norm(x, "final_ln", s.hidden, output="last_hidden_state")
        data_bytes = data.tell()
    graph = helper.make_graph(
        g.nodes,
        "big_transformer",
        [helper.make_tensor_value_info(n, TensorProto.INT64, [1, s.seq]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, s.seq, s.hidden])],
        initializer=g.w.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
        producer_name="bench/make_big_transformer.py",
    )
    onnx.save_model(model, str(out))
    return {"params": g.w.params, "weight_bytes": g.w.weight_bytes, "data_bytes": data_bytes, "nodes": len(g.nodes)}


def calib_path(out: Path) -> Path:
    return out.with_name(out.stem + ".calib.npz")


def write_calib(path: Path, samples: int, sizes: Sizes = Sizes(), seed: int = 0) -> Path:
    """``input_ids`` and ``attention_mask`` int64 ``[samples, seq]``: samples on axis 0, random padding lengths."""
    rng = np.random.default_rng([seed, 1])
    lengths = rng.integers(max(1, sizes.seq // 4), sizes.seq + 1, size=samples)
    mask = (np.arange(sizes.seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, sizes.vocab, size=(samples, sizes.seq), dtype=np.int64) * mask
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the .onnx to write (weights go to OUT.data beside it)")
    defaults = Sizes()
    for name in ("layers", "hidden", "heads", "ffn", "vocab", "seq"):
        default = getattr(defaults, name)
        ap.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    ap.add_argument("--seed", type=int, default=0, help="weights and calibration seed (default 0)")
    ap.add_argument("--calib", type=int, default=0, metavar="N", help="also write OUT_STEM.calib.npz with N samples")
    args = ap.parse_args(argv)
    sizes = Sizes(args.layers, args.hidden, args.heads, args.ffn, args.vocab, args.seq)
    stats = build(args.out, sizes, args.seed)
    print(
        f"{args.out}: {stats['nodes']} nodes, {stats['params']:,} parameters, "
        f"{stats['weight_bytes']:,} bytes of weights "
        f"({stats['weight_bytes'] / 1e9:.2f} GB, {stats['weight_bytes'] / 2**30:.2f} GiB); "
        f"{args.out.name}.data {stats['data_bytes']:,} bytes, {args.out.name} {args.out.stat().st_size:,} bytes"
    )
    if args.calib:
        path = write_calib(calib_path(args.out), args.calib, sizes, args.seed)
        print(f"{path}: {args.calib} samples, input_ids and attention_mask int64 [{args.calib}, {sizes.seq}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
