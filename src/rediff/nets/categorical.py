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


def rotary(length: int, dim: int, device=None) -> tuple[Tensor, Tensor]:
    """cos and sin [L, dim / 2] of rotary position embeddings (Su et al. 2021, RoFormer):
    pair j of a head's features at position p turns by the angle p / 10000^(2 j / dim)."""
    freqs = 10000.0 ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * freqs
    return torch.cos(angles), torch.sin(angles)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [..., L, dim] with its two halves turned as pairs by the angles of (cos, sin)."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions (queries and keys turned by their
    position, so attention scores depend on relative offsets), bidirectional or causal."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(
        self, x: Tensor, angles: tuple[Tensor, Tensor], causal: bool, keys: Tensor | None = None
    ) -> Tensor:
        """``keys`` [B, L] (bool, optional): which positions may be attended to (False for
        padding)."""
        B, L, W = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _rotate(q, *angles), _rotate(k, *angles)
        p = self.dropout if self.training else 0.0
        mask = None if keys is None else keys[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(B, L, W))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (bidirectional or causal), then an MLP."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = Attention(width, heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )

    def forward(
        self, h: Tensor, angles: tuple[Tensor, Tensor], causal: bool, keys: Tensor | None = None
    ) -> Tensor:
        h = h + self.attention(self.norm1(h), angles, causal, keys)
        return h + self.mlp(self.norm2(h))


class Transformer(nn.Module):
    """net(x_t [B, L] states, time [B], labels=None) -> logits [B, L, K]: token (S states)
    embeddings plus the time (and class) embedding added to every position, ``depth``
    pre-norm blocks with rotary positions, a linear read-out. Bidirectional by default; with
    ``causal`` each position sees only itself and earlier ones (an autoregressive model).
    Without ``time_conditioning`` the net ignores the time (MDLM's default for masked
    diffusion, whose exact denoiser does not depend on t: caching is then exact).

    Positions are rotary (as in MDLM's DiT): with learned absolute positions a bidirectional
    net stayed at the unigram entropy (4.5 bits/char on the pydoc text for 300+ steps) where
    a causal one, which reads order from its mask, did not; rotary positions put relative
    offsets into every attention score."""

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
        if width % heads or (width // heads) % 2:
            raise ValueError(f"width {width} must be divisible by heads {heads}, in even parts")
        self.categories, self.states, self.length, self.causal = categories, states, length, causal
        self.time_conditioning = time_conditioning
        self.tokens = nn.Embedding(states, width)
        nn.init.normal_(self.tokens.weight, std=0.02)  # GPT-2's scale
        self.embed = TimeEmbedding(width, width, time_scale, num_classes)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(depth))
        self.norm, self.out = nn.LayerNorm(width), nn.Linear(width, categories)
        self.head_dim = width // heads

    def forward(
        self, x_t: Tensor, time: Tensor, labels: Tensor | None = None, keys: Tensor | None = None
    ) -> Tensor:
        """``keys`` [B, L] (bool): the positions attention may read (variable-length
        sequences padded to L: False on the padding); all when None."""
        L = x_t.shape[1]
        if self.length < L:
            raise ValueError(f"the transformer takes sequences of length <= {self.length}, got {L}")
        if not self.time_conditioning:  # the time embedding of t = 0: a learned constant
            time = torch.zeros_like(time)
        h = self.tokens(x_t) + self.embed(time, labels)[:, None]
        angles = rotary(L, self.head_dim, x_t.device)
        for block in self.blocks:
            h = block(h, angles, self.causal, keys)
        return self.out(self.norm(h))
