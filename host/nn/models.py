"""The small float models the demo, the benchmarks and the tests train (convert them with
:func:`host.nn.quantize_model`).

==================  ===========================================================================
``cnn``             3 conv (3x3) + BatchNorm + ReLU (+ 2x2 max-pool after the first two) + 2 linear
``mlp``             flatten + 3 hidden linear layers with ReLU + a linear classifier
``transformer``     a tiny pre-norm character Transformer (2 blocks, d=64, 4 heads); the projections
                    and MLPs are ``nn.Linear`` (quantized), the attention score/value products stay
                    float ([PROPOSED]: they are activation x activation GEMMs, outside the seeds' scope)
==================  ===========================================================================
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SmallCNN", "MLP", "CharTransformer", "build_model", "MODELS"]


class SmallCNN(nn.Sequential):
    """``(C, H, W)`` images -> logits. ``width`` channels in the first conv, doubling twice."""

    def __init__(self, in_shape=(1, 28, 28), num_classes: int = 10, width: int = 8, hidden: int = 64):
        c, h, w = in_shape
        w1, w2, w3 = width, 2 * width, 4 * width
        pooled = (h // 4) * (w // 4)
        super().__init__(
            nn.Conv2d(c, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w2, w3, 3, padding=1, bias=False), nn.BatchNorm2d(w3), nn.ReLU(),
            nn.Flatten(), nn.Linear(w3 * pooled, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class MLP(nn.Sequential):
    """Flattened input -> ``depth`` hidden layers of ``hidden`` units with ReLU -> logits."""

    def __init__(self, in_shape=(1, 40), num_classes: int = 10, hidden: int = 256, depth: int = 3):
        d = math.prod(in_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        layers.append(nn.Linear(d, num_classes))
        super().__init__(*layers)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.relu(self.fc1(self.ln2(x))))


class CharTransformer(nn.Module):
    """Token ids ``(B, T)`` -> next-token logits ``(B, T, vocab)``."""

    def __init__(self, vocab: int = 96, seq_len: int = 64, d: int = 64, heads: int = 4, depth: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq_len, d))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


MODELS = ("cnn", "mlp", "transformer")


def build_model(name: str, in_shape, num_classes: int, **kw) -> nn.Module:
    """A model by name for a dataset's ``input_shape`` / ``num_classes``.

    Raises
    ------
    ValueError
        Unknown name (lists the valid names) or a model that does not fit the input.
    """
    if name == "cnn":
        if len(in_shape) != 3:
            raise ValueError(f"model 'cnn' needs (C, H, W) images, got input shape {tuple(in_shape)}; "
                             f"use 'mlp'")
        return SmallCNN(tuple(in_shape), num_classes, **kw)
    if name == "mlp":
        return MLP(tuple(in_shape), num_classes, **kw)
    if name == "transformer":
        if len(in_shape) != 1:
            raise ValueError(f"model 'transformer' needs token sequences, got input shape {tuple(in_shape)}")
        return CharTransformer(num_classes, in_shape[0], **kw)
    raise ValueError(f"unknown model {name!r}; valid names: {list(MODELS)}")
