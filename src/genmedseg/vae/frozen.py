"""Base class of the pretrained autoencoders that a method uses but never trains, and layers that save memory there.

A loss that back-propagates through a frozen decoder needs the gradient with respect to the decoder's *input* only.
:class:`FrozenConv2d` and :class:`MaskedReLU` keep just what that gradient needs: nothing for a convolution (its
weights suffice) and a boolean mask for a ReLU, instead of every float activation.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import Tensor, nn

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


class _ConvInputGradient(torch.autograd.Function):
    """``conv2d`` whose backward pass gives the input's gradient only, so the forward pass keeps no activation."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, conv: nn.Conv2d) -> Tensor:
        ctx.conv, ctx.input_shape, ctx.input_dtype = conv, x.shape, x.dtype
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        ctx.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return conv._conv_forward(x, conv.weight, conv.bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        conv = ctx.conv
        # Only the input's shape and memory format matter to the kernel (never its values): an unwritten tensor in
        # the input's layout keeps the backward convolution in the forward pass's layout (no reorders).
        layout = torch.empty(ctx.input_shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.memory_format)
        grad_input = torch.ops.aten.convolution_backward(
            grad,
            layout,
            conv.weight.to(grad.dtype),
            None,
            conv.stride,
            conv.padding,
            conv.dilation,
            False,
            [0, 0],
            conv.groups,
            (True, False, False),
        )[0]
        return grad_input.to(ctx.input_dtype), None


class _ReLUKeepingMask(torch.autograd.Function):
    """ReLU that keeps a boolean mask (1 byte per element) for its backward pass instead of its float output."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        output = torch.relu(x)
        ctx.save_for_backward(output > 0)
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (mask,) = ctx.saved_tensors
        return grad * mask


class FrozenConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) that keeps no input for backward while its weights are frozen.

    A frozen layer needs no weight gradient, and the input's gradient needs only the weights: the usual
    autograd graph would still keep every convolution's input. Numerically the same as ``nn.Conv2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.requires_grad or not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        if self.padding_mode != "zeros":
            raise NotImplementedError("FrozenConv2d supports zero padding only")
        return _ConvInputGradient.apply(x, self)


class MaskedReLU(nn.ReLU):
    """``nn.ReLU`` that keeps a boolean mask for its backward pass (a quarter of the float output's memory)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return torch.relu(x)
        return _ReLUKeepingMask.apply(x)
