"""The method surface: what the trainer needs from every method, and the two roles a method plays.

Every method is an ``nn.Module`` subclass of :class:`Method`, which is all the trainer knows:

- ``training_loss(batch) -> {"loss": ..., parts}``;
- ``validation_metrics(batch, generator=...) -> {name: per-image values}``, with ``monitor = (name, "max"|"min")``
  naming the one that selects checkpoints, computed with the method's cheap ``validation_sampling``;
- ``parameter_groups()`` (learning-rate scale per group), ``begin_epoch(epoch, epochs)`` for schedules of its own;
- ``preview(batch)``: image panels that the trainer saves as a grid every few epochs;
- frozen pretrained parts named by role (``pretrained_parts``), loaded by :meth:`Method.create` and left out of
  training checkpoints, kept in the model folder (``save_pretrained``).

A method plays one of two roles:

- :class:`SegmentationMethod`: ``predict(images, size=, prompts=, generator=, **sampling) -> Prediction`` (a
  probability map and named extra maps such as ``uncertainty``). A method that gives one deterministic answer at its
  input size only implements ``predict_proba(images)``.
- :class:`GenerationMethod`: ``generate(masks, generator=, **sampling) -> images`` (mask -> image synthesis).

Randomness at inference comes from ``generator``: a list with one ``torch.Generator`` (on the CPU) per image, so
that an image's sample does not depend on which other images share its batch (:func:`per_image_randn`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from genmedseg.atomic import atomic_write
from genmedseg.errors import ConfigError, ExportError
from genmedseg.folders import ModelFolder
from genmedseg.pretrained import PretrainedPart

FORMAT_VERSION = 2
# Convolutions run faster on channels-last (NHWC) tensors: oneDNN on CPU (1.1-1.4x per Wave-GMS training step,
# benchmarks/speed.py) and tensor cores on GPU. The trainer and the predictor put models and batches in it.
MEMORY_FORMAT = torch.channels_last
Generators = Sequence[torch.Generator] | None
Boxes = Sequence[torch.Tensor] | None
"""Box prompts: per image a ``(K, 4)`` float tensor of ``(x_min, y_min, x_max, y_max)`` in input pixels, K >= 0."""


@dataclass(frozen=True)
class SamplingOption:
    """One key of ``--sample KEY=VALUE``: its default, what it does, and the values it admits."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None

    def parse(self, key: str, value: Any) -> Any:
        """``value`` (text from the command line, or a Python value) as the type of the default, checked."""
        kind = type(self.default)
        try:
            if kind is bool:
                parsed = value if isinstance(value, bool) else {"true": True, "false": False}[str(value).lower()]
            else:
                parsed = kind(value)
                if kind is int and float(value) != parsed:
                    raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"--sample {key}={value}: expected a {kind.__name__} ({self.help})") from None
        if self.choices is not None and parsed not in self.choices:
            raise ConfigError(f"--sample {key}={value}: choose one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and parsed < self.minimum:
            raise ConfigError(f"--sample {key}={value}: must be at least {self.minimum:g}")
        return parsed

    def describe(self, key: str) -> str:
        choices = f" ({'|'.join(map(str, self.choices))})" if self.choices else ""
        return f"{key}={self.default}{choices}: {self.help}"


@dataclass
class Prediction:
    """What a segmenter answers for a batch: the foreground ``probability`` ``(B, 1, H, W)`` in [0, 1] and named extra
    maps of the same shape, also in [0, 1] (e.g. ``uncertainty``: the standard deviation across samples)."""

    probability: torch.Tensor
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def resized(self, size: tuple[int, int] | None) -> Prediction:
        """Every map resized (bilinear) to ``size``; for methods that answer only at their input size."""
        if size is None or tuple(self.probability.shape[-2:]) == tuple(size):
            return self

        def resize(values: torch.Tensor) -> torch.Tensor:
            return F.interpolate(values, size=tuple(size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)

        return Prediction(resize(self.probability), {name: resize(values) for name, values in self.maps.items()})


@dataclass(frozen=True)
class ExportGraph:
    """What ``genmedseg export`` writes to ONNX: a module with a tensor-only ``forward``, example inputs (batch first;
    the batch axis is dynamic), the output names, and the contract a runtime must keep, in words."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]
    contract: str


class ProbabilityGraph(nn.Module):
    """``forward(images) = method.predict_proba(images)``: the whole inference path of a single-pass segmenter."""

    def __init__(self, method: SegmentationMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.predict_proba(images)


def image_generators(seed: int, keys: Iterable[str]) -> list[torch.Generator]:
    """One CPU generator per image, seeded by ``(seed, key)`` (e.g. the image's name), independent of batching."""
    generators = []
    for key in keys:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1)))
    return generators


def per_image_randn(generators: Generators, batch: int, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise ``(batch, *shape)``, image ``i`` drawn from ``generators[i]`` (the global RNG if None).

    Drawn on the CPU and moved to ``like``'s device and dtype, so the same seed gives the same noise everywhere.
    """
    if generators is None:
        noise = torch.randn(batch, *shape)
    else:
        if len(generators) != batch:
            raise ValueError(f"{len(generators)} generators for a batch of {batch} images")
        noise = torch.stack([torch.randn(*shape, generator=generator) for generator in generators])
    return noise.to(device=like.device, dtype=like.dtype)


class Method(nn.Module):
    """What the trainer needs from every method (see the module docstring).

    Subclasses set ``name`` and ``role`` (through the role classes), take their frozen parts as constructor arguments
    named like the keys of ``pretrained_parts`` and everything else as JSON-serialisable options recorded in
    ``self.options`` (``image_size`` included), so that ``from_config(get_config())`` rebuilds the architecture.
    ``size_multiple``: input sides must be divisible by it. ``training_defaults``: train settings this method needs
    unless the user says otherwise (e.g. ``{"lr": 1e-4, "schedule": "constant"}``).
    """

    name: ClassVar[str] = ""
    role: ClassVar[str] = ""
    size_multiple: ClassVar[int] = 1
    pretrained_parts: ClassVar[dict[str, PretrainedPart]] = {}
    sampling_options: ClassVar[dict[str, SamplingOption]] = {}
    validation_sampling: ClassVar[dict[str, Any]] = {}
    monitor: ClassVar[tuple[str, str]] = ("loss", "min")
    training_defaults: ClassVar[dict[str, Any]] = {}
    uses_label_maps: ClassVar[bool] = False
    options: dict[str, Any]

    def __init__(self, image_size: int) -> None:
        super().__init__()
        if image_size < self.size_multiple or image_size % self.size_multiple:
            fitting = max(self.size_multiple, image_size - image_size % self.size_multiple)
            raise ConfigError(
                f"image_size {image_size} is not a multiple of {self.size_multiple}, which {self.name} needs; "
                f"use e.g. {fitting}"
            )
        self.image_size = image_size

    # ------------------------------------------------------------------------------------------------- construction

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Constructor options (frozen parts excluded) and their defaults (``inspect.Parameter.empty`` if none)."""
        parameters = inspect.signature(cls.__init__).parameters
        return {
            name: parameter.default
            for name, parameter in parameters.items()
            if name != "self" and name not in cls.pretrained_parts and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
        }

    @classmethod
    def create(cls, pretrained: Mapping[str, str | None] | None = None, **options: Any) -> Method:
        """A new, untrained model with its frozen parts loaded: ``pretrained`` maps roles to sources (the others
        are found through their environment variable or default)."""
        pretrained = dict(pretrained or {})
        unknown = sorted(set(pretrained) - set(cls.pretrained_parts))
        if unknown:
            roles = ", ".join(cls.pretrained_parts) or "none"
            raise ConfigError(f"{cls.name} has no pretrained part {unknown}; its parts: {roles}")
        parts = {role: part.load(pretrained.get(role)) for role, part in cls.pretrained_parts.items()}
        return cls(**parts, **options)

    @classmethod
    def with_random_weights(cls, tiny: bool = False, **options: Any) -> Method:
        """Random weights everywhere, frozen parts included (paper sizes, or ``tiny``): for counts and timings only."""
        return cls(**options)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Method:
        """The architecture described by ``get_config()``, with weights still to be loaded."""
        options = dict(config)
        parts = {role: part.architecture(options.pop(role)) for role, part in cls.pretrained_parts.items()}
        return cls(**parts, **options)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments: each frozen part's architecture config, then the options."""
        return {**{role: module.config for role, module in self.frozen_modules().items()}, **self.options}

    def frozen_modules(self) -> dict[str, nn.Module]:
        """The frozen pretrained parts by role (default: the attribute named like the role)."""
        return {role: getattr(self, role) for role in self.pretrained_parts}

    def frozen_prefixes(self) -> dict[str, str]:
        """State-dict prefix (``"autoencoder."``) of each frozen part, by role."""
        names = {id(module): name for name, module in self.named_modules()}
        return {role: names[id(module)] + "." for role, module in self.frozen_modules().items()}

    # ------------------------------------------------------------------------------------------------- training

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss of one batch ``{"image": (B,3,H,W) in [0,1], "mask": (B,1,H,W) in {0,1}, "name": [...]}``
        (plus ``"labels"``, class ids ``(B,1,H,W)``, for methods that use label maps): ``{"loss": ..., parts}``."""
        raise NotImplementedError

    def validation_metrics(self, batch: dict[str, Any], *, generator: Generators = None) -> dict[str, torch.Tensor]:
        """Per-image validation values ``{name: (B,)}``; ``monitor`` names the one that selects checkpoints."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in optimiser groups, each with an ``lr_scale`` relative to the configured rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before each training epoch (0-based ``epoch`` of ``epochs``); no-op by default."""

    def preview(self, batch: dict[str, Any], *, generator: Generators = None) -> dict[str, torch.Tensor]:
        """Named image panels ``(B, 1 or 3, H, W)`` in [0, 1] showing what the model makes of ``batch``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- inference

    @classmethod
    def resolve_sampling(cls, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every sampling key of this method with its value: the defaults, overridden by ``given`` (checked)."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(cls.sampling_options))
        if unknown:
            if not cls.sampling_options:
                raise ConfigError(
                    f"--sample {unknown[0]}: {cls.name} takes no sampling options "
                    "(it gives one deterministic answer per image)"
                )
            valid = "; ".join(option.describe(key) for key, option in cls.sampling_options.items())
            raise ConfigError(f"--sample: unknown key(s) {', '.join(unknown)} for {cls.name}; valid keys: {valid}")
        return {key: option.parse(key, given.get(key, option.default)) for key, option in cls.sampling_options.items()}

    def export_graph(self) -> ExportGraph:
        """The graph ``genmedseg export`` writes to ONNX; raises :class:`ExportError` saying why a method has none."""
        raise ExportError(f"{self.name} has no ONNX export")

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder: str | Path, card: str | None = None, **metadata: Any) -> Path:
        """Write ``config.json``, ``model.safetensors`` (frozen parts included) and a model card into ``folder``."""
        target = ModelFolder(Path(folder))
        target.path.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "role": self.role,
            "config": self.get_config(),
            "trainable_parameters": self.num_trainable_parameters(),
            **metadata,
        }
        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        atomic_write(target.weights, lambda path: save_file(state, str(path)))
        atomic_write(target.config, lambda path: path.write_text(json.dumps(config, indent=2) + "\n"))
        if card is not None:
            atomic_write(target.card, lambda path: path.write_text(card))
        return target.path


class SegmentationMethod(Method):
    """The segmenter role: binary segmentation of RGB images in [0, 1].

    ``prompt_kind``: ``"box"`` for methods that take box prompts (``validation_prompts`` then gives the ground-truth
    boxes during validation), None otherwise. A method that answers at any output resolution overrides ``predict``;
    the default resizes the answer of ``predict_proba``.
    """

    role = "segmenter"
    monitor = ("dice", "max")
    prompt_kind: ClassVar[str | None] = None

    def predict(
        self,
        images: torch.Tensor,
        *,
        size: tuple[int, int] | None = None,
        prompts: Boxes = None,
        generator: Generators = None,
        **sampling: Any,
    ) -> Prediction:
        """Probability map (and extra maps) of images ``(B,3,H,W)`` in [0, 1], at ``size`` (default: ``(H, W)``)."""
        self.check_prompts(prompts)
        if sampling:
            self.resolve_sampling(sampling)
        return Prediction(self.predict_proba(images)).resized(size)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground probability ``(B,1,H,W)`` in [0, 1] for images ``(B,3,H,W)`` in [0, 1]."""
        raise NotImplementedError

    def export_graph(self) -> ExportGraph:
        """A single-pass segmenter (one that implements ``predict_proba``) exports its whole inference path."""
        if type(self).predict_proba is SegmentationMethod.predict_proba:
            raise ExportError(
                f"{self.name} samples, takes prompts or answers at any resolution, so `predict` is not one graph; "
                "its export_graph says what it exports instead"
            )
        size = self.image_size
        return ExportGraph(
            module=ProbabilityGraph(self),
            inputs={"images": torch.rand(2, 3, size, size)},
            outputs=("probability",),
            contract=(
                f"input `images`: float32 (batch, 3, {size}, {size}), RGB in [0, 1] (uint8 / 255; grayscale "
                "replicated to 3 channels; resized to the input size with antialiased bilinear interpolation); "
                "output `probability`: float32 (batch, 1, H, W) in [0, 1], foreground where > 0.5; resize it "
                "(bilinear) back to each image's own size"
            ),
        )

    def check_prompts(self, prompts: Boxes) -> None:
        if prompts is not None and self.prompt_kind is None:
            raise ConfigError(f"{self.name} takes no prompts; leave out --prompts")

    def validation_prompts(self, batch: dict[str, Any]) -> Boxes:
        """Prompts used for validation: the ground-truth boxes for box-prompted methods, else none."""
        if self.prompt_kind is None:
            return None
        from genmedseg.prompts import boxes_from_masks

        return boxes_from_masks(batch["mask"])

    def validation_metrics(self, batch: dict[str, Any], *, generator: Generators = None) -> dict[str, torch.Tensor]:
        from genmedseg.metrics import THRESHOLD, batch_dice

        prediction = self.predict(
            batch["image"], prompts=self.validation_prompts(batch), generator=generator, **self.validation_sampling
        )
        foreground = (prediction.probability > THRESHOLD).flatten(1)
        # Besides Dice, the two trivial answers: the trainer warns when every image gets one of them.
        return {
            "dice": batch_dice(prediction.probability, batch["mask"]),
            "pred_full": foreground.all(1).float(),
            "pred_empty": (~foreground.any(1)).float(),
        }

    def preview(self, batch: dict[str, Any], *, generator: Generators = None) -> dict[str, torch.Tensor]:
        prediction = self.predict(
            batch["image"], prompts=self.validation_prompts(batch), generator=generator, **self.validation_sampling
        )
        return {
            "image": batch["image"],
            "ground truth": batch["mask"],
            "probability": prediction.probability,
            **prediction.maps,
        }


class GenerationMethod(Method):
    """The generator role: images from masks of integer class ids (``num_classes`` of them, background 0).

    Validation: the training loss under a fixed seed per image, so that epochs compare (``monitor = ("loss",
    "min")``). Images come out in [0, 1] with ``image_channels`` channels (1 or 3).
    """

    role = "generator"
    monitor = ("loss", "min")
    uses_label_maps = True
    num_classes: int
    image_channels: int

    def generate(self, masks: torch.Tensor, *, generator: Generators = None, **sampling: Any) -> torch.Tensor:
        """Images ``(B, image_channels, H, W)`` in [0, 1] for label masks ``(B, 1, H, W)`` of class ids."""
        raise NotImplementedError

    def validation_metrics(self, batch: dict[str, Any], *, generator: Generators = None) -> dict[str, torch.Tensor]:
        seed = generator[0].initial_seed() if generator else 0
        devices = [batch["image"].device] if batch["image"].is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            loss = self.training_loss(batch)["loss"].detach()
        return {"loss": loss.expand(batch["image"].shape[0])}

    def preview(self, batch: dict[str, Any], *, generator: Generators = None) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        generated = self.generate(labels, generator=generator, **self.validation_sampling)
        return {"mask": labels.float() / max(1, self.num_classes - 1), "generated": generated, "real": batch["image"]}
