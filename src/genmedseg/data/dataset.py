"""The torch Dataset of image/mask pairs and an epoch-seeded shuffling sampler.

Reproducibility: the augmentation of item ``i`` in epoch ``e`` is seeded by ``(seed, e, i)`` only, so a run gives
the same batches whatever the number of DataLoader workers, and a resumed run continues exactly. The epoch lives in
a shared-memory tensor, so :meth:`SegmentationDataset.set_epoch` called in the main process reaches workers too,
including persistent ones; call it (and the sampler's ``set_epoch``) before the epoch's loader iterator is created.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from genmedseg.data.io import read_pair
from genmedseg.data.layout import DatasetIndex
from genmedseg.data.transforms import eval_transforms, set_seed, train_transforms
from genmedseg.errors import DataError


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed mixed from ``(seed, epoch, index)`` (NumPy SeedSequence, so nearby triples are unrelated)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SegmentationDataset(Dataset):
    """One split of a :class:`DatasetIndex` as ``{"image", "mask", "name"}`` items.

    ``image`` is float32 3 x S x S in [0, 1], ``mask`` float32 1 x S x S in {0, 1} (S = ``image_size``) and ``name``
    the pair's name; with ``labels=True`` also ``labels``, the int64 1 x S x S class ids of
    :func:`~genmedseg.data.io.read_label_map` (``mask`` is then ``labels > 0``). With ``augment=True`` the training
    augmentations of :func:`train_transforms` are applied, seeded per item and epoch.
    """

    def __init__(
        self,
        index: DatasetIndex,
        split: str,
        image_size: int = 224,
        augment: bool = False,
        seed: int = 0,
        labels: bool = False,
    ) -> None:
        self.names = index.names(split)
        if not self.names:
            raise DataError(
                f"{index.root}: split {split!r} has no image/mask pairs ({index.summary()}); "
                "check the split file or run `genmedseg check-data`"
            )
        self.pairs = [index.pairs[name] for name in self.names]
        self.augment = augment
        self.seed = seed
        self.labels = labels
        self.transform = train_transforms(image_size) if augment else eval_transforms(image_size)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch whose augmentations :meth:`__getitem__` draws."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch`` (visible to DataLoader workers already started)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_path, mask_path = self.pairs[i]
        image, mask = read_pair(image_path, mask_path, labels=self.labels)
        if self.augment:
            set_seed(self.transform, augmentation_seed(self.seed, self.epoch, i))
        item = {"image": image.transpose(2, 0, 1), "mask": mask[None] > 0}
        if self.labels:
            item["labels"] = mask[None]
        return {**self.transform(item), "name": self.names[i]}


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``torch.Generator().manual_seed(seed + epoch)``.

    Lightning calls :meth:`set_epoch` at the start of each training epoch, so the order is a pure function of
    ``(seed, epoch)``: reproducible, resumable and independent of the number of workers. Under DDP (a process group
    is initialised) process ``r`` of ``W`` takes every ``W``-th index from ``r``, all processes the same count, so
    the ``k``-th batches of the ``W`` processes together are the ``k``-th batch one process would draw with ``W``
    times the batch size: the same training, spread over processes.

    ``weights`` (one per item, not all equal): an epoch is instead ``n`` draws with replacement, item ``i`` with
    probability ``weights[i] / sum(weights)``, from the same seeded generator (e.g. extra training pairs weighted
    against the real ones).
    """

    def __init__(self, n: int, seed: int = 0, weights: Sequence[float] | None = None) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.weights = None
        if weights is not None:
            if len(weights) != n or min(weights) < 0 or max(weights) <= 0:
                raise ValueError(f"weights: {n} non-negative values, not all zero, expected")
            if len(set(weights)) > 1:
                self.weights = torch.tensor([float(w) for w in weights], dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` from the next iteration on."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist()
        rank, world = _process_rank()
        return iter(order[: len(self) * world][rank::world])

    def __len__(self) -> int:
        return self.n // _process_rank()[1]


def _process_rank() -> tuple[int, int]:
    """(rank, world size) of this process in DDP, (0, 1) otherwise."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
