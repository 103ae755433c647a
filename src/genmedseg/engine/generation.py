"""Use a trained generator: the Python API (``genmedseg.load``) and ``generate``, which writes synthetic pairs.

``generate`` turns the masks of a dataset into a new dataset in the layout every other verb reads::

    NEW/images/<mask>_syn<k>.png   generated image (at the model's input size; grayscale or RGB)
    NEW/masks/<mask>_syn<k>.png    its conditioning mask, resized to that size (nearest): 0/255, or class ids
    NEW/split.csv                  every pair in train (validation is carved from it when trained on)
    NEW/provenance.json            model, sampling, seeds and the source mask of every pair

Images are made at the model's input size: resizing them up would invent detail the model never drew.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genmedseg.atomic import atomic_write
from genmedseg.data import discover, list_images, read_label_map, resize_image
from genmedseg.errors import ConfigError, DataError
from genmedseg.models.base import GenerationMethod, image_generators
from genmedseg.models.registry import require_role

SEED_OPTION = "seed"


class Synthesizer:
    """A trained mask-to-image generator (``genmedseg.load(path)`` returns one for a generator's folder).

    Example::

        synthesizer = genmedseg.load("runs/busi-generator")
        image = synthesizer.generate(label_mask, sampling={"steps": 50, "seed": 3})  # H x W x C float32 in [0, 1]
    """

    def __init__(self, method: GenerationMethod, folder: Path, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.method = method.to(self.device).eval()
        self.folder = folder

    @property
    def image_size(self) -> int:
        return self.method.image_size

    def generate(self, mask: np.ndarray, sampling: Mapping[str, Any] | None = None, key: str = "0") -> np.ndarray:
        """One image (``S x S x C`` float32 in [0, 1], S the input size) for a mask of class ids (any size)."""
        return self.generate_batch([mask], [key], sampling)[0]

    def generate_batch(
        self, masks: Sequence[np.ndarray], keys: Sequence[str], sampling: Mapping[str, Any] | None = None
    ) -> list[np.ndarray]:
        """Images for masks of class ids; ``keys`` name each draw for its random generator (seeded by ``seed``)."""
        options = self.method.resolve_sampling(sampling)
        seed = options.pop(SEED_OPTION, None)
        labels = torch.stack([self.resized_mask(mask) for mask in masks]).to(self.device)
        generators = None if seed is None else image_generators(seed, keys)
        with torch.inference_mode():
            images = self.method.generate(labels, generator=generators, **options)
        return [image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() for image in images]

    def resized_mask(self, mask: np.ndarray) -> torch.Tensor:
        """A mask of class ids as ``(1, S, S)`` int64 at the input size (nearest), its ids checked."""
        ids = torch.from_numpy(np.asarray(mask, dtype=np.int64))[None]
        if int(ids.max()) >= self.method.num_classes or int(ids.min()) < 0:
            raise DataError(
                f"mask ids {int(ids.min())}..{int(ids.max())} outside 0..{self.method.num_classes - 1}, "
                f"the classes this model was trained with"
            )
        size = (self.image_size, self.image_size)
        return resize_image(ids.float(), size, mode="nearest-exact").round().long()


def mask_files(masks_dir: Path, split: str | None) -> dict[str, Path]:
    """The masks to generate from, by name: a dataset's split (``images/`` + ``masks/`` + split file), else every
    mask in ``masks_dir/masks/`` or in ``masks_dir`` itself."""
    if (masks_dir / "images").is_dir():
        index = discover(masks_dir)
        names = index.names(split or "train")
        return {name: index.pairs[name][1] for name in names}
    if split is not None:
        raise ConfigError(f"--split {split}: {masks_dir} is a folder of masks without a split file; leave out --split")
    folder = masks_dir / "masks" if (masks_dir / "masks").is_dir() else masks_dir
    if not folder.is_dir():
        raise DataError(f"{masks_dir}: no such folder of masks")
    found = list_images(folder)
    if not found:
        raise DataError(f"{folder}: no mask files")
    return found


def generate(
    model_path: str | Path,
    masks_dir: str | Path,
    out: str | Path,
    per_mask: int = 1,
    split: str | None = None,
    batch_size: int = 8,
    device: str | None = None,
    sampling: Mapping[str, Any] | None = None,
) -> Path:
    """Generate ``per_mask`` images for every mask and write them as a dataset (see the module docstring)."""
    from genmedseg.engine.inference import load

    if per_mask < 1:
        raise ConfigError(f"--per-mask must be 1 or more, got {per_mask}")
    synthesizer = load(model_path, device)
    require_role(synthesizer.method, "generate")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new folder for the generated dataset")
    sources = mask_files(Path(masks_dir), split)
    options = synthesizer.method.resolve_sampling(sampling)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    jobs = [(name, k) for name in sources for k in range(per_mask)]
    pairs = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        masks = {name: read_label_map(sources[name]) for name in dict.fromkeys(name for name, _ in chunk)}
        keys = [f"{name}#{k}" for name, k in chunk]
        images = synthesizer.generate_batch([masks[name] for name, _ in chunk], keys, options)
        for (name, k), key, image in zip(chunk, keys, images, strict=True):
            stem = f"{name}_syn{k}"
            mask = synthesizer.resized_mask(masks[name])[0].numpy()
            _write_pair(out, stem, image, mask, synthesizer.method.num_classes)
            pairs.append({"name": stem, "source_mask": str(sources[name]), "draw": k, "seed_key": key})
    split_rows = "".join(f"{pair['name']},train\n" for pair in pairs)
    atomic_write(out / "split.csv", lambda path: path.write_text("name,split\n" + split_rows))
    provenance = {
        "model": str(synthesizer.folder.resolve()),
        "method": synthesizer.method.name,
        "sampling": options,
        "per_mask": per_mask,
        "image_size": synthesizer.image_size,
        "masks": str(Path(masks_dir).resolve()),
        "split": split,
        "pairs": pairs,
    }
    atomic_write(out / "provenance.json", lambda path: path.write_text(json.dumps(provenance, indent=2) + "\n"))
    return out


def _write_pair(out: Path, stem: str, image: np.ndarray, mask: np.ndarray, num_classes: int) -> None:
    pixels = np.rint(image * 255).astype(np.uint8)
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    # Two classes as 0/255 (what every viewer shows); more as their ids (what label-map readers expect).
    ids = (mask * 255 if num_classes == 2 else mask).astype(np.uint8)
    atomic_write(out / "images" / f"{stem}.png", lambda path: picture.save(path, format="PNG"))
    atomic_write(out / "masks" / f"{stem}.png", lambda path: Image.fromarray(ids).save(path, format="PNG"))
