"""Small PyTorch models for ``convert export`` tests, named by SPEC (``tests.export_models:small_cnn``).

Each factory seeds torch so that its weights are the same on every call; BatchNorm statistics
are made non-trivial so that a wrong fold would show.
"""

from __future__ import annotations

import torch
from torch import nn


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _randomize_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x2, a residual, global pooling, flatten, linear → [batch, 10] class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block(x)
        x = self.down(x)
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc(torch.flatten(x, 1))


def small_cnn() -> nn.Module:
    _seeded(0)
    model = SmallCNN()
    _randomize_bn(model)
    return model.eval()


class LstmTagger(nn.Module):
    """A 2-layer bidirectional LSTM over [batch, time, features] → per-step scores and the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, (h, _) = self.lstm(x)
        return self.head(y), h[-1]


def lstm_tagger() -> nn.Module:
    _seeded(1)
    return LstmTagger().eval()


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection (``chunk`` → ONNX Split) and a key padding mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e4)
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class SmallTransformer(nn.Module):
    """Token ids and an attention mask ([batch, seq], int64) → hidden states and pooled class scores."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, layers: int = 2, seq: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.cls = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return x, self.cls(pooled)


def small_transformer() -> nn.Module:
    _seeded(2)
    return SmallTransformer().eval()


class SeqTransformer(nn.Module):
    """Like SmallTransformer, with learned positions looked up by index (no slice of a fixed-size table),
    so the sequence length is free: [batch, seq] ids and mask → [batch, seq, dim] hidden, [batch, classes]."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, layers: int = 2, positions: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(positions, dim)
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.cls = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return x, self.cls(pooled)


def seq_transformer() -> nn.Module:
    _seeded(3)
    return SeqTransformer().eval()


class AudioTagger(nn.Module):
    """Raw audio [batch, samples] → strided Conv1d frames → per-frame features [batch, frames, 16] and clip scores [batch, 6]."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Sequential(nn.Conv1d(1, 8, 16, stride=8), nn.ReLU(), nn.Conv1d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 6)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.frontend(audio.unsqueeze(1)).transpose(1, 2)
        return frames, self.head(frames.mean(1))


def audio_tagger() -> nn.Module:
    _seeded(4)
    return AudioTagger().eval()


class BatchBranch(nn.Module):
    """Python control flow on the batch size: a tracer bakes in the branch taken at the trace batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            return x * 2.0
        return x + 1.0


def batch_branch() -> nn.Module:
    return BatchBranch().eval()


# --- for error tests -------------------------------------------------------------------------

NOT_CALLABLE = 42


def returns_dict() -> dict[str, int]:
    return {"not": 1}


def needs_args(width: int) -> nn.Module:
    return nn.Linear(width, width)


def raises() -> nn.Module:
    raise RuntimeError("weights server unreachable")
