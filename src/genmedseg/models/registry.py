"""The registry of methods: ``--model NAME`` picks one, ``genmedseg models`` lists them, model folders load here.

Adding a method is one file in ``genmedseg/models/`` and one line in :data:`MODELS` (see docs/adding-a-method.md).
Methods are imported when first asked for, so that the command line answers a mistake before torch is loaded.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genmedseg.config import RunConfig
from genmedseg.errors import ConfigError, WeightsError
from genmedseg.folders import ModelFolder, model_folder_of

if TYPE_CHECKING:
    from genmedseg.models.base import Method

MODELS: dict[str, str | type[Method]] = {
    "wave-gms": "genmedseg.models.wave_gms:WaveGMS",
    "gms": "genmedseg.models.gms:GMS",
    "unet": "genmedseg.models.unet:UNet",
    "medsegdiff": "genmedseg.models.medsegdiff:MedSegDiff",
    "seg-guided-diffusion": "genmedseg.models.seg_guided:SegGuidedDiffusion",
    "i-medsam": "genmedseg.models.imedsam:IMedSAM",
    "litemedsam": "genmedseg.models.litemedsam:LiteMedSAM",
}
"""``--model`` name -> ``"module:Class"`` (imported on first use) or the class itself."""

ROLE_VERBS = {"segmenter": ("evaluate", "predict", "evaluate-synthetic"), "generator": ("generate",)}
"""The verbs that use a trained model, by the role of its method."""


def check_model_name(name: str) -> None:
    """Refuse an unknown ``--model`` name, listing the valid ones (without importing any method)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models are: {', '.join(sorted(MODELS))}")


def get_model_class(name: str) -> type[Method]:
    """The class registered under ``name`` (imported now if need be); an unknown name lists the valid ones."""
    check_model_name(name)
    entry = MODELS[name]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module), attribute)
    return entry


def check_options(cls: type[Method], options: dict[str, Any]) -> None:
    """Refuse options the method's constructor does not take, listing those it does with their defaults."""
    defaults = cls.option_defaults()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(
            key if default is inspect.Parameter.empty else f"{key}={default!r}" for key, default in defaults.items()
        )
        raise ConfigError(f"model {cls.name!r} has no option {', '.join(unknown)}; its options: {valid}")
    for key, value in options.items():
        expected = type(defaults[key])
        if expected in SCALAR_OPTION_TYPES and type(value) not in SCALAR_OPTION_TYPES[expected]:
            example = {bool: "true or false", int: "an integer", float: "a number"}[expected]
            if expected is not bool:
                example += f" such as {defaults[key]!r}"
            raise ConfigError(f"model {cls.name!r} option {key}={value!r}: expected {example}")


SCALAR_OPTION_TYPES = {bool: (bool,), int: (int,), float: (int, float)}
"""The type of an option's default -> the types its value may have (a bool is no number; an integer is a float)."""


def default_run_config(name: str) -> RunConfig:
    """The defaults of a run of method ``name``: genmedseg's, then the method's own ``training_defaults``."""
    config = RunConfig()
    config.override("model", name=name)
    config.override("train", _source=f"training defaults of {name}", **get_model_class(name).training_defaults)
    return config


def create_model(name: str, pretrained: dict[str, str | None] | None = None, **options: Any) -> Method:
    """A new model of method ``name``, its frozen parts loaded from ``pretrained`` (role -> source)."""
    cls = get_model_class(name)
    check_options(cls, options)
    return cls.create(pretrained=pretrained, **options)


def require_role(method: Method | type[Method], verb: str) -> None:
    """Refuse a verb that does not fit the method's role, with the verbs that do."""
    if verb not in ROLE_VERBS.get(method.role, ()):
        fitting = ", ".join(f"`genmedseg {v}`" for v in ROLE_VERBS.get(method.role, ()))
        raise ConfigError(
            f"{method.name} is a {method.role}, and `genmedseg {verb}` needs a {_role_of_verb(verb)}; "
            f"use {fitting} with this model"
        )


def _role_of_verb(verb: str) -> str:
    return next((role for role, verbs in ROLE_VERBS.items() if verb in verbs), "different method")


def load_pretrained(path: str | Path) -> Method:
    """Load a model folder written by ``save_pretrained`` (or the ``model/`` of a run folder): no YAML needed."""
    folder = model_folder_of(path)
    if not folder.exists():
        raise WeightsError(
            f"{path}: no trained model here (expected {folder.config.name} and {folder.weights.name} in {path} or in "
            f"{Path(path) / 'model'}); a run gets its model folder when training finishes"
        )
    from safetensors.torch import load_file

    saved = _read_model_config(folder)
    config = dict(saved["config"])
    if saved.get("format_version", 1) < 2:  # genmedseg 0.1 kept the input size in the training summary
        config["image_size"] = saved["training"]["image_size"]
    method = get_model_class(saved["model"]).from_config(config)
    try:
        method.load_state_dict(load_file(str(folder.weights)))
    except RuntimeError as error:
        raise WeightsError(f"{folder.weights}: weights do not match {folder.config.name} ({error})") from error
    return method.eval()


def _read_model_config(folder: ModelFolder) -> dict[str, Any]:
    try:
        saved = json.loads(folder.config.read_text())
        if "model" not in saved or "config" not in saved:
            raise KeyError("model" if "model" not in saved else "config")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{folder.config}: not a genmedseg model config ({error}); export the model again") from None
    return saved


def describe_models() -> list[dict[str, Any]]:
    """Per method: name, role, one-line summary, trainable parameters (tiny random frozen parts, default options),
    pretrained parts and sampling keys."""
    rows = []
    for name in sorted(MODELS):
        cls = get_model_class(name)
        rows.append(
            {
                "name": name,
                "role": cls.role,
                "summary": (cls.__doc__ or "").strip().splitlines()[0],
                "trainable_parameters": cls.with_random_weights(tiny=True).num_trainable_parameters(),
                "pretrained": {role: part.description for role, part in cls.pretrained_parts.items()},
                "sampling": [option.describe(key) for key, option in cls.sampling_options.items()],
                "prompts": getattr(cls, "prompt_kind", None),
            }
        )
    return rows
