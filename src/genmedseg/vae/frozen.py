"""Base class of the pretrained autoencoders that a method uses but never trains."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

FrozenModuleT = TypeVar("FrozenModuleT", bound="FrozenModule")


class FrozenModule(nn.Module):
    """A module whose parameters never receive gradients and which always runs in eval mode.

    Subclasses build their layers and then call :meth:`freeze`. Gradients still flow *through* the
    module to its inputs (a segmentation loss back-propagates through a frozen decoder); only the
    parameters stay fixed.
    """

    def freeze(self) -> None:
        """Stop gradients to every parameter and switch to eval mode."""
        self.requires_grad_(False)
        self.train(False)

    def train(self: FrozenModuleT, mode: bool = True) -> FrozenModuleT:
        """Stay in eval mode whatever ``mode`` says.

        A parent model's ``.train()`` reaches every child; a frozen part must not follow it, so that
        its outputs during training are those it gives at inference.
        """
        return super().train(False)
