"""Why a latent method sits at the all-foreground solution: the measurements behind docs/wave-gms-learning.md.

``stats MODEL``: for a trained Wave-GMS / GMS model folder, on validation images of a dataset: the size of the
predicted ``out`` latents against the masks' latents, their MSE against that of the per-channel mean latent, the
range of the raw (unclamped) decoder output and the share of background pixels above 1 (where the clamp to [0, 1]
zeroes the Dice gradient), and the Dice gradient with respect to the latent.

``mapping-only``: trains the latent mapping model alone on fixed inputs: the frozen VAE's own image latent (the best
input it can get) or the image's raw 8 x 8 pixel blocks (what an untrained image encoder passes on), with the latent
MSE only or with the decoded Dice added, and prints validation MSE, Dice and foreground share every 25 steps.
``--standardise`` makes it predict the masks' latents standardised per channel (with the training masks' mean and
std, undone before decoding), so that every one of the 32 TAEF2 channels weighs the same in the MSE.

``probe``: how much of the masks' latent a *linear* map (ridge regression over each latent position's 3 x 3
neighbourhood) recovers from the VAE's image latent, from raw pixel blocks, from the level-3 Haar bands and from an
untrained wavelet encoder: validation MSE against the mean latent's, and Dice of the decoded prediction (for the mean
latent too, with its share of foreground).

``ceiling``: the Dice of the frozen VAE's own reconstruction of the masks (decode(encode(mask))) at several sizes:
the best any latent method with that VAE can score, before anything is learnt.

``distil``: trains the wavelet encoder alone with the alignment loss (distillation of the VAE's image latent) and
prints its cosine similarity to the teacher every 25 steps, beside that of the constant mean latent.

    python benchmarks/wave_gms_diagnostics.py stats RUN/model --data ../shared/data/glas --image-size 64
    python benchmarks/wave_gms_diagnostics.py mapping-only --data ../shared/data/glas --loss mse+dice --input pixels
    python benchmarks/wave_gms_diagnostics.py probe --data ../shared/data/glas --image-size 64
    python benchmarks/wave_gms_diagnostics.py distil --data ../shared/data/glas --image-size 64
    python benchmarks/wave_gms_diagnostics.py ceiling --data ../shared/data/drive --sizes 64,128,224,384
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from genmedseg.data import discover, read_image, read_mask
from genmedseg.engine.inference import load
from genmedseg.errors import GenMedSegError
from genmedseg.models.latent import HEAD_INITS
from genmedseg.models.lmm import ResAttnUNetDS
from genmedseg.models.wave_gms import WaveGMS
from genmedseg.models.wavelet import WaveletEncoder, haar_pyramid
from genmedseg.vae.loading import load_tiny_vae
from speed import parse_int_list

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

        def inputs(images: torch.Tensor) -> torch.Tensor:
            return vae.encode(images) if args.input == "latent" else F.pixel_unshuffle(images, vae.downscale_factor)

        train_in, train_target = inputs(train_images), vae.encode(train_masks.expand(-1, 3, -1, -1))
        val_in, val_target = inputs(val_images), vae.encode(val_masks.expand(-1, 3, -1, -1))
    shift = train_target.mean((0, 2, 3), keepdim=True) if args.standardise else 0.0
    scale = train_target.std((0, 2, 3), keepdim=True) if args.standardise else 1.0
    standardised_target = (train_target - shift) / scale
    mapping = ResAttnUNetDS(train_in.shape[1], vae.latent_channels)
    mapping.keep_heads(HEADS)
    if args.head_init == "zeros":
        mapping.zero_heads()
    optimiser = torch.optim.AdamW(mapping.parameters(), lr=args.lr, weight_decay=0.01)
    dice_loss, started = DiceLoss(), time.perf_counter()
    mean = F.mse_loss(train_target.mean((0, 2, 3), keepdim=True).expand_as(val_target), val_target)
    print(f"{len(train_in)} training and {len(val_in)} validation latents; val MSE of the mean latent {mean:.3f}")
    for step in range(args.steps + 1):
        if step % 25 == 0:
            with torch.no_grad():
                out = mapping(val_in)["out"] * scale + shift
                probability = vae.decode(out).mean(1, keepdim=True)
            print(
                f"step {step}: val MSE {F.mse_loss(out, val_target):.3f}, "
                f"Dice {hard_dice(probability, val_masks).mean():.3f}, "
                f"foreground {(probability > 0.5).float().mean():.3f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        batch = torch.randint(0, len(train_in), (args.batch_size,))
        heads = mapping(train_in[batch])
        loss = sum(F.mse_loss(heads[name], standardised_target[batch]) for name in HEADS)
        heads = {name: head * scale + shift for name, head in heads.items()}
        if args.loss == "mse+dice":
            decoded = vae.decode(torch.cat([heads[name] for name in HEADS])).mean(1, keepdim=True)
            loss = loss + sum(dice_loss(part, train_masks[batch]) for part in decoded.chunk(len(HEADS)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def neighbourhoods(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> one row of ``9 C`` values (the 3 x 3 neighbourhood, zero-padded) per latent position."""
    unfolded = F.unfold(features, 3, padding=1)
    return unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])


def ridge_predict(train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, strength: float) -> torch.Tensor:
    """Ridge regression on standardised features with an intercept, fitted on ``train_x`` and applied to ``x``."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6

    def design(rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([(rows - mean) / std, torch.ones(len(rows), 1)], 1).double()

    a = design(train_x)
    regulariser = strength * len(a) * torch.eye(a.shape[1], dtype=a.dtype)
    weights = torch.linalg.solve(a.T @ a + regulariser, a.T @ train_y.double())
    return (design(x) @ weights).float()


def probe(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    vae = load_tiny_vae(args.vae)
    (train_images, train_masks), (val_images, val_masks) = (
        resized_pairs(args.data, split, args.image_size) for split in ("train", "val")
    )
    encoder = WaveletEncoder(latent_channels=vae.latent_channels).eval()
    factor = vae.downscale_factor
    sources = {
        "frozen VAE's image latent": vae.encode,
        "raw pixel blocks": lambda images: F.pixel_unshuffle(images, factor),
        "level-3 Haar bands": lambda images: haar_pyramid(images, (3,))[0],
        "untrained wavelet encoder (mean)": lambda images: encoder(images)[0],
    }
    with torch.no_grad():
        targets = [vae.encode(masks.expand(-1, 3, -1, -1)) for masks in (train_masks, val_masks)]
        train_y, val_y = (target.permute(0, 2, 3, 1).reshape(-1, target.shape[1]) for target in targets)
        mean_latent = targets[0].mean((0, 2, 3), keepdim=True).expand_as(targets[1])
        mean_proba = vae.decode(mean_latent.contiguous()).mean(1, keepdim=True)
        print(
            f"mean latent: val MSE {F.mse_loss(mean_latent, targets[1]):.3f}, Dice "
            f"{hard_dice(mean_proba, val_masks).mean():.3f}, decoded foreground share "
            f"{(mean_proba > 0.5).float().mean():.3f}"
        )
        for name, features in sources.items():
            prediction = ridge_predict(
                neighbourhoods(features(train_images)), train_y, neighbourhoods(features(val_images)), args.ridge
            )
            latents = prediction.reshape(*targets[1].shape[:1], *targets[1].shape[2:], -1).permute(0, 3, 1, 2)
            dice = hard_dice(vae.decode(latents).mean(1, keepdim=True), val_masks).mean()
            print(f"{name}: val MSE {F.mse_loss(prediction, val_y):.3f}, Dice {dice:.3f}")


def ceiling(args: argparse.Namespace) -> None:
    sizes = parse_int_list(args.sizes, "--sizes")
    vae = load_tiny_vae(args.vae)
    for size in sizes:
        _, masks = resized_pairs(args.data, args.split, size)
        with torch.no_grad():
            dice = torch.cat(
                [
                    hard_dice(vae.decode(vae.encode(batch.expand(-1, 3, -1, -1))).mean(1, keepdim=True), batch)
                    for batch in masks.split(8)
                ]
            )
        print(
            f"{size}²: reconstruction Dice {dice.mean():.4f} (min {dice.min():.4f}) over {len(dice)} {args.split} masks"
        )


def distil(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    vae = load_tiny_vae(args.vae)
    (train_images, _), (val_images, _) = (
        resized_pairs(args.data, split, args.image_size) for split in ("train", "val")
    )
    with torch.no_grad():
        train_teacher, val_teacher = vae.encode(train_images), vae.encode(val_images)
    model = WaveGMS(vae, image_size=args.image_size)
    encoder = model.encoder
    optimiser = torch.optim.AdamW(encoder.parameters(), lr=args.lr, weight_decay=0.01)
    mean_latent = train_teacher.mean((0, 2, 3), keepdim=True).expand_as(val_teacher)
    floor = F.cosine_similarity(mean_latent, val_teacher, dim=1).mean()
    print(f"cosine similarity of the constant mean latent to the teacher: {floor:.3f}")
    started = time.perf_counter()
    for step in range(args.steps + 1):
        if step % 25 == 0:
            with torch.no_grad():
                mean, logvar = encoder(val_images)
            print(
                f"step {step}: cosine {F.cosine_similarity(mean, val_teacher, dim=1).mean():.3f}, posterior std "
                f"{torch.exp(0.5 * logvar).mean():.3f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        batch = torch.randint(0, len(train_images), (args.batch_size,))
        latent = model.image_latent(train_images[batch], sample=True)
        loss = model.alignment_loss(latent, train_teacher[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = {"stats": stats, "mapping-only": mapping_only, "probe": probe, "distil": distil, "ceiling": ceiling}
    for verb in run:
        sub = verbs.add_parser(verb)
        sub.add_argument("--data", required=True)
        sub.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        if verb != "ceiling":
            sub.add_argument("--image-size", type=int, default=64)
        if verb != "stats":
            sub.add_argument("--vae", default=None, help="frozen tiny VAE (default: GENMEDSEG_VAE)")
        if verb not in ("stats", "ceiling"):
            sub.add_argument("--seed", type=int, default=0)
    verbs.choices["stats"].add_argument("model")
    verbs.choices["ceiling"].add_argument("--sizes", default="64,128,224", help="comma-separated sides")
    verbs.choices["ceiling"].add_argument("--split", default="test")
    verbs.choices["probe"].add_argument("--ridge", type=float, default=0.01, help="ridge strength (default 0.01)")
    only = verbs.choices["mapping-only"]
    only.add_argument("--loss", choices=("mse", "mse+dice"), default="mse")
    only.add_argument("--input", choices=("latent", "pixels"), default="latent")
    only.add_argument("--standardise", action="store_true", help="per-channel standardised latent targets")
    only.add_argument("--head-init", choices=HEAD_INITS, default=HEAD_INITS[0])
    for verb in ("mapping-only", "distil"):
        sub = verbs.choices[verb]
        sub.add_argument("--steps", type=int, default=200)
        sub.add_argument("--batch-size", type=int, default=8)
        sub.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        run[args.verb](args)
    except GenMedSegError as error:  # a bad argument or dataset: the message, not a traceback
        parser.exit(2, f"{parser.prog} {args.verb}: error: {error}\n")


if __name__ == "__main__":
    main()
