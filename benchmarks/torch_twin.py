"""The plain-PyTorch twin of :class:`labelset_jax.models.UNet3D`, shared by the speed benchmarks.

Layer for layer the same network (channels-first, as PyTorch wants it): ``conv 3³ (padding 1,
no bias before a norm) → InstanceNorm3d(affine, eps 1e-5) → LeakyReLU(0.01)`` blocks, two per
stage; ``2³`` max pooling or a stride-2 first conv to go down a level; trilinear ×2 upsampling
(``align_corners=False``) + ``1³`` conv to go up; ``[skip, upsampled]`` concatenation; a ``1³``
conv head. :func:`copy_weights` loads a JAX model's parameters into the twin, so that a benchmark
can check that both compute the same function before it times them.

Only the configurations the benchmarks use are supported: instance norm, LeakyReLU, trilinear
upsampling, no deep supervision.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelset_jax.models import count_params as jax_count_params


class Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.InstanceNorm3d(cout, eps=1e-5, affine=True), nn.LeakyReLU(0.01))


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: str | None):
        super().__init__()
        self.pool = downsample == "maxpool"
        self.first = Block(cin, cout, 2 if downsample == "stride" else 1)
        self.second = Block(cout, cout, 1)

    def forward(self, x):
        if self.pool:
            x = F.max_pool3d(x, 2)
        return self.second(self.first(x))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Conv3d(cin, cout, 1)

    def forward(self, x):
        return self.proj(F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False))


class TorchUNet3D(nn.Module):
    """``[B, C_in, D, H, W] -> [B, num_classes, D, H, W]`` logits; ``features`` per level."""

    def __init__(self, *, num_classes: int, in_channels: int, features: tuple[int, ...], downsample: str):
        super().__init__()
        f = features
        self.encoder = nn.ModuleList(
            [Stage(in_channels if l == 0 else f[l - 1], f[l], None if l == 0 else downsample) for l in range(len(f))])
        self.upsamples = nn.ModuleList([Up(f[l + 1], f[l]) for l in range(len(f) - 1)])
        self.decoder = nn.ModuleList([Stage(2 * f[l], f[l], None) for l in range(len(f) - 1)])
        self.head = nn.Conv3d(f[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for l in reversed(range(len(self.decoder))):
            x = self.decoder[l](torch.cat([skips[l], self.upsamples[l](x)], dim=1))
        return self.head(x)


def twin_of(model) -> TorchUNet3D:
    """A twin with ``model``'s architecture (fresh PyTorch initialisation)."""
    return TorchUNet3D(num_classes=model.num_classes, in_channels=model.in_channels, features=model.features,
                       downsample=model.downsample)


def matched_twin(model) -> TorchUNet3D:
    """The twin of ``model`` holding its weights; asserts that both have the same parameter count."""
    twin = twin_of(model)
    ours, theirs = jax_count_params(model), count_params(twin)
    assert ours == theirs, f"parameter counts differ: ours {ours:,}, twin {theirs:,}"
    copy_weights(twin, model)
    return twin


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv(conv: nn.Conv3d, flax_conv) -> None:
    kernel = np.asarray(flax_conv.kernel[...])  # [kd, kh, kw, in, out] -> [out, in, kd, kh, kw]
    conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))))
    if conv.bias is not None:
        conv.bias.copy_(torch.from_numpy(np.asarray(flax_conv.bias[...])))


def _block(block: Block, flax_block) -> None:
    _conv(block[0], flax_block.conv)
    block[1].weight.copy_(torch.from_numpy(np.asarray(flax_block.norm.scale[...])))
    block[1].bias.copy_(torch.from_numpy(np.asarray(flax_block.norm.bias[...])))


@torch.no_grad()
def copy_weights(twin: TorchUNet3D, model) -> None:
    """Loads the parameters of the JAX ``model`` into ``twin``."""
    for stage, flax_stage in zip([*twin.encoder, *twin.decoder], [*model.encoder, *model.decoder], strict=True):
        _block(stage.first, flax_stage.first)
        _block(stage.second, flax_stage.second)
    for up, flax_up in zip(twin.upsamples, model.upsamples, strict=True):
        _conv(up.proj, flax_up.proj)
    _conv(twin.head, model.heads[0])


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-5,
                   smooth_nr: float = 1e-5) -> torch.Tensor:
    """Squared soft Dice of the softmax, mean over classes and batch: what ``leaf_dice`` computes
    on fully labelled volumes (``labels`` are leaf ids ``[B, D, H, W]``)."""
    probs = torch.softmax(logits, dim=1)
    target = F.one_hot(labels, logits.shape[1]).permute(0, 4, 1, 2, 3).to(probs.dtype)
    axes = (2, 3, 4)
    num = 2 * (probs * target).sum(axes) + smooth_nr
    den = (probs * probs).sum(axes) + target.sum(axes) + eps
    return (1 - num / den).mean()
