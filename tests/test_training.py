"""Training: exact resume, atomic checkpoints, run folders that are never overwritten, refused bad data."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import BinaryIO

import lightning as L
import pytest
import torch

from conftest import TINY_OPTIONS
from genmedseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from genmedseg.engine.task import learning_rate_factor
from genmedseg.engine.training import AtomicCheckpointIO, fit
from genmedseg.errors import ConfigError, DataError, TrainingError


def tiny_config(data: Path, vae: Path, epochs: int = 4, **train: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(root=str(data), image_size=32),
        model=ModelConfig(name="wave-gms", pretrained={"vae": str(vae)}, options=TINY_OPTIONS["wave-gms"]),
        train=TrainConfig(epochs=epochs, batch_size=4, warmup_epochs=1, accelerator="cpu", **train),
    )


class StopAfter(L.Callback):
    """Ends training after ``epochs`` epochs, as an interruption would (the last checkpoint is already written)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_two_plus_two_epochs_equal_four(synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic_data, tiny_vae_dir)
    straight = fit(config, tmp_path / "straight", enable_progress_bar=False)
    fit(config, tmp_path / "resumed", callbacks=[StopAfter(2)], enable_progress_bar=False)
    interrupted = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert interrupted["epoch"] == 1
    resumed = fit(config, tmp_path / "resumed", resume=True, enable_progress_bar=False)

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"resumed run differs in {different[:5]}"
    assert resumed["steps"] == straight["steps"] and resumed["epochs_done"] == 4
    assert resumed["best_val"]["value"] == pytest.approx(straight["best_val"]["value"])
    assert sorted(p.name for p in (tmp_path / "resumed" / "logs").iterdir()) == ["version_0", "version_1"]
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (tmp_path / "resumed" / "model" / name).is_file()


def test_a_run_folder_is_never_overwritten(synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic_data, tiny_vae_dir, epochs=1)
    fit(config, tmp_path / "run", enable_progress_bar=False)
    before = (tmp_path / "run" / "checkpoints" / "best.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
        fit(config, tmp_path / "run", enable_progress_bar=False)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").read_bytes() == before
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(config, tmp_path / "elsewhere", resume=True, enable_progress_bar=False)


def test_bad_data_is_refused_before_anything_is_written(
    tiny_vae_dir: Path, tmp_path: Path, synthetic_data: Path
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    broken = sorted((data / "images").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(DataError, match=broken.name):
        fit(tiny_config(data, tiny_vae_dir, epochs=1), tmp_path / "run", enable_progress_bar=False)
    assert not (tmp_path / "run").exists()


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)

    def crash(obj: object, handle: BinaryIO) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(TrainingError, match=r"disk full.*previous last\.ckpt is intact"):
        io.save_checkpoint({"weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_learning_rate_schedule_starts_above_zero_and_ends_at_zero() -> None:
    factors = [learning_rate_factor("warmup-cosine", step, warmup_steps=5, total_steps=100) for step in range(101)]
    assert factors[0] == pytest.approx(0.2)
    assert factors[4] == pytest.approx(1.0)
    assert factors[5] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))


@pytest.mark.parametrize(("precision", "hinted"), [("32-true", True), ("bf16-mixed", False)])
def test_a_cpu_with_native_bfloat16_gets_the_precision_hint(
    synthetic_data: Path,
    tiny_vae_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    precision: str,
    hinted: bool,
) -> None:
    """On an AMX CPU, a float32 run says that --precision bf16-mixed is faster; a bf16 run says nothing."""
    from genmedseg.engine import training

    monkeypatch.setattr(training, "has_fast_cpu_bfloat16", lambda: True)
    fit(
        tiny_config(synthetic_data, tiny_vae_dir, epochs=1, precision=precision),
        tmp_path / "run",
        enable_progress_bar=False,
    )
    assert ("--precision bf16-mixed trains" in capsys.readouterr().out) == hinted
