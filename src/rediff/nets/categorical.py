"""Networks for discrete-state diffusion: an image net over category levels, and a small
bidirectional transformer over token sequences. Both map x_t (integer states, [MASK]
included) and time to logits of x0 over the K data values, [B, *D, K].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rediff._choices import Choice
from rediff._tensor import Tensor
from rediff.nets.embedding import TimeEmbedding


class Head(Choice, noun="output head"):
    """How an image net's outputs become logits over the K levels: K logits per pixel, or
    the truncated discretised logistic (Austin et al. 2021's ``logistic_pars``: a location
    and a log-scale per pixel, the probability of each level's bin, renormalised over the K
    bins)."""

    LOGITS = "logits"
    LOGISTIC = "logistic"


def _log_difference(a: Tensor, b: Tensor) -> Tensor:
    """log(exp(a) - exp(b)) for a > b, stable."""
    return a + torch.log(-torch.expm1((b - a).clamp(max=-1e-12)))


def logistic_logits(loc: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """Logits of the discretised logistic over ``levels`` bins of width 2 / (levels - 1)
    centred on v_k = 2 k / (levels - 1) - 1: log(sigma((v_k + w/2 - loc) / s) - sigma((v_k -
    w/2 - loc) / s)), truncated to the K bins (the softmax renormalises), for loc, log_scale:
    [...] -> [..., K]."""
    centres = torch.linspace(-1.0, 1.0, levels, device=loc.device, dtype=loc.dtype)
    half = 1.0 / (levels - 1)
    inv_scale = torch.exp(-log_scale)[..., None]
    offset = centres - loc[..., None]
    upper = F.logsigmoid(inv_scale * (offset + half))
    lower = F.logsigmoid(inv_scale * (offset - half))
    return _log_difference(upper, lower)


class LevelsNet(nn.Module):
    """An image net over levels: x_t [B, C, H, W] with values 0..K-1 (and K = [MASK] when
    ``mask``) -> logits [B, C, H, W, K].

    The inner ``net(x, time, **cond)`` (a UNet built with ``in_channels`` = C, or 2 C with a
    mask, and ``outputs`` = K, or 2 for the logistic head) receives the levels' values
    v = 2 x / (K - 1) - 1, the data's own scale in [-1, 1] (masked entries 0), followed by
    one indicator channel per data channel when the process has a [MASK] state."""

    def __init__(self, net: nn.Module, categories: int, mask: bool, head: Head | str = Head.LOGITS):
        super().__init__()
        self.net, self.categories, self.mask = net, categories, bool(mask)
        self.head = Head.parse(head)

    def forward(self, x_t: Tensor, time: Tensor, **cond) -> Tensor:
        K = self.categories
        values = x_t.clamp(max=K - 1).to(time.dtype) * (2.0 / (K - 1)) - 1.0
        if self.mask:
            masked = x_t == K
            values = torch.cat([values.masked_fill(masked, 0.0), masked.to(values.dtype)], dim=1)
        out = self.net(values, time, **cond)  # [B, outputs C, H, W]
        B, C, H, W = x_t.shape
        out = out.reshape(B, -1, C, H, W).permute(0, 2, 3, 4, 1)  # [B, C, H, W, outputs]
        if self.head is Head.LOGITS:
            return out
        return logistic_logits(torch.tanh(out[..., 0]), out[..., 1], K)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (bidirectional or causal), then an MLP."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )

    def forward(self, h: Tensor, causal: Tensor | None) -> Tensor:
        x = self.norm1(h)
        h = h + self.attention(x, x, x, attn_mask=causal, need_weights=False)[0]
        return h + self.mlp(self.norm2(h))


class Transformer(nn.Module):
    """net(x_t [B, L] states, time [B], labels=None) -> logits [B, L, K]: token (S states)
    and learned position embeddings plus the time (and class) embedding added to every
    position, ``depth`` pre-norm blocks, a linear read-out. Bidirectional by default; with
    ``causal`` each position sees only itself and earlier ones (an autoregressive model).
    Without ``time_conditioning`` the net ignores the time (MDLM's default for masked
    diffusion, whose exact denoiser does not depend on t: caching is then exact)."""

    def __init__(
        self,
        categories: int,
        states: int,
        length: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        time_scale: float = 1000.0,
        num_classes: int | None = None,
        causal: bool = False,
        time_conditioning: bool = True,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.categories, self.states, self.length, self.causal = categories, states, length, causal
        self.time_conditioning = time_conditioning
        self.tokens = nn.Embedding(states, width)
        self.positions = nn.Parameter(torch.randn(length, width) * 0.02)
        self.embed = TimeEmbedding(width, width, time_scale, num_classes)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(depth))
        self.norm, self.out = nn.LayerNorm(width), nn.Linear(width, categories)

    def forward(self, x_t: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor:
        L = x_t.shape[1]
        if self.length < L:
            raise ValueError(f"the transformer takes sequences of length <= {self.length}, got {L}")
        if not self.time_conditioning:  # the time embedding of t = 0: a learned constant
            time = torch.zeros_like(time)
        h = self.tokens(x_t) + self.positions[:L] + self.embed(time, labels)[:, None]
        causal = None
        if self.causal:
            causal = torch.ones(L, L, dtype=torch.bool, device=x_t.device).triu(1)
        for block in self.blocks:
            h = block(h, causal)
        return self.out(self.norm(h))
