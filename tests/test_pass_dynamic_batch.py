"""dynamic_batch on real torch exports that hard-code batch 1, and on tiny ONNX-text models for each rule.

Proof for every pattern: the rewritten model runs at batch 1, 2, 7 and 32 and
equals the stacked batch-1 runs of the original (converter.batch_verify:
max abs error <= 1e-5 x output scale, cosine >= 0.99999) on seeded inputs.
Each torch module is exported once per session, with both exporters
(``dynamo=False`` legacy TorchScript and ``dynamo=True``), without dynamic_axes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from converter.batch_verify import check_batch_stacking
from converter.onnx_calls import check_model
from converter.pass_api import PassContext
from converter.passes.dynamic_batch import BatchDependenceError, DynamicBatchOptions, DynamicBatchPass, Rewrite
from converter.passes.dynamic_batch._values import Lin, NotLinear

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

CTX = PassContext(log=logging.getLogger("test.dynamic_batch"), seed=0)
BATCHES = (1, 2, 7, 32)


# ---- the patterns real exports contain (each forward hard-codes batch 1) ----------------------


class FlattenView(nn.Module):
    """x.view(1, -1) into a Linear."""

    shape = (1, 3, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).view(1, -1))


class ReshapeCHW(nn.Module):
    """reshape(1, C, H*W) then tokens through a Linear."""

    shape = (1, 3, 6, 5)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        t = self.conv(x).reshape(1, 8, 6 * 5).transpose(1, 2)
        return self.fc(torch.softmax(t, dim=-1))


class ChannelShuffle(nn.Module):
    """view(1, g, c//g, h, w) → transpose → view back (ShuffleNet)."""

    shape = (1, 4, 5, 5)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)

    def forward(self, x):
        y = self.conv1(x).view(1, 2, 4, 5, 5).transpose(1, 2).contiguous().view(1, -1, 5, 5)
        return self.conv2(y)


class ExpandToken(nn.Module):
    """A learned class token expand(1, -1, -1) and learned queries expand(1, 3, 8) (ViT/DETR)."""

    shape = (1, 4, 8)

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 8))
        self.query = nn.Parameter(torch.randn(1, 3, 8))
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        seq = torch.cat([self.token.expand(1, -1, -1), self.proj(x)], dim=1)
        att = torch.softmax(self.query.expand(1, 3, 8) @ seq.transpose(1, 2), dim=-1)
        return att @ seq, seq


class LSTMZeros(nn.Module):
    """LSTM with h0/c0 = torch.zeros(1, 1, hidden) made in forward; returns h_n too (batch in dim 1)."""

    shape = (1, 7, 5)

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y, (h, _) = self.lstm(x, (torch.zeros(1, 1, 6), torch.zeros(1, 1, 6)))
        return self.fc(y), h


class LSTMBuffers(nn.Module):
    """Two-layer bidirectional LSTM whose initial states are module buffers [4, 1, hidden]."""

    shape = (1, 7, 5)

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 6, num_layers=2, bidirectional=True)
        self.register_buffer("h0", torch.randn(4, 1, 6) * 0.1)
        self.register_buffer("c0", torch.randn(4, 1, 6) * 0.1)

    def forward(self, x):
        y, (_, c) = self.lstm(x.transpose(0, 1), (self.h0, self.c0))
        return y.transpose(0, 1), c


class GRUParamH0(nn.Module):
    """GRU with a learned initial state of batch 1."""

    shape = (1, 7, 5)

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(5, 6, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(1, 1, 6) * 0.1)

    def forward(self, x):
        return self.gru(x, self.h0)[0]


class Attention(nn.Module):
    """Hand-written multi-head attention with reshapes to (1, seq, 3, heads, dim) and (1, seq, embed)."""

    shape = (1, 6, 16)

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        qkv = self.qkv(x).reshape(1, 6, 3, 4, 4).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax((q @ k.transpose(-2, -1)) * 0.5, dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(1, 6, 16))


class AttentionBatchHeads(nn.Module):
    """Heads folded into the batch for bmm: view(1, s, h, d) → reshape(1 * h, s, d) → view(1, h, s, d)."""

    shape = (1, 6, 16)

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(16, 16) for _ in range(4))

    def forward(self, x):
        def heads(t):
            return t.view(1, 6, 4, 4).transpose(1, 2).reshape(1 * 4, 6, 4)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        a = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / 2.0, dim=-1)
        return self.out(torch.bmm(a, v).view(1, 4, 6, 4).transpose(1, 2).reshape(1, 6, 16))


class AttentionFromShape(nn.Module):
    """B, N, C = x.shape; reshape(B * heads, N, -1): shape arithmetic the exporters trace or fold."""

    shape = (1, 6, 16)

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, c // 4).permute(2, 0, 3, 1, 4).unbind(0)
        q, k, v = (t.reshape(b * 4, n, -1) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(1, 2), -1)
        return (a @ v).reshape(b, 4, n, -1).transpose(1, 2).reshape(b, n, c)


class CatChunkBatch(nn.Module):
    """cat([x, flip(x)], 0) → conv → chunk(2, 0), and x[:1]: slices and splits along the batch."""

    shape = (1, 3, 5, 5)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        a, b = self.conv(torch.cat([x, x.flip(-1)], 0)).chunk(2, 0)
        return a * b + x[:1].sum(1, keepdim=True)


class Interpolate(nn.Module):
    """interpolate to a fixed size (Resize sizes) and by a scale factor."""

    shape = (1, 3, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return F.interpolate(self.conv(x), size=(8, 8), mode="nearest"), F.interpolate(x, scale_factor=2.0, mode="bilinear")


class ZerosRepeatCat(nn.Module):
    """torch.zeros(1, 2, 8) and token.repeat(1, 3, 1) concatenated with the data (ConstantOfShape/Tile)."""

    shape = (1, 4, 8)

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        return torch.cat([torch.zeros(1, 2, 8), self.token.repeat(1, 3, 1), x], 1) * 2.0


class TorchTransformer(nn.Module):
    """nn.TransformerEncoder (batch_first) behind a class token: torch's own attention, view(seq, batch * heads, dim)."""

    shape = (1, 6, 32)

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.cls = nn.Parameter(torch.randn(1, 1, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        return self.head(self.encoder(x)[:, 0])


class TorchMultiheadAttention(nn.Module):
    """nn.MultiheadAttention(batch_first=True): view(batch * seq, embed) for the output projection."""

    shape = (1, 6, 32)

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x)[0]


PATTERNS = {
    "flatten_view": FlattenView,
    "reshape_c_hw": ReshapeCHW,
    "channel_shuffle": ChannelShuffle,
    "expand_token": ExpandToken,
    "lstm_zeros_h0": LSTMZeros,
    "lstm_buffer_h0": LSTMBuffers,
    "gru_param_h0": GRUParamH0,
    "attention": Attention,
    "attention_batch_x_heads": AttentionBatchHeads,
    "attention_from_shape": AttentionFromShape,
    "cat_chunk_batch": CatChunkBatch,
    "interpolate": Interpolate,
    "zeros_repeat_cat": ZerosRepeatCat,
    "torch_transformer_encoder": TorchTransformer,
    "torch_multihead_attention": TorchMultiheadAttention,
}
EXPORTERS = ("legacy", "dynamo")


def export(module: nn.Module, shape: tuple[int, ...], path: Path, exporter: str, **kwargs) -> Path:
    torch.manual_seed(0)
    module.eval()
    x = torch.randn(*shape)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), input_names=["x"], dynamo=exporter == "dynamo", verbose=False, **kwargs)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """Export a pattern once per module: exported(name, exporter) -> path of the batch-1 model."""
    folder = tmp_path_factory.mktemp("dynamic-batch-exports")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, exporter: str) -> Path:
        if (name, exporter) not in cache:
            torch.manual_seed(0)
            cache[(name, exporter)] = export(PATTERNS[name](), PATTERNS[name].shape, folder / f"{name}.{exporter}.onnx", exporter)
        return cache[(name, exporter)]

    return get


def run_pass(model: onnx.ModelProto, **options):
    return DynamicBatchPass(DynamicBatchOptions(**options)).run(model, CTX)


def dim_param(vi: onnx.ValueInfoProto, axis: int = 0) -> str:
    return vi.type.tensor_type.shape.dim[axis].dim_param


def naive(model: onnx.ModelProto) -> onnx.ModelProto:
    """What most tools do: rename dim 0 of inputs and outputs, hope."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output]:
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_param = "batch"
    del out.graph.value_info[:]
    return out


# ---- torch exports -----------------------------------------------------------------------------


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_runs_at_any_batch(exported, name: str, exporter: str) -> None:
    original = onnx.load(str(exported(name, exporter)))
    result = run_pass(original)
    assert result.modified
    check_model(result.model)
    assert dim_param(result.model.graph.input[0]) == "batch"
    assert all(any(d.dim_param == "batch" for d in o.type.tensor_type.shape.dim) for o in result.model.graph.output)
    check = check_batch_stacking(original, result.model, BATCHES, seed=0)
    assert check, check.table()
    assert [r.batch for r in check.runs] == list(BATCHES)
    original_nodes = {n.name for n in original.graph.node}
    for rewrite in result.facts["rewritten"]:  # each typed fact names a node of the original or a graph output
        assert isinstance(rewrite, Rewrite)
        assert rewrite.node in original_nodes or rewrite.op == "graph output", rewrite
    assert "equals" in result.facts["self_check"]


CORE = ["flatten_view", "reshape_c_hw", "channel_shuffle", "expand_token", "lstm_buffer_h0", "gru_param_h0", "attention", "attention_batch_x_heads"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", CORE)
def test_renaming_dim0_alone_breaks_these_exports(exported, name: str, exporter: str) -> None:
    """The patterns really hard-code batch 1: editing the input dim and hoping fails at batch 2."""
    original = onnx.load(str(exported(name, exporter)))
    assert not check_batch_stacking(original, naive(original), (2,))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_lstm_states_keep_batch_in_dim_1(exported, exporter: str) -> None:
    result = run_pass(onnx.load(str(exported("lstm_zeros_h0", exporter))))
    h_n = result.model.graph.output[1]
    assert [d.dim_param or d.dim_value for d in h_n.type.tensor_type.shape.dim] == [1, "batch", 6]
    assert result.facts["outputs"][h_n.name] == {"axis": 1, "dim": "batch"}


def test_reshape_rewrites_use_0_or_minus_1(exported) -> None:
    result = run_pass(onnx.load(str(exported("attention_batch_x_heads", "legacy"))))
    model = result.model
    inits = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in model.graph.initializer}
    shapes = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Reshape" and n.input[1] in inits]
    assert shapes and all(s[0] in (0, -1) for s in shapes), shapes
    assert [0, 6, 4, 4] in shapes and [-1, 6, 4] in shapes  # copy the batch where dim 0 is it; -1 for batch*heads


def test_batch_2_export(tmp_path: Path) -> None:
    class Flatten2(FlattenView):
        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).view(2, -1))

    for exporter in EXPORTERS:
        original = onnx.load(str(export(Flatten2(), (2, 3, 6, 6), tmp_path / f"b2.{exporter}.onnx", exporter)))
        result = run_pass(original)
        assert result.facts["old_batch"] == 2
        check = check_batch_stacking(original, result.model, (2, 4, 14))
        assert check, check.table()


def test_cli_converts_and_runs_at_several_batches(exported, tmp_path: Path, cli) -> None:
    for name, exporter in (("attention", "legacy"), ("lstm_buffer_h0", "dynamo"), ("expand_token", "legacy")):
        src = exported(name, exporter)
        out = tmp_path / f"{name}.{exporter}.ort.onnx"
        proc = cli(src, "-p", "dynamic_batch", "-b", "ort", "-o", out)
        assert proc.returncode == 0, proc.stderr
        converted = onnx.load(str(out))
        assert dim_param(converted.graph.input[0]) == "batch"
        check = check_batch_stacking(onnx.load(str(src)), converted, BATCHES, seed=1)
        assert check, check.table()


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_cli_after_fold_constants(exported, tmp_path: Path, cli, name: str) -> None:
    """The issue's command on every pattern: fold, make the batch dynamic, --verify proves 1/2/7 stacking;
    then the written artifact runs at 1, 2, 7 and 32 equal to stacked batch-1 runs."""
    src = exported(name, "legacy")
    out = tmp_path / f"{name}.onnx"
    proc = cli(src, "-p", "fold_constants,dynamic_batch", "-b", "ort", "-o", out, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "batch check (batch N vs N stacked batch-1 runs): ok" in proc.stdout
    check = check_batch_stacking(onnx.load(str(src)), onnx.load(str(out)), BATCHES)
    assert check, check.table()


class BatchMean(nn.Module):
    shape = (1, 4)

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class FirstSample(nn.Module):
    shape = (1, 4)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x[0])


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize(("module", "op", "why"), [(BatchMean, "ReduceMean", "reduces over the batch"), (FirstSample, "Gather", "along the batch dim")])
def test_cross_sample_ops_are_refused(tmp_path: Path, module, op: str, why: str, exporter: str) -> None:
    path = export(module(), module.shape, tmp_path / "m.onnx", exporter)
    model = onnx.load(str(path))
    before = model.SerializeToString()
    with pytest.raises(BatchDependenceError) as err:
        run_pass(model)
    node = next(n for n in model.graph.node if n.op_type == op)
    assert f"{op} '{node.name}'" in str(err.value) and why in str(err.value)
    assert model.SerializeToString() == before  # the input model is untouched


def test_cli_refusal_exits_2_with_one_line(tmp_path: Path, cli) -> None:
    path = export(BatchMean(), BatchMean.shape, tmp_path / "mean.onnx", "legacy")
    proc = cli(path, "-p", "dynamic_batch", "-b", "ort", "-o", tmp_path / "out.onnx")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dynamic_batch" in lines[0] and "ReduceMean '/ReduceMean'" in lines[0], proc.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_already_dynamic_model_is_left_alone(tmp_path: Path, cli) -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    path = export(Flat(), (1, 3, 4), tmp_path / "dyn.onnx", "legacy", dynamic_axes={"x": {0: "N"}})
    model = onnx.load(str(path))
    before = model.SerializeToString()
    result = run_pass(model)
    assert not result.modified
    assert result.model.SerializeToString() == before
    assert result.refused and "already dynamic" in result.refused[0] and "'N'" in result.refused[0]
    proc = cli(path, "-p", "dynamic_batch", "-b", "onnx", "-o", tmp_path / "same.onnx")
    assert proc.returncode == 0, proc.stderr
    assert dim_param(onnx.load(str(tmp_path / "same.onnx")).graph.input[0]) == "N"


# ---- tiny ONNX-text models, one rule each ----------------------------------------------------------


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def convert_and_prove(text: str, batches=(1, 2, 7), **options):
    original = parse(text)
    result = run_pass(original, **options)
    check_model(result.model)
    check = check_batch_stacking(original, result.model, batches)
    assert check, check.table()
    return result


def test_slice_of_a_concatenation_along_the_batch() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,4] x) => (float[1,4] y) {
            n = Neg(x)
            both = Concat <axis=0> (x, n)
            st = Constant <value = int64[1] {1}> ()
            en = Constant <value = int64[1] {2}> ()
            ax = Constant <value = int64[1] {0}> ()
            second = Slice (both, st, en, ax)
            y = Mul(second, x)
        }""")
    assert any(r.op == "Slice" and "batch:end" in r.change for r in result.facts["rewritten"]), result.facts


def test_split_sizes_along_the_batch() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,4] x) => (float[1,4] y) {
            e = Exp(x)
            both = Concat <axis=0> (x, e)
            sizes = Constant <value = int64[2] {1, 1}> ()
            a, b = Split <axis=0> (both, sizes)
            y = Sub(a, b)
        }""")
    assert any(r.op == "Split" and "[batch, batch]" in r.change for r in result.facts["rewritten"]), result.facts


def test_constant_of_shape_takes_the_runtime_batch() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,7] y) {
            s = Constant <value = int64[2] {1, 3}> ()
            z = ConstantOfShape <value = float[1] {0.5}> (s)
            y = Concat <axis=1> (z, x)
        }""")
    assert any(r.op == "ConstantOfShape" and "[batch, 3]" in r.change for r in result.facts["rewritten"]), result.facts


def test_old_batch_2_expand_shapes() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x) => (float[2,8] y) {
            s = Constant <value = int64[2] {2, 4}> ()
            tok = Constant <value = float[1,4] {1, 2, 3, 4}> ()
            xe = Expand(x, s)
            te = Expand(tok, s)
            y = Concat <axis=1> (xe, te)
        }""", batches=(2, 4, 6))
    text = "\n".join(map(str, result.facts["rewritten"]))
    assert "[1, 4]" in text and "[batch, 4]" in text, text


def test_squeeze_without_axes_gets_explicit_axes() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,1] x) => (float[2,3] y) {
            y = Squeeze(x)
        }""", batches=(2, 4))
    assert any("axes made explicit [2]" in r.change for r in result.facts["rewritten"]), result.facts


def test_graph_output_from_a_batch_1_constant_is_broadcast() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] y, float[1,3] c, float[1,3] d) {
            y = Relu(x)
            k = Constant <value = float[1,3] {1, 2, 3}> ()
            c = Identity(k)
            d = Mul(c, c)
        }""")
    assert result.facts["outputs"]["c"] == result.facts["outputs"]["d"] == {"axis": 0, "dim": "batch"}


def test_reshapes_that_interleave_samples_are_refused() -> None:
    inside = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,2,3] x) => (float[6] y) {
            t = Transpose <perm = [1, 0, 2]> (x)
            s = Constant <value = int64[1] {6}> ()
            y = Reshape(t, s)
        }""")
    with pytest.raises(BatchDependenceError, match=r"graph output 'y': it holds the batch as 2 x \(3\*batch\), batch inside"):
        run_pass(inside)
    across = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,2] x) => (float[2,3] y) {
            t = Transpose <perm = [1, 0, 2]> (x)
            s = Constant <value = int64[2] {2, 3}> ()
            y = Reshape(t, s)
        }""")
    with pytest.raises(BatchDependenceError, match=r"Reshape 'y': it moves the batch"):
        run_pass(across)


def test_every_refused_node_is_named() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] a, float[4] b) {
            ax = Constant <value = int64[1] {0}> ()
            a = ReduceSum <keepdims = 1> (x, ax)
            i = Constant <value = int64 {0}> ()
            b = Gather <axis = 0> (x, i)
        }""")
    with pytest.raises(BatchDependenceError) as err:
        run_pass(model)
    assert "ReduceSum 'a'" in str(err.value) and "Gather 'b'" in str(err.value)


def test_options_name_inputs_and_dim() -> None:
    text = """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x, float[3,4] w) => (float[1,3] y) {
            wt = Transpose(w)
            y = MatMul(x, wt)
        }"""
    with pytest.raises(BatchDependenceError, match="inputs disagree"):
        run_pass(parse(text))
    result = convert_and_prove(text, inputs=("x",), name="N")
    assert dim_param(result.model.graph.input[0]) == "N" and result.model.graph.input[1].type.tensor_type.shape.dim[0].dim_value == 3
    assert dim_param(result.model.graph.output[0]) == "N"
    with pytest.raises(BatchDependenceError, match="batch 2"):
        run_pass(parse(text), inputs=("x",), dim=2)


def test_self_check_refuses_a_wrong_result(exported) -> None:
    original = onnx.load(str(exported("flatten_view", "legacy")))
    with pytest.raises(BatchDependenceError, match="self-check failed: at batch 3"):
        DynamicBatchPass(DynamicBatchOptions())._self_check(original, naive(original), CTX)


def test_lin_arithmetic() -> None:
    b = Lin(0, 1)
    assert (b * 4 + 1).div(2) == Lin(0, 2)  # (4b + 1) / 2 == 2b for every b >= 1
    with pytest.raises(NotLinear):
        _ = b * b
    with pytest.raises(NotLinear):
        (b + 1).div(2)
    assert repr(Lin(3, 2)) == "2*batch+3"
    assert np.array_equal(np.array([Lin(1), b], dtype=object) * 3, np.array([Lin(3), Lin(0, 3)], dtype=object))


def test_repair_a_model_whose_inputs_say_batch_but_whose_nodes_hard_code_1(tmp_path: Path) -> None:
    """torch.onnx.export(..., dynamic_axes) of code with view(1, -1): dynamic on the outside, batch 1 inside."""
    path = export(FlattenView(), FlattenView.shape, tmp_path / "half.onnx", "legacy", dynamic_axes={"x": {0: "N"}})
    half = onnx.load(str(path))
    static = onnx.load(str(path))
    d = static.graph.input[0].type.tensor_type.shape.dim[0]
    d.Clear()
    d.dim_value = 1
    assert not check_batch_stacking(static, half, (2,))  # its symbolic batch is a promise it does not keep
    assert not run_pass(onnx.load(str(path))).modified
    result = run_pass(onnx.load(str(path)), repair=True)
    assert result.modified and result.facts["repaired_from"] == {"x": "N"}
    assert any(r.op == "Reshape" for r in result.facts["rewritten"])
    assert dim_param(result.model.graph.input[0]) == "batch"
    check = check_batch_stacking(static, result.model, BATCHES)
    assert check, check.table()


def test_repair_that_refuses_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    model = onnx.load(str(export(BatchMean(), BatchMean.shape, tmp_path / "mean.onnx", "legacy", dynamic_axes={"x": {0: "N"}})))
    before = model.SerializeToString()
    with pytest.raises(BatchDependenceError, match="reduces over the batch"):
        run_pass(model, repair=True)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("name", ["expand_token", "lstm_buffer_h0", "zeros_repeat_cat", "flatten_view", "gru_param_h0"])
def test_tensorrt_lint_flags_rename_only_exports_but_not_converted_ones(exported, name: str) -> None:
    """`convert check -b tensorrt` must catch what naive batch renaming leaves behind, and stay quiet after the pass."""
    from converter.plugins.tensorrt.lint._rules import lint

    src = onnx.load(str(exported(name, "legacy")))
    renamed = onnx.ModelProto()
    renamed.CopyFrom(src)
    for vi in [*renamed.graph.input, *renamed.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    del renamed.graph.value_info[:]
    assert [f for f in lint(renamed) if f.rule == "hardcoded-batch" and f.severity == "error"], "rename-only export not flagged"
    converted = DynamicBatchPass(DynamicBatchOptions()).run(src, PassContext(log=logging.getLogger("t"))).model
    assert [f.line() for f in lint(converted) if f.rule == "hardcoded-batch"] == []
