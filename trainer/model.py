"""Image-to-LaTeX model: a CNN encoder with a 2-D positional signal and a Transformer decoder.

Why this shape, for a single T4 and 12-hour sessions: a plain CNN (conv + BatchNorm) turns a formula image
into a short grid of feature vectors cheaply and trains fast in fp16; a 2-D sinusoidal signal tells the
decoder where each vector sits (row and column matter for fractions, sub/superscripts). A Transformer decoder
trains all positions in parallel under teacher forcing (a GRU attention decoder, the user's old model, steps
token by token and trains several times slower) and at inference a key/value cache keeps greedy decoding
linear in the output length. No pretrained weights: Kaggle sessions may run without internet.

This file holds only modules and their config; training lives in train.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int = 512
    cnn_channels: tuple[int, ...] = (64, 128, 256, 512)
    # Each CNN stage halves the height; these stages also halve the width (a formula is wide, not tall).
    width_pool_stages: int = 3
    decoder_layers: int = 6
    heads: int = 8
    ff_dim: int = 2048
    dropout: float = 0.1
    max_len: int = 256  # maximum output length in tokens, BOS/EOS included
    # Residual blocks in the encoder (stages after the first: two more convolutions with a skip each). False
    # is the plain encoder every checkpoint before this field has, so old checkpoints load unchanged.
    residual: bool = False

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["cnn_channels"] = list(self.cnn_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelConfig:
        fields = dict(data)
        fields["cnn_channels"] = tuple(fields["cnn_channels"])  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]


# Sizes by name. tiny trains in seconds on a CPU (tests); base fits a 16 GB T4 with batch 32 in fp16.
MODEL_SIZES: dict[str, dict[str, object]] = {
    "tiny": dict(
        d_model=64, cnn_channels=(16, 32, 64, 64), decoder_layers=2, heads=4, ff_dim=128, dropout=0.0
    ),
    "small": dict(d_model=256, cnn_channels=(32, 64, 128, 256), decoder_layers=3, heads=4, ff_dim=1024),
    "base": dict(d_model=512, cnn_channels=(64, 128, 256, 512), decoder_layers=6, heads=8, ff_dim=2048),
}


def model_config_for(size: str, vocab_size: int, max_len: int, **overrides: object) -> ModelConfig:
    """The size's preset, with ``overrides`` (fields of ModelConfig; None values are ignored) on top."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}: choose one of {', '.join(MODEL_SIZES)}")
    fields = {**MODEL_SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
    cfg = ModelConfig(vocab_size=vocab_size, max_len=max_len, **fields)  # type: ignore[arg-type]
    if cfg.d_model % cfg.heads:
        raise ValueError(f"d_model {cfg.d_model} must be a multiple of the {cfg.heads} attention heads")
    return cfg


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input, then ReLU: depth without a harder optimisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class ConvEncoder(nn.Module):
    """(B, 1, H, W) image -> (B, d_model, H/2^k, W/2^j) feature grid."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for index, out_ch in enumerate(cfg.cnn_channels):
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            if cfg.residual and index > 0:  # the first stage runs at full resolution: kept cheap
                layers.append(ResidualBlock(out_ch))
            elif (
                index >= len(cfg.cnn_channels) - 2
            ):  # deeper stages get a second conv: more capacity, same grid
                layers += [
                    nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(inplace=True),
                ]
            width_stride = 2 if index < cfg.width_pool_stages else 1
            layers.append(nn.MaxPool2d(kernel_size=(2, width_stride), stride=(2, width_stride)))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.project = nn.Conv2d(in_ch, cfg.d_model, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Images arrive in [0, 1] with ink 1 and background 0, so the convolutions' zero padding and the
        # batch padding both read as blank paper: no centring here.
        return self.project(self.features(images))


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """(length, dim) classic sine/cosine table."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


def positional_encoding_2d(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """(dim, height, width): half the channels encode the row, half the column."""
    half = dim // 2
    rows = sinusoid_table(height, half).t()[:, :, None].expand(half, height, width)
    cols = sinusoid_table(width, dim - half).t()[:, None, :].expand(dim - half, height, width)
    return torch.cat([rows, cols], dim=0).to(device)


class Attention(nn.Module):
    """Multi-head attention with an optional key/value cache for incremental decoding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, D) -> (B, heads, T, D/heads)
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(source).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self.split_heads(self.q(x))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    """Pre-norm: causal self-attention, cross-attention on the image grid, MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = Attention(cfg)
        self.cross_attn = Attention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ff_dim),
            nn.GELU(),
            nn.Linear(cfg.ff_dim, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        memory_mask: torch.Tensor | None = None,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        causal = True
        if cache is not None:  # incremental: x holds only the newest position, attend to all earlier ones
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            causal = False
        x = x + self.drop(self.self_attn(h, k, v, causal=causal))
        x = x + self.drop(self.cross_attn(self.norm2(x), *memory_kv, causal=False, mask=memory_mask))
        return x + self.mlp(self.norm3(x))


class ImageToLatex(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions: torch.Tensor
        self.register_buffer("positions", sinusoid_table(cfg.max_len, cfg.d_model), persistent=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied: fewer parameters, faster start
        # Scaled by sqrt(d_model) on input, unit-scale logits on output through the tied head.
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)

    def decoder_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]

    def encode(
        self, images: torch.Tensor, widths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 1, H, W) -> memory (B, h*w, D) and a (B, 1, 1, h*w) mask of the columns that are not batch
        padding (None without widths: every column counts)."""
        grid = self.encoder(images)  # (B, D, h, w)
        _, d, h, w = grid.shape
        grid = grid + positional_encoding_2d(h, w, d, grid.device).to(grid.dtype)
        memory = grid.flatten(2).transpose(1, 2)  # row-major: position r * w + c
        if widths is None:
            return memory, None
        stride = 2**self.cfg.width_pool_stages
        valid_cols = torch.arange(w, device=grid.device)[None, :] < (widths[:, None] + stride - 1) // stride
        mask = valid_cols[:, None, :].expand(-1, h, -1).reshape(-1, 1, 1, h * w)
        return memory, mask

    def embed_tokens(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        t = tokens.shape[1]
        return self.embed(tokens) * math.sqrt(self.cfg.d_model) + self.positions[offset : offset + t].to(
            self.embed.weight.dtype
        )

    def forward(
        self, images: torch.Tensor, tgt_in: torch.Tensor, widths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher forcing: images (B,1,H,W), tgt_in (B,L) BOS+ids, widths (B,) -> logits (B,L,V)."""
        memory, mask = self.encode(images, widths)
        x = self.embed_tokens(tgt_in)
        for layer in self.decoder_layers():
            x = layer(x, layer.cross_attn.keys_values(memory), mask)
        return self.head(self.norm(x))

    @torch.no_grad()
    def greedy_decode(
        self,
        images: torch.Tensor,
        bos: int,
        eos: int,
        widths: torch.Tensor | None = None,
        max_len: int | None = None,
    ) -> list[list[int]]:
        """Free greedy decoding: stops at EOS or max_len, never looks at a reference. Returns ids without BOS/EOS."""
        limit = min(max_len or self.cfg.max_len, self.cfg.max_len) - 1
        memory, mask = self.encode(images, widths)
        memory_kv = [layer.cross_attn.keys_values(memory) for layer in self.decoder_layers()]
        caches: list[dict[str, torch.Tensor]] = [{} for _ in self.layers]
        batch = images.shape[0]
        token = torch.full((batch, 1), bos, dtype=torch.long, device=images.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=images.device)
        outputs: list[torch.Tensor] = []
        for position in range(limit):
            x = self.embed_tokens(token, offset=position)
            for layer, kv, cache in zip(self.decoder_layers(), memory_kv, caches, strict=True):
                x = layer(x, kv, mask, cache)
            token = self.head(self.norm(x[:, -1:])).argmax(dim=-1)  # (B, 1)
            token = token.masked_fill(finished[:, None], eos)
            outputs.append(token)
            finished |= token[:, 0] == eos
            if bool(finished.all()):
                break
        return strip_after_eos(torch.cat(outputs, dim=1).tolist(), eos)


def strip_after_eos(rows: list[list[int]], eos: int) -> list[list[int]]:
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
