"""Torch modules that hard-code batch 1 the way real exports do, and the helpers the dynamic_batch tests share.

Each forward hard-codes batch 1; ``export`` writes one with either exporter (``dynamo=False`` legacy
TorchScript or ``dynamo=True``), without dynamic_axes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import pytest

from converter.pass_api import PassContext
from converter.passes.dynamic_batch import DynamicBatchOptions, DynamicBatchPass

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


def run_pass(model: onnx.ModelProto, **options):
    """The pass on a copy: callers keep ``model`` as the original to prove against."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return DynamicBatchPass(DynamicBatchOptions(**options)).run(work, CTX)


def dim_param(vi: onnx.ValueInfoProto, axis: int = 0) -> str:
    return vi.type.tensor_type.shape.dim[axis].dim_param
