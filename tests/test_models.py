"""Tests for salad_lite.models: shapes, unit latents, sigmoid range, sizes, gradients, memory formats."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from salad_lite.config import ModelConfig
from salad_lite.models import ConvAutoencoder, ResNetAutoencoder, build_model, count_parameters


def _images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=generator)  # [B,1,H,W] in [0,1]


def _check_outputs(z: torch.Tensor, x_hat: torch.Tensor, batch: int, size: int, latent_dim: int = 200) -> None:
    assert z.shape == (batch, latent_dim)
    assert x_hat.shape == (batch, 1, size, size)
    assert z.dtype == x_hat.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(batch), atol=1e-5, rtol=0)
    assert torch.isfinite(x_hat).all()
    assert x_hat.min() >= 0.0 and x_hat.max() <= 1.0


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("size", "width", "batch", "feature_shape"),
    [(32, 8, 4, (64, 4, 4)), (64, 16, 4, (128, 4, 4)), (128, 8, 2, (64, 4, 4)),
     (256, 8, 2, (64, 4, 4)), (512, 4, 1, (32, 8, 8))],
)
def test_conv_autoencoder_shapes_and_unit_latents(size: int, width: int, batch: int, feature_shape: tuple) -> None:
    model = ConvAutoencoder(ModelConfig(arch="conv", image_size=size, width=width)).eval()
    assert model.feature_shape == feature_shape
    with torch.no_grad():
        z, x_hat = model(_images(batch, size))
    _check_outputs(z, x_hat, batch, size)


@pytest.mark.parametrize("size", [32, 64, 128, 256, 512])
def test_conv_autoencoder_has_six_plus_six_layers_with_bn_and_leaky_relu(size: int) -> None:
    model = ConvAutoencoder(ModelConfig(arch="conv", image_size=size, width=4))
    convs = (nn.Conv2d, nn.ConvTranspose2d)
    assert sum(isinstance(m, convs) for m in model.encoder.modules()) == 6
    assert sum(isinstance(m, convs) for m in model.decoder.modules()) == 6
    # BN + LeakyReLU after all 6 encoder convs, after the decoder's Linear and its first 5 convs; none after the output
    for part in (model.encoder, model.decoder):
        assert sum(isinstance(m, nn.BatchNorm2d) for m in part.modules()) == 6
        slopes = [m.negative_slope for m in part.modules() if isinstance(m, nn.LeakyReLU)]
        assert slopes == [0.2] * 6
    assert isinstance(model.decoder[-1], nn.Sigmoid)
    assert isinstance(model.decoder[-2], convs) and model.decoder[-2].out_channels == 1
    assert model.strides.count(2) == min(6, size.bit_length() - 3)  # halve down to a 4x4 map, at most 6 times
    assert model.channels == (4, 8, 16, 32, 32, 32)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_resnet_autoencoder_shapes_and_unit_latents(size: int) -> None:
    model = ResNetAutoencoder(ModelConfig(arch="resnet18", image_size=size)).eval()
    with torch.no_grad():
        z, x_hat = model(_images(2, size))
    _check_outputs(z, x_hat, 2, size)
    assert model.feature_shape == (512, size // 32, size // 32)


def test_resnet_autoencoder_512px_single_eval_forward() -> None:
    model = ResNetAutoencoder(ModelConfig(arch="resnet18", image_size=512)).eval()
    with torch.no_grad():
        z, x_hat = model(_images(1, 512))
    _check_outputs(z, x_hat, 1, 512)


@pytest.mark.parametrize("latent_dim", [16, 200])
def test_latent_dim_follows_config(latent_dim: int) -> None:
    model = ConvAutoencoder(ModelConfig(image_size=32, width=4, latent_dim=latent_dim)).eval()
    with torch.no_grad():
        z, x_hat = model(_images(2, 32))
    _check_outputs(z, x_hat, 2, 32, latent_dim=latent_dim)


# ----------------------------------------------------------------------------- decode, sigmoid, batch of one


@pytest.mark.parametrize(("arch", "size"), [("conv", 32), ("resnet18", 64)])
def test_decode_of_any_latent_is_an_image_in_unit_range(arch: str, size: int) -> None:
    model = build_model(ModelConfig(arch=arch, image_size=size, width=8)).eval()
    z = torch.randn(3, 200) * 50.0  # far from unit norm: saturates the sigmoid, must stay in [0,1]
    with torch.no_grad():
        x_hat = model.decode(z)
    assert x_hat.shape == (3, 1, size, size)
    assert x_hat.min() >= 0.0 and x_hat.max() <= 1.0
    assert x_hat.std() > 0  # not a constant image


@pytest.mark.parametrize(("arch", "size"), [("conv", 32), ("conv", 64), ("resnet18", 64)])
def test_batch_of_one_in_eval_matches_the_batched_result(arch: str, size: int) -> None:
    model = build_model(ModelConfig(arch=arch, image_size=size, width=8))
    model.train()
    with torch.no_grad():
        for _ in range(3):  # move the BN running statistics away from their initial values
            model(_images(4, size, seed=1))
    model.eval()
    x = _images(3, size)
    with torch.no_grad():
        z_batch, x_hat_batch = model(x)
        z_one, x_hat_one = model(x[1:2])
    _check_outputs(z_one, x_hat_one, 1, size)
    torch.testing.assert_close(z_one, z_batch[1:2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(x_hat_one, x_hat_batch[1:2], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("arch", "size"), [("conv", 32), ("resnet18", 64)])
def test_batch_of_one_in_train_mode_is_handled(arch: str, size: int) -> None:
    model = build_model(ModelConfig(arch=arch, image_size=size, width=8)).train()
    z, x_hat = model(_images(1, size))
    _check_outputs(z.detach(), x_hat.detach(), 1, size)
    ((x_hat - 0.5) ** 2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- errors and dispatch


@pytest.mark.parametrize("size", [0, 16, 48, 100, 257, 96])
def test_conv_rejects_unsupported_image_size(size: int) -> None:
    with pytest.raises(ValueError, match=rf"image_size={size}.*power of two from 32"):
        ConvAutoencoder(ModelConfig(arch="conv", image_size=size))


@pytest.mark.parametrize("size", [32, 16, 192])
def test_resnet_rejects_unsupported_image_size(size: int) -> None:
    with pytest.raises(ValueError, match=rf"image_size={size}.*power of two from 64"):
        ResNetAutoencoder(ModelConfig(arch="resnet18", image_size=size))


@pytest.mark.parametrize("field", ["width", "latent_dim", "in_channels"])
def test_rejects_non_positive_dimensions(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ConvAutoencoder(ModelConfig(image_size=32, **{field: 0}))


def test_rejects_images_of_the_wrong_shape() -> None:
    model = ConvAutoencoder(ModelConfig(image_size=32, width=4)).eval()
    for bad in (torch.rand(2, 1, 64, 64), torch.rand(2, 3, 32, 32), torch.rand(1, 32, 32)):
        with pytest.raises(ValueError, match=r"\[B, 1, 32, 32\]"):
            model.encode(bad)
    with pytest.raises(ValueError, match=r"\[B, 200\]"):
        model.decode(torch.rand(2, 100))


def test_build_model_dispatches_on_arch() -> None:
    assert type(build_model(ModelConfig(arch="conv", image_size=32, width=4))) is ConvAutoencoder
    assert type(build_model(ModelConfig(arch="resnet18", image_size=64))) is ResNetAutoencoder
    with pytest.raises(ValueError, match=r"model.arch must be one of \['conv', 'resnet18'\], got 'vgg'"):
        build_model(ModelConfig(arch="vgg", image_size=64))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- parameters and gradients


def test_conv_parameter_count_at_paper_settings() -> None:
    model = ConvAutoencoder(ModelConfig(arch="conv", image_size=256, width=32))
    w = [1, 32, 64, 128, 256, 256, 256]
    convs = sum(c_in * c_out * 16 for c_in, c_out in zip(w[:-1], w[1:]))  # 4x4 kernels, no bias
    linear = 256 * 4 * 4 * 200 + 200
    bn = 2 * sum(w[1:])
    encoder = convs + linear + bn
    decoder = convs + (256 * 4 * 4 * 200 + 256 * 4 * 4) + bn + 1  # + output conv bias
    assert count_parameters(model.encoder) == encoder
    assert count_parameters(model.decoder) == decoder
    assert count_parameters(model) == encoder + decoder
    assert 5_000_000 < count_parameters(model) < 10_000_000


def test_resnet_encoder_is_resnet18_with_a_one_channel_stem() -> None:
    model = ResNetAutoencoder(ModelConfig(arch="resnet18", image_size=512))
    reference = count_parameters(resnet18(weights=None, num_classes=200)) - 2 * 64 * 7 * 7  # 3 -> 1 input channel
    assert count_parameters(model.encoder) == reference
    assert model.encoder.conv1.in_channels == 1
    assert 10_000_000 < count_parameters(model.decoder) < 20_000_000
    assert count_parameters(model) == count_parameters(model.encoder) + count_parameters(model.decoder)


@pytest.mark.parametrize(("arch", "size"), [("conv", 32), ("resnet18", 64)])
def test_latent_losses_reach_the_encoder_only(arch: str, size: int) -> None:
    model = build_model(ModelConfig(arch=arch, image_size=size, width=8)).train()
    x = _images(4, size)
    z, x_hat = model(x)
    latent_loss = -(z @ z.T).logsumexp(dim=1).sum()  # any function of z alone
    latent_loss.backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters() if p.ndim > 1)
    assert all(p.grad is None for p in model.decoder.parameters())
    model.zero_grad(set_to_none=True)
    ((x_hat - x) ** 2).mean().backward()  # the reconstruction loss trains both halves
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())


# ----------------------------------------------------------------------------- memory format


@pytest.mark.parametrize(("arch", "size"), [("conv", 64), ("resnet18", 64)])
def test_channels_last_gives_the_same_result(arch: str, size: int) -> None:
    model = build_model(ModelConfig(arch=arch, image_size=size, width=8)).eval()
    x = _images(2, size)
    with torch.no_grad():
        z_ref, x_hat_ref = model(x)
        z_cl_input, x_hat_cl_input = model(x.to(memory_format=torch.channels_last))
        model = model.to(memory_format=torch.channels_last)
        z_cl, x_hat_cl = model(x.to(memory_format=torch.channels_last))
    for z, x_hat in ((z_cl_input, x_hat_cl_input), (z_cl, x_hat_cl)):
        torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(x_hat, x_hat_ref, atol=1e-5, rtol=1e-4)


def test_channels_last_training_step_runs() -> None:
    model = build_model(ModelConfig(arch="conv", image_size=32, width=8)).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _images(8, 32).to(memory_format=torch.channels_last)
    losses = []
    for _ in range(5):
        z, x_hat = model(x)
        loss = ((x_hat - x) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_inputs_of_another_kind_are_refused_by_name() -> None:
    cfg = ModelConfig(image_size=32, width=4, latent_dim=8)
    model = build_model(cfg)
    x = torch.rand(2, 1, 32, 32)
    for bad, message in ((x.half(), "expects torch.float32 images in \\[0, 1\\] .* got torch.float16"),
                         ((x * 255).to(torch.uint8), r"got torch.uint8 \(uint8 pixels: divide by 255\)")):
        with pytest.raises(ValueError, match=message):
            model.encode(bad)
    with pytest.raises(TypeError, match="expects a torch tensor of images, got ndarray"):
        model.encode(x.numpy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.encode(x).shape == (2, 8)  # autocast casts inside the network
    from salad_lite.config import profile_config

    with pytest.raises(TypeError, match="build_model needs a ModelConfig, got SaladConfig: pass its .model"):
        build_model(profile_config("smoke"))
