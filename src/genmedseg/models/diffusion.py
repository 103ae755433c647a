"""What the diffusion methods share: the DDPM noise process for training and diffusers' samplers for inference.

:class:`GaussianDiffusion` holds the training schedule (diffusers ``DDPMScheduler``: linear betas 1e-4 -> 0.02 over
1000 steps by default, epsilon prediction) and makes a sampler from the same schedule on demand: ``ddpm``
(ancestral, any number of strided steps), ``ddim`` (eta 0: deterministic) or ``dpm-solver`` (DPM-Solver++, second
order multistep). :meth:`GaussianDiffusion.sample` runs the reverse chain without building a graph (memory stays
flat across steps), with one random generator per sample so that a sample does not depend on its batch.

Example::

    diffusion = GaussianDiffusion()
    t = diffusion.random_timesteps(4, device)
    noisy = diffusion.add_noise(x0, noise, t)                          # training input
    x0 = diffusion.sample(lambda x, t: unet(x, t), noise, generators, sampler="ddim", steps=50)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from genmedseg.errors import ConfigError, check_choice

SAMPLERS = ("ddpm", "ddim", "dpm-solver")
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GaussianDiffusion:
    """The DDPM forward process and its samplers, from diffusers' schedulers.

    Args:
        train_steps: diffusion steps T of training.
        beta_schedule: diffusers' name (``linear`` as in DDPM and all three diffusion papers here).
        learned_variance: the denoiser also predicts the variance interpolation (``learned_range``, as improved DDPM
            and MedSegDiff's ``learn_sigma``): its output has twice the sample's channels, the second half ``v``.
        clip_sample: clamp the predicted clean sample to [-1, 1] at every step (``clip_denoised`` of the originals).
    """

    def __init__(
        self,
        train_steps: int = 1000,
        beta_schedule: str = "linear",
        learned_variance: bool = False,
        clip_sample: bool = True,
    ) -> None:
        from diffusers import DDPMScheduler

        self.learned_variance = learned_variance
        self.clip_sample = clip_sample
        self.scheduler = DDPMScheduler(
            num_train_timesteps=train_steps,
            beta_schedule=beta_schedule,
            variance_type="learned_range" if learned_variance else "fixed_small",
            clip_sample=clip_sample,
        )

    @property
    def train_steps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def random_timesteps(self, batch: int, device: torch.device) -> torch.Tensor:
        """Uniform timesteps ``(batch,)`` in ``[0, T)`` (the global RNG: seeded and resumed by the trainer)."""
        return torch.randint(0, self.train_steps, (batch,), device=device)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise``."""
        return self.scheduler.add_noise(clean, noise, timesteps)

    def make_sampler(self, sampler: str, steps: int) -> Any:
        """A fresh diffusers scheduler of the training schedule with ``steps`` inference steps."""
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        check_choice("sampler", sampler, SAMPLERS)
        if not 1 <= steps <= self.train_steps:
            raise ConfigError(f"steps={steps}: choose 1 to {self.train_steps} (the training schedule's length)")
        config = dict(self.scheduler.config)
        if sampler == "ddpm":
            scheduler = DDPMScheduler.from_config(config)
        elif sampler == "ddim":
            scheduler = DDIMScheduler.from_config(config, clip_sample=self.clip_sample)
        else:
            # DPM-Solver++ (2M) with dynamic thresholding of the clean-sample prediction, as MedSegDiff samples.
            scheduler = DPMSolverMultistepScheduler.from_config(
                config,
                algorithm_type="dpmsolver++",
                solver_order=2,
                thresholding=self.clip_sample,
                dynamic_thresholding_ratio=0.995,
                sample_max_value=1.0,
                variance_type=None,
            )
        scheduler.set_timesteps(steps)
        return scheduler

    def model_evaluations(self, sampler: str, steps: int) -> int:
        """Denoiser evaluations per sample of a run of ``sampler`` with ``steps`` steps."""
        return len(self.make_sampler(sampler, steps).timesteps)

    @torch.no_grad()
    def sample(
        self,
        denoise: Denoiser,
        noise: torch.Tensor,
        generators: Sequence[torch.Generator] | None = None,
        sampler: str = "ddim",
        steps: int = 50,
    ) -> torch.Tensor:
        """Run the reverse chain from ``noise`` (``x_T``) to a clean sample ``x_0``.

        ``denoise(x_t, t)`` returns the predicted noise (and the variance channels with ``learned_variance``) for a
        batch at integer timestep ``t`` (a ``(batch,)`` tensor). ``generators``: one per sample, for the noise that
        the ancestral sampler adds at every step (DDIM and DPM-Solver++ add none).
        """
        scheduler = self.make_sampler(sampler, steps)
        sample = noise * scheduler.init_noise_sigma
        generator = list(generators) if generators is not None else None
        for timestep in scheduler.timesteps:
            t = torch.full((sample.shape[0],), int(timestep), device=sample.device, dtype=torch.long)
            output = denoise(scheduler.scale_model_input(sample, timestep), t)
            if self.learned_variance and sampler != "ddpm":
                output = output[:, : sample.shape[1]]  # DDIM and DPM-Solver use the mean only
            sample = scheduler.step(output, timestep, sample, generator=generator).prev_sample
        return sample
