"""The two autoencoders of SALAD (Bozorgtabar et al., MICCAI 2020), in one file.

- :class:`ConvAutoencoder`: the paper's NIH network. Six conv layers down, a
  Linear to a 200-d latent that is L2-normalised, a Linear back to the last
  feature map, six (transposed) conv layers up. BatchNorm + LeakyReLU(0.2) after
  every layer except the output layer, which ends in a sigmoid. No skip
  connections.
- :class:`ResNetAutoencoder`: the paper's MURA network. A torchvision ResNet-18
  (random init, 1-channel stem) whose classifier is a Linear to the latent, and
  a decoder that mirrors ResNet-18's four stages with upsampling basic blocks.

Both models share one interface (see DESIGN.md):

- ``encode(x [B,C,H,W] in [0,1]) -> z [B,d]`` with unit L2 norm rows,
- ``decode(z [B,d]) -> x_hat [B,C,H,W]`` in (0, 1) (sigmoid),
- ``forward(x) -> (z, x_hat)``,

where C = ``cfg.in_channels`` (1 for X-rays), H = W = ``cfg.image_size`` and
d = ``cfg.latent_dim``. The submodules ``encoder`` (x -> unnormalised latent)
and ``decoder`` (z -> x_hat) hold every parameter, so losses on z train
``encoder`` alone.

Batch size 1 is handled, in eval and in train mode: every BatchNorm in both
networks normalises a feature map of at least 2x2 pixels, so its batch
statistics are defined even for one image (they are noisy, so a trainer should
still drop an incomplete last batch of one).

Use :func:`build_model` to pick the network from a :class:`ModelConfig`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from salad_lite.config import MIN_IMAGE_SIZE, ModelConfig, check_image_size

CONV_MIN_IMAGE_SIZE = MIN_IMAGE_SIZE["conv"]  # 32 px
RESNET_MIN_IMAGE_SIZE = MIN_IMAGE_SIZE["resnet18"]  # 64 px
CONV_LAYERS = 6  # conv layers in the encoder and in the decoder
CONV_MIN_FEATURE_SIDE = 4  # the conv encoder stops halving at a 4x4 feature map
CONV_MAX_CHANNELS = 512
RESNET_STAGE_CHANNELS = (64, 128, 256, 512)  # ResNet-18's layer1..layer4
RESNET_DOWNSAMPLING = 32  # stem conv /2, max-pool /2, layer2..4 /2 each
RESNET_DECODER_SEED_SIDE = 4  # side of the map the decoder's Linear produces (at most)


# ----------------------------------------------------------------------------
# shared helpers


class _AutoencoderBase(nn.Module):
    """encode / decode / forward around ``self.encoder`` and ``self.decoder``."""

    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.image_size = cfg.image_size
        self.in_channels = cfg.in_channels
        self.latent_dim = cfg.latent_dim

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{type(self).__name__} expects a torch tensor of images, got {type(x).__name__}")
        weights = next(self.parameters()).dtype
        autocast = torch.is_autocast_enabled(x.device.type)
        if not x.is_floating_point() or (x.dtype != weights and not autocast):
            hint = " (uint8 pixels: divide by 255)" if x.dtype == torch.uint8 else ""
            raise ValueError(f"{type(self).__name__} expects {weights} images in [0, 1] (its weights' dtype), got "
                             f"{x.dtype}{hint}")
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects images of shape [B, {expected[0]}, {expected[1]}, {expected[2]}], "
                f"got {list(x.shape)}"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B,C,H,W]`` in [0,1] -> latents ``[B,d]`` with unit L2 norm.

        Raises:
            TypeError: ``x`` is not a tensor.
            ValueError: ``x`` is not ``[B, C, H, W]`` with the configured C and H = W = image size, or not of
                the weights' floating dtype (outside autocast).
        """
        self._check_input(x)
        h = self.encoder(x)  # [B,d]
        return F.normalize(h, dim=1)  # [B,d], |z| = 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[B,d]`` -> reconstructions ``[B,C,H,W]`` in (0,1).

        Raises:
            ValueError: ``z`` is not ``[B, d]``.
        """
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{type(self).__name__}.decode expects latents [B, {self.latent_dim}], got {list(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B,C,H,W]`` -> ``(z [B,d] unit norm, x_hat [B,C,H,W])``; the decoder sees the normalised z."""
        z = self.encode(x)
        return z, self.decode(z)


# ----------------------------------------------------------------------------
# the NIH network: 6-layer conv encoder + 6-layer upsampling decoder


def _down_layer(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Conv -> BN -> LeakyReLU(0.2); stride 2 halves H and W (4x4 kernel), stride 1 keeps them (3x3)."""
    kernel = 4 if stride == 2 else 3
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _up_conv(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Module:
    """Mirror of :func:`_down_layer`'s conv: stride 2 doubles H and W (transposed 4x4), stride 1 keeps them."""
    if stride == 2:
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias)
    return nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=bias)


def _up_layer(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_up_conv(c_in, c_out, stride, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True))


class ConvAutoencoder(_AutoencoderBase):
    """The paper's NIH autoencoder (default 256 px, width 32, d = 200).

    Encoder: 6 conv layers with channels ``w, 2w, 4w, 8w, 8w, 8w`` (capped at
    512), w = ``cfg.width``. The first ``log2(H) - 2`` layers (at most 6) have
    stride 2, the rest stride 1, so the last map is 4x4 for H <= 256 (8x8 at
    512 px) and the network has 6 + 6 layers at every size. That map is
    flattened and projected by a Linear to d; :meth:`encode` L2-normalises it.

    Decoder: Linear d -> last map, BN + LeakyReLU, then 6 layers mirroring the
    encoder (transposed 4x4 stride-2 convs where it halved, 3x3 convs where it
    did not); the last one outputs C channels through a sigmoid.

    Shapes at 256 px, w = 32: x [B,1,256,256] -> [B,32,128,128] -> [B,64,64,64]
    -> [B,128,32,32] -> [B,256,16,16] -> [B,256,8,8] -> [B,256,4,4] -> [B,4096]
    -> z [B,200] -> [B,4096] -> [B,256,4,4] -> ... -> x_hat [B,1,256,256].

    Raises:
        salad_lite.config.ConfigError: ``cfg.image_size`` is not a power of two >= 32.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        check_image_size("conv", cfg.image_size)  # also for a config built for the other arch
        halvings = min(CONV_LAYERS, (cfg.image_size // CONV_MIN_FEATURE_SIDE).bit_length() - 1)  # log2(H/4), at most 6
        strides = [2] * halvings + [1] * (CONV_LAYERS - halvings)  # e.g. 64 px: [2,2,2,2,1,1]
        channels = [min(cfg.width * 2 ** min(i, 3), CONV_MAX_CHANNELS) for i in range(CONV_LAYERS)]
        side = cfg.image_size >> halvings  # side of the last feature map: 4 (8 at 512 px)
        self.feature_shape = (channels[-1], side, side)
        self.strides = tuple(strides)
        self.channels = tuple(channels)
        flat = channels[-1] * side * side

        c_ins = [cfg.in_channels] + channels[:-1]
        self.encoder = nn.Sequential(
            *[_down_layer(c_in, c_out, s) for c_in, c_out, s in zip(c_ins, channels, strides)],  # [B,C,H,W] -> [B,8w,side,side]
            nn.Flatten(),  # -> [B, 8w*side*side]
            nn.Linear(flat, cfg.latent_dim),  # -> [B,d]
        )

        # decoder layer i undoes encoder layer (5 - i): channels[5-i] -> c_ins[5-i]
        up_layers: list[nn.Module] = [
            _up_layer(channels[i], c_ins[i], strides[i]) for i in range(CONV_LAYERS - 1, 0, -1)
        ]
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent_dim, flat),  # [B,d] -> [B, 8w*side*side]
            nn.Unflatten(1, self.feature_shape),  # -> [B,8w,side,side]
            nn.BatchNorm2d(channels[-1]),
            nn.LeakyReLU(0.2, inplace=True),
            *up_layers,  # -> [B,w,H/2,W/2]
            _up_conv(channels[0], cfg.in_channels, strides[0], bias=True),  # -> [B,C,H,W]
            nn.Sigmoid(),
        )


# ----------------------------------------------------------------------------
# the MURA network: ResNet-18 encoder + mirrored ResNet-18 decoder


class _UpBasicBlock(nn.Module):
    """Mirror of torchvision's BasicBlock: two 3x3 convs with BN, a shortcut, ReLU.

    With ``upsample=True`` the first conv is a transposed 3x3 conv of stride 2
    (doubles H and W) and the shortcut is nearest-neighbour x2 + 1x1 conv + BN.
    [B,c_in,h,w] -> [B,c_out,h',w'] with h' = 2h if upsample else h.
    """

    def __init__(self, c_in: int, c_out: int, upsample: bool) -> None:
        super().__init__()
        if upsample:
            self.conv1: nn.Module = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        shortcut: list[nn.Module] = []
        if upsample:
            shortcut.append(nn.Upsample(scale_factor=2, mode="nearest"))
        if upsample or c_in != c_out:
            shortcut += [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.shortcut = nn.Sequential(*shortcut)  # empty Sequential = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


def _up_stage(c_in: int, c_out: int, upsample: bool) -> nn.Sequential:
    """Mirror of one ResNet-18 stage (2 blocks): keep c_in, then change channels (and upsample) last."""
    return nn.Sequential(_UpBasicBlock(c_in, c_in, upsample=False), _UpBasicBlock(c_in, c_out, upsample=upsample))


class ResNetAutoencoder(_AutoencoderBase):
    """The paper's MURA autoencoder (default 512 px, d = 200); ``cfg.width`` is not used.

    Encoder: torchvision ``resnet18(weights=None)`` with a ``cfg.in_channels``
    stem and its classifier replaced by Linear(512, d): global average pooling
    of the H/32 x W/32 layer4 map -> [B,512] -> [B,d].

    Decoder, mirroring it: Linear(d, 512*s*s) with s = min(H/32, 4), BN + ReLU,
    nearest upsampling to H/32 (the parameter-free inverse of the pooling);
    four stages of two upsampling basic blocks (512->256->128->64->64, x2 in
    the first three, like layer4..layer2); a transposed 4x4 conv x2 to 32
    channels + BN + ReLU (mirror of the max-pool); a transposed 7x7 conv x2 to
    C channels (mirror of the stem) and a sigmoid.

    Shapes at 512 px: x [B,1,512,512] -> layer4 [B,512,16,16] -> [B,512] -> z [B,200]
    -> [B,512,4,4] -> [B,512,16,16] -> [B,256,32,32] -> [B,128,64,64] -> [B,64,128,128]
    -> [B,64,128,128] -> [B,32,256,256] -> x_hat [B,1,512,512].

    Raises:
        salad_lite.config.ConfigError: ``cfg.image_size`` is not a power of two >= 64.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        check_image_size("resnet18", cfg.image_size)
        c1, c2, c3, c4 = RESNET_STAGE_CHANNELS
        side = cfg.image_size // RESNET_DOWNSAMPLING  # layer4 map side: 2 at 64 px, 16 at 512 px
        seed_side = min(side, RESNET_DECODER_SEED_SIDE)
        self.feature_shape = (c4, side, side)

        encoder = resnet18(weights=None, num_classes=cfg.latent_dim)  # fc: Linear(512, d)
        encoder.conv1 = nn.Conv2d(cfg.in_channels, c1, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(encoder.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
        self.encoder = encoder  # [B,C,H,W] -> [B,d]

        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent_dim, c4 * seed_side * seed_side),  # [B,d] -> [B,512*s*s]
            nn.Unflatten(1, (c4, seed_side, seed_side)),  # -> [B,512,s,s]
            nn.BatchNorm2d(c4),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=side // seed_side, mode="nearest") if side > seed_side else nn.Identity(),  # -> [B,512,H/32,W/32]
            _up_stage(c4, c3, upsample=True),  # -> [B,256,H/16,W/16]
            _up_stage(c3, c2, upsample=True),  # -> [B,128,H/8,W/8]
            _up_stage(c2, c1, upsample=True),  # -> [B,64,H/4,W/4]
            _up_stage(c1, c1, upsample=False),  # -> [B,64,H/4,W/4]
            nn.ConvTranspose2d(c1, c1 // 2, 4, stride=2, padding=1, bias=False),  # -> [B,32,H/2,W/2]
            nn.BatchNorm2d(c1 // 2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c1 // 2, cfg.in_channels, 7, stride=2, padding=3, output_padding=1),  # -> [B,C,H,W]
            nn.Sigmoid(),
        )


# ----------------------------------------------------------------------------


def build_model(cfg: ModelConfig) -> nn.Module:
    """The autoencoder named by ``cfg.arch`` ("conv" or "resnet18"), randomly initialised.

    Raises:
        TypeError: ``cfg`` is not a :class:`~salad_lite.config.ModelConfig` (a whole ``SaladConfig``: pass ``cfg.model``).
        ValueError: an unknown arch (only possible for a config altered behind its validation).
    """
    if not isinstance(cfg, ModelConfig):
        hint = ": pass its .model" if hasattr(cfg, "model") else ""
        raise TypeError(f"build_model needs a ModelConfig, got {type(cfg).__name__}{hint}")
    if cfg.arch == "conv":
        return ConvAutoencoder(cfg)
    if cfg.arch == "resnet18":
        return ResNetAutoencoder(cfg)
    raise ValueError(f"unknown ModelConfig.arch {cfg.arch!r}; choose 'conv' or 'resnet18'")


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
