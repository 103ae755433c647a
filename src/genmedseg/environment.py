"""``genmedseg env``: the versions and devices a bug report needs."""

from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = (
    "genmedseg",
    "torch",
    "lightning",
    "monai",
    "diffusers",
    "huggingface_hub",
    "safetensors",
    "onnxruntime",
    "numpy",
    "scipy",
    "pillow",
    "matplotlib",
)
VARIABLES = (
    "GENMEDSEG_VAE",
    "GENMEDSEG_SD_VAE",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
)


def describe_environment() -> str:
    """Python, platform, package versions, torch's devices and threads, and the variables genmedseg reads."""
    import torch

    lines = [
        f"python      {platform.python_version()} ({platform.python_implementation()})",
        f"platform    {platform.platform()}",
    ]
    for package in PACKAGES:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        lines.append(f"{package:11s} {version}")
    lines.append(f"threads     {torch.get_num_threads()} (CPU cores: {os.cpu_count()})")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            lines.append(
                f"cuda:{index}      {properties.name}, {properties.total_memory / 2**30:.1f} GiB, "
                f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
            )
    else:
        lines.append(
            "cuda        not available (torch build: "
            + ("CPU only" if torch.version.cuda is None else f"CUDA {torch.version.cuda}")
            + ")"
        )
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        lines.append("mps         available")
    for variable in VARIABLES:
        if variable in os.environ:
            lines.append(f"${variable} = {os.environ[variable]}")
    return "\n".join(lines)


def is_worker_rank() -> bool:
    """True in the extra processes that DDP launches (they must not redo the launcher's one-off work)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def has_fast_cpu_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (Intel AMX), where bf16 autocast is several times faster
    than float32; on CPUs without it (AVX2, most AMD), bf16 autocast is slower."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch has no public query for it
    return bool(probe and probe())
