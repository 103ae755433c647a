"""Why a latent method sits at the all-foreground solution: two measurements behind docs/wave-gms-learning.md.

``stats MODEL``: for a trained Wave-GMS / GMS model folder, on validation images of a dataset: the size of the
predicted ``out`` latents against the masks' latents, their MSE against that of the per-channel mean latent, the
range of the raw (unclamped) decoder output and the share of background pixels above 1 (where the clamp to [0, 1]
zeroes the Dice gradient), and the Dice gradient with respect to the latent.

``mapping-only``: trains the latent mapping model alone on precomputed latents, with the frozen VAE's own image
latent as input (the best input the mapping model can get), with the latent MSE only or with the decoded Dice
added, and prints validation MSE, Dice and foreground share every 25 steps.

    python benchmarks/wave_gms_diagnostics.py stats RUN/model --data ../shared/data/glas --image-size 64
    python benchmarks/wave_gms_diagnostics.py mapping-only --data ../shared/data/glas --image-size 64 --loss mse+dice
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from genmedseg.data import discover, read_image, read_mask
from genmedseg.engine.inference import load
from genmedseg.models.lmm import ResAttnUNetDS
from genmedseg.vae.loading import load_tiny_vae

HEADS = ("level2", "level1", "out")


def resized_pairs(data: str, split: str, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (bilinear) and binary masks (nearest) of a split at ``size`` x ``size``."""
    index = discover(data)
    names = index.names(split)[:limit]

    def resized(array: object, mode: str) -> torch.Tensor:
        tensor = torch.as_tensor(array).float()
        tensor = tensor.permute(2, 0, 1)[None] if tensor.ndim == 3 else tensor[None, None]
        return F.interpolate(tensor, size=(size, size), mode=mode)

    images = torch.cat([resized(read_image(index.pairs[name][0]), "bilinear") for name in names])
    masks = torch.cat([resized(read_mask(index.pairs[name][1]), "nearest") for name in names]).clamp(0, 1)
    return images, masks


def hard_dice(probability: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    predicted = (probability > 0.5).float()
    overlap = (predicted * masks).sum((1, 2, 3))
    return 2 * overlap / (predicted.sum((1, 2, 3)) + masks.sum((1, 2, 3))).clamp_min(1e-6)


def stats(args: argparse.Namespace) -> None:
    method = load(args.model, device="cpu").method.float().to(memory_format=torch.contiguous_format)
    images, masks = resized_pairs(args.data, "val", args.image_size, limit=8)
    with torch.no_grad():
        target, _ = method.encode_masks_and_images(masks, images)
        predicted = method.map_latent(method.image_latent(images, sample=False), images)["out"]
    mean_latent = target.mean((0, 2, 3), keepdim=True).expand_as(target)
    print(
        f"|latent| mean/max: masks {target.abs().mean():.2f}/{target.abs().max():.2f}, predicted "
        f"{predicted.abs().mean():.2f}/{predicted.abs().max():.2f}"
    )
    print(
        f"latent MSE to the masks' latents: predicted {F.mse_loss(predicted, target):.3f}, per-channel mean "
        f"{F.mse_loss(mean_latent, target):.3f}"
    )
    latent = predicted.clone().requires_grad_(True)
    raw = method.autoencoder.decoder(latent).mean(1, keepdim=True)
    background = masks < 0.5
    print(
        f"raw decoder output {raw.min():.2f}..{raw.max():.2f}; above 0.5: {(raw > 0.5).float().mean():.3f} of "
        f"pixels (ground truth {masks.mean():.3f}); background above 1: {(raw[background] > 1).float().mean():.3f}"
    )
    loss = DiceLoss()(raw.clamp(0, 1), masks)
    loss.backward()
    print(f"soft Dice loss {loss.item():.4f}; mean |d loss / d latent| {latent.grad.abs().mean():.2e}")


def mapping_only(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    vae = load_tiny_vae(args.vae)
    with torch.no_grad():
        (train_images, train_masks), (val_images, val_masks) = (
            resized_pairs(args.data, split, args.image_size) for split in ("train", "val")
        )
        train_in, train_target = vae.encode(train_images), vae.encode(train_masks.expand(-1, 3, -1, -1))
        val_in, val_target = vae.encode(val_images), vae.encode(val_masks.expand(-1, 3, -1, -1))
    mapping = ResAttnUNetDS(vae.latent_channels, vae.latent_channels)
    mapping.keep_heads(HEADS)
    optimiser = torch.optim.AdamW(mapping.parameters(), lr=args.lr, weight_decay=0.01)
    dice_loss, started = DiceLoss(), time.perf_counter()
    mean = F.mse_loss(train_target.mean((0, 2, 3), keepdim=True).expand_as(val_target), val_target)
    print(f"{len(train_in)} training and {len(val_in)} validation latents; val MSE of the mean latent {mean:.3f}")
    for step in range(args.steps + 1):
        if step % 25 == 0:
            with torch.no_grad():
                out = mapping(val_in)["out"]
                probability = vae.decode(out).mean(1, keepdim=True)
            print(
                f"step {step}: val MSE {F.mse_loss(out, val_target):.3f}, "
                f"Dice {hard_dice(probability, val_masks).mean():.3f}, "
                f"foreground {(probability > 0.5).float().mean():.3f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        batch = torch.randint(0, len(train_in), (args.batch_size,))
        heads = mapping(train_in[batch])
        loss = sum(F.mse_loss(heads[name], train_target[batch]) for name in HEADS)
        if args.loss == "mse+dice":
            decoded = vae.decode(torch.cat([heads[name] for name in HEADS])).mean(1, keepdim=True)
            loss = loss + sum(dice_loss(part, train_masks[batch]) for part in decoded.chunk(len(HEADS)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb in ("stats", "mapping-only"):
        sub = verbs.add_parser(verb)
        sub.add_argument("--data", required=True)
        sub.add_argument("--image-size", type=int, default=64)
        sub.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    verbs.choices["stats"].add_argument("model")
    only = verbs.choices["mapping-only"]
    only.add_argument("--loss", choices=("mse", "mse+dice"), default="mse")
    only.add_argument("--steps", type=int, default=200)
    only.add_argument("--batch-size", type=int, default=8)
    only.add_argument("--lr", type=float, default=2e-3)
    only.add_argument("--seed", type=int, default=0)
    only.add_argument("--vae", default=None, help="frozen tiny VAE (default: GENMEDSEG_VAE)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.verb == "stats":
        stats(args)
    else:
        mapping_only(args)


if __name__ == "__main__":
    main()
