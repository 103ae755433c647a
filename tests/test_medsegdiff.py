"""MedSegDiff: seeded sampling, batched ensembles with one condition pass, flat sampling memory, the fusion rules,
the V1 FF-Parser path, the learned-variance (hybrid) loss and clear size errors. Tiny variants: a few seconds."""

from __future__ import annotations

import gc
import warnings
from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D

from conftest import TINY_OPTIONS
from genmedseg.errors import ConfigError
from genmedseg.models.base import image_generators
from genmedseg.models.medsegdiff import MEDSEGDIFF_B, FFParser, MedSegDiff, fuse
from genmedseg.models.registry import create_model, default_run_config

SIZE = 16


def tiny(**options: Any) -> MedSegDiff:
    torch.manual_seed(0)
    return create_model("medsegdiff", image_size=SIZE, **{**TINY_OPTIONS["medsegdiff"], **options}).eval()


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def batch(size: int = 2) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(size, 3, SIZE, SIZE, generator=generator),
        "mask": (torch.rand(size, 1, SIZE, SIZE, generator=generator) > 0.6).float(),
        "name": [str(i) for i in range(size)],
    }


class CallRecorder:
    """Wraps a module's ``forward``: counts calls, records batch sizes and (optionally) the live tensor bytes."""

    def __init__(self, module: torch.nn.Module, measure_memory: bool = False) -> None:
        self.forward = module.forward
        self.batches: list[int] = []
        self.grad_enabled: list[bool] = []
        self.live_bytes: list[int] = []
        self.measure_memory = measure_memory
        module.forward = self  # nn.Module.__call__ looks the instance attribute up first

    def __call__(self, first: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.batches.append(first.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        if self.measure_memory:
            self.live_bytes.append(live_tensor_bytes())
        return self.forward(first, *args, **kwargs)


def live_tensor_bytes() -> int:
    """Bytes of every distinct storage held by a live tensor (parameters included)."""
    gc.collect()
    storages = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on torch's deprecated module attributes warns
        objects = [obj for obj in gc.get_objects() if torch.is_tensor(obj)]
    for tensor in objects:
        try:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        except RuntimeError:  # tensors without real storage (meta, or fake ones an earlier export test left behind)
            continue
    return sum(storages.values())


def test_same_seed_same_masks_and_independent_of_the_batch() -> None:
    model = tiny()
    x = images(3)
    names = ["a", "b", "c"]
    options = {"sampler": "ddpm", "steps": 4, "ensemble": 2}
    first = model.predict(x, generator=image_generators(7, names), **options)
    second = model.predict(x, generator=image_generators(7, names), **options)
    assert torch.equal(first.probability, second.probability)
    assert torch.equal(first.maps["uncertainty"], second.maps["uncertainty"])
    alone = model.predict(x[1:2], generator=image_generators(7, ["b"]), **options)
    assert torch.allclose(alone.probability, first.probability[1:2], atol=1e-5)
    other = model.predict(x, generator=image_generators(8, names), **options)
    assert not torch.equal(other.probability, first.probability)
    # Without generators the `seed` option seeds each image by its position.
    assert torch.equal(model.predict(x, seed=3, **options).probability, model.predict(x, seed=3, **options).probability)


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 3), ("dpm-solver", 4), ("ddpm", 2)])
def test_the_ensemble_is_one_batch_and_the_condition_runs_once(sampler: str, steps: int) -> None:
    model = tiny()
    unet, condition = CallRecorder(model.unet), CallRecorder(model.condition)
    prediction = model.predict(images(2), sampler=sampler, steps=steps, ensemble=5)
    assert condition.batches == [2]
    assert unet.batches == [2 * 5] * model.diffusion.model_evaluations(sampler, steps)
    assert not any(unet.grad_enabled + condition.grad_enabled)
    assert prediction.maps["uncertainty"].shape == (2, 1, SIZE, SIZE)
    assert prediction.maps["uncertainty"].max() > 0  # members differ


def test_dpm_solver_20_with_5_members_costs_100_unet_evaluations_per_image() -> None:
    model = tiny()
    unet = CallRecorder(model.unet)
    model.predict(images(1), sampler="dpm-solver", steps=20, ensemble=5)
    assert sum(unet.batches) == 100 and len(unet.batches) == 20


def test_sampling_memory_does_not_grow_with_steps() -> None:
    """No graph and nothing kept per step: the live tensors are the same at every UNet call from the third on (DPM-
    Solver++ 2M keeps the previous output), for 2 steps and for 8; nothing outlives ``predict`` but its answer."""
    model = tiny()
    x = images(2)
    before = live_tensor_bytes()
    for steps in (3, 8):
        unet = CallRecorder(model.unet, measure_memory=True)
        prediction = model.predict(x, sampler="dpm-solver", steps=steps, ensemble=3)
        model.unet.forward = unet.forward
        assert max(unet.live_bytes[2:]) == unet.live_bytes[2], unet.live_bytes
        assert not prediction.probability.requires_grad and prediction.probability.grad_fn is None
        del prediction, unet
    assert live_tensor_bytes() <= before


def test_fusion_rules_on_hand_computed_members() -> None:
    members = torch.tensor([0.9, 0.6, 0.2, 0.1]).view(1, 4, 1, 1, 1)
    assert fuse(members, "mean").item() == pytest.approx(0.45)
    assert fuse(members, "vote").item() == pytest.approx(0.5)  # 2 of 4 above 0.5: no strict majority
    assert fuse(members, "released").item() == pytest.approx(0.45**2)  # what the original's `staple` returns
    with pytest.raises(ConfigError, match="--sample fusion=staple: choose one of mean, vote, released"):
        MedSegDiff.resolve_sampling({"fusion": "staple"})


def test_predict_uses_the_fusion_and_reports_the_spread() -> None:
    model = tiny()
    options = {"sampler": "ddim", "steps": 2, "ensemble": 3, "seed": 1}
    mean = model.predict(images(1), fusion="mean", **options)
    released = model.predict(images(1), fusion="released", **options)
    assert torch.allclose(released.probability, mean.probability**2)
    single = model.predict(images(1), **{**options, "ensemble": 1})
    assert torch.equal(single.maps["uncertainty"], torch.zeros_like(single.probability))


def test_ff_parser_starts_as_the_identity_at_any_size_and_learns() -> None:
    parser = FFParser(3, 8, 8)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(parser(x), x, atol=1e-5)
    wide = torch.randn(2, 3, 8, 12)
    assert torch.allclose(parser(wide), wide, atol=1e-5)  # the filter resampled to the other spectrum grid
    parser(x).pow(2).sum().backward()
    assert parser.weight.grad is not None and parser.weight.grad.abs().sum() > 0


def test_v1_fuses_at_every_level_and_combines_with_calibration() -> None:
    model = tiny(version="v1")
    assert len(model.unet.fusions) == 1 and model.unet.bottleneck is not None  # one down-sampled level here
    losses = model.train().training_loss(batch())
    losses["diffusion"].backward()
    parser = next(iter(model.unet.fusions.values())).parser.weight
    assert parser.grad is not None
    # V1's answer per member, as released: (cal + sample) / 2 where they agree, else clamp(cal + 0.25 sample).
    samples = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])[None]  # (1, 2, 1, 2, 2)
    cal = torch.full((1, 1, 2, 2), 0.8)
    combined = MedSegDiff.released_v1_output(samples, cal)
    assert torch.allclose(combined[0, 0], torch.full((1, 2, 2), 0.9))
    assert torch.allclose(combined[0, 1], torch.full((1, 2, 2), 0.8))
    assert model.eval().predict(torch.rand(1, 3, SIZE, 2 * SIZE), sampler="ddim", steps=2).probability.shape == (
        1,
        1,
        SIZE,
        2 * SIZE,
    )


def test_anchor_features_are_detached_so_the_condition_learns_from_its_own_loss() -> None:
    model = tiny().train()
    losses = model.training_loss(batch())
    losses["diffusion"].backward()
    assert all(p.grad is None for p in model.condition.parameters())
    model.zero_grad(set_to_none=True)
    losses = model.training_loss(batch())
    assert losses["loss"].item() == pytest.approx(losses["diffusion"].item() + 10 * losses["calibration"].item())


def test_learned_variance_hybrid_loss() -> None:
    model = tiny(learned_variance=True).train()
    losses = model.training_loss(batch())
    assert set(losses) == {"loss", "diffusion", "calibration", "vb"} and losses["vb"] > 0
    assert losses["loss"].item() == pytest.approx(
        losses["diffusion"].item() + losses["vb"].item() + 10 * losses["calibration"].item(), rel=1e-5
    )
    # The bound trains only the variance channel (frozen mean), and vanishes for the exact noise with the true
    # posterior variance (v = -1).
    clean = batch()["mask"] * 2 - 1
    noise = torch.randn_like(clean)
    t = torch.tensor([10, 500])
    noisy = model.diffusion.add_noise(clean, noise, t)
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1).requires_grad_()
    vb = model.variational_bound(output, clean, noisy, t)
    assert torch.allclose(vb, torch.zeros(2), atol=1e-4)
    (vb.sum() + model.variational_bound(output * 0.5, clean, noisy, t).sum()).backward()
    assert output.grad[:, :1].abs().max() == 0 and output.grad[:, 1:].abs().max() > 0
    # And it samples with every solver (DDPM uses the learned variance, the others the mean).
    for sampler in ("ddpm", "ddim", "dpm-solver"):
        assert torch.isfinite(model.eval().predict(images(1), sampler=sampler, steps=2).probability).all()


def test_sizes_must_be_multiples_of_the_stride_and_say_so() -> None:
    model = tiny()
    assert model.size_multiple == 4
    with pytest.raises(ConfigError, match=r"input 18x16 is not a multiple of 4 .* resize to e.g. 16x16"):
        model.predict(torch.rand(1, 3, 18, 16), steps=1)
    with pytest.raises(ConfigError, match="image_size 30 is not a multiple of 4"):
        MedSegDiff(image_size=30, **TINY_OPTIONS["medsegdiff"])
    assert MedSegDiff(image_size=512, model_channels=8, channel_mult=(1, 2), highway_pools=2).image_size == 512
    assert MedSegDiff(**MEDSEGDIFF_B).size_multiple == 32
    with pytest.raises(ConfigError, match="set highway_channels=4"):
        MedSegDiff(image_size=SIZE, model_channels=16, channel_mult=(1, 2), highway_pools=2, highway_channels=8)


def test_grayscale_images() -> None:
    model = tiny(image_channels=1)
    gray = images(2)[:, :1].expand(-1, 3, -1, -1)
    assert model.unet.conv_in.in_channels == 2
    assert model.predict(gray, sampler="ddim", steps=2, ensemble=2).probability.shape == (2, 1, SIZE, SIZE)
    assert torch.isfinite(model.train().training_loss(batch())["loss"])


def test_paper_size_and_released_training_defaults() -> None:
    config = default_run_config("medsegdiff").train
    assert (config.lr, config.weight_decay, config.schedule, config.ema_decay) == (1e-4, 0.0, "constant", 0.9999)
    assert MedSegDiff.validation_sampling == {"sampler": "ddim", "steps": 10, "ensemble": 1}
    # MedSegDiff-B: 128 channels, 6 levels (channel_mult for 256), 2 residual blocks, attention at 16 x 16 only.
    model = MedSegDiff(**MEDSEGDIFF_B)
    side, attention_sides, blocks = MEDSEGDIFF_B["image_size"], set(), 0
    for block in model.unet.down:
        if isinstance(block[0], Downsample2D):
            side //= 2
        else:
            blocks += 1
            attention_sides |= {side for layer in block if isinstance(layer, Attention)}
    assert blocks == 2 * 6 and attention_sides == {16} and side == 8
    assert model.unet.conv_in.out_channels == 128 and model.unet.out[-1].out_channels == 2
    assert 130e6 < model.num_parameters() < 133e6
