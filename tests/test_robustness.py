"""No dead ends: failed starts, interruptions (Ctrl-C, SIGKILL, time limits), moved run folders, NaN losses, full
disks, stuck runs, DDP, and a command line that answers mistakes at once."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY_OPTIONS
from genmedseg.cli import main
from genmedseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from genmedseg.engine import training
from genmedseg.engine.training import fit
from genmedseg.errors import TrainingError
from genmedseg.models.base import SegmentationMethod
from genmedseg.models.registry import MODELS


def unet_config(data: Path, epochs: int = 3, **train: Any) -> RunConfig:
    return RunConfig(
        data=DataConfig(root=str(data), image_size=32),
        model=ModelConfig(name="unet", options=TINY_OPTIONS["unet"]),
        train=TrainConfig(epochs=epochs, batch_size=4, warmup_epochs=1, accelerator="cpu", preview_every=0, **train),
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


class StopAfter(L.Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class Scripted(SegmentationMethod):
    """A one-convolution segmenter whose loss is NaN or raises Ctrl-C at chosen steps, or that predicts everything."""

    name = "scripted"
    nan_steps: frozenset[int] = frozenset()
    nan_from: int | None = None
    interrupt_at: int | None = None
    predict_everything = False

    def __init__(self, image_size: int = 32) -> None:
        super().__init__(image_size)
        self.options = {"image_size": image_size}
        self.network = nn.Conv2d(3, 1, 3, padding=1)
        self.steps = 0

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.steps += 1
        if self.steps == self.interrupt_at:
            raise KeyboardInterrupt
        loss = F.binary_cross_entropy_with_logits(self.network(batch["image"]), batch["mask"])
        if self.steps in self.nan_steps or (self.nan_from is not None and self.steps >= self.nan_from):
            loss = loss * float("nan")
        return {"loss": loss}

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        if self.predict_everything:
            return torch.ones_like(images[:, :1]) * 0.9 + 0.0 * self.network(images)
        return torch.sigmoid(self.network(images))


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> type[Scripted]:
    monkeypatch.setitem(MODELS, Scripted.name, Scripted)
    return Scripted


def scripted_config(data: Path, epochs: int = 3, **train: Any) -> RunConfig:
    return RunConfig(
        data=DataConfig(root=str(data), image_size=32),
        model=ModelConfig(name="scripted"),
        train=TrainConfig(epochs=epochs, batch_size=4, warmup_epochs=1, accelerator="cpu", preview_every=0, **train),
    )


# --- losses that go wrong ------------------------------------------------------------------------------------------


def test_nonfinite_losses_are_skipped_and_counted(scripted, synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(scripted, "nan_steps", frozenset({2, 3}))
    summary = fit(scripted_config(synthetic_data), tmp_path / "run", enable_progress_bar=False)
    assert summary["nonfinite_steps_skipped"] == 2
    assert all(torch.isfinite(value).all() for value in weights(tmp_path / "run").values())


def test_repeated_nonfinite_losses_stop_the_run_and_keep_the_last_checkpoint(
    scripted, synthetic_data: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(scripted, "nan_from", 3)  # two steps per epoch: epoch 1 is fine, then NaN for good
    with pytest.raises(TrainingError, match=r"NaN or infinite in 5 steps in a row.*--lr.*--resume"):
        fit(scripted_config(synthetic_data, epochs=6), tmp_path / "run", enable_progress_bar=False)
    # The steps after epoch 1 were all skipped: the last checkpoint holds epoch 1's weights, finite and resumable.
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] < 5 and all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    monkeypatch.setattr(scripted, "nan_from", None)
    assert fit(scripted_config(synthetic_data, epochs=6), tmp_path / "run", resume=True)["epochs_done"] == 6


# --- checkpoints that cannot be written ----------------------------------------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoint(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    saves = []
    real_save = training._save

    def fill_up(checkpoint: dict, path: Path) -> None:
        saves.append(path)
        if len(saves) > 2:  # best and last of epoch 1 are written; the disk is full from epoch 2 on
            path.write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(checkpoint, path)

    monkeypatch.setattr(training, "_save", fill_up)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"No space left on device.*free disk space.*previous .* is intact"):
        fit(unet_config(synthetic_data), run, enable_progress_bar=False)
    monkeypatch.undo()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    summary = fit(unet_config(synthetic_data), run, resume=True, enable_progress_bar=False)
    assert summary["epochs_done"] == 3


def test_a_read_only_run_folder_says_so(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    import tempfile

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    fit(unet_config(synthetic_data, epochs=1), tmp_path / "run", enable_progress_bar=False)
    before = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(TrainingError, match=r"Permission denied.*make the run folder writable"):
        fit(unet_config(synthetic_data, epochs=2), tmp_path / "run", resume=True, enable_progress_bar=False)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == before


# --- starts, stops and moves ---------------------------------------------------------------------------------------


def test_a_failed_start_leaves_no_run_folder(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "--model",
        "unet",
        "--data",
        str(synthetic_data),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--accelerator",
        "cpu",
        "--out",
        str(run),
        *[f"--option={key}={value}" for key, value in TINY_OPTIONS["unet"].items()],
    ]
    with pytest.raises(Exception, match="precision"):
        main([*args, "--precision", "17-bogus"])
    assert not run.exists()
    assert main(args) == 0  # the same command, mended, is not told that the folder "already holds a run"


def test_a_moved_run_resumes_exactly_and_evaluates(synthetic_data: Path, tmp_path: Path) -> None:
    straight = fit(unet_config(synthetic_data, epochs=4), tmp_path / "straight", enable_progress_bar=False)
    fit(unet_config(synthetic_data, epochs=4), tmp_path / "a", callbacks=[StopAfter(2)], enable_progress_bar=False)
    shutil.move(tmp_path / "a", tmp_path / "elsewhere" / "b")
    moved = tmp_path / "elsewhere" / "b"
    resumed = fit(RunConfig.from_yaml(moved / "config.yaml"), moved, resume=True, enable_progress_bar=False)
    assert same_weights(weights(moved), weights(tmp_path / "straight"))
    assert resumed["best_val"]["value"] == pytest.approx(straight["best_val"]["value"])
    assert resumed["best_checkpoint"] == "checkpoints/best.ckpt" and resumed["sessions"] == 2
    # Evaluated without --data: the run records its dataset's absolute path.
    assert main(["evaluate", str(moved), "--out", str(tmp_path / "eval")]) == 0


def test_a_time_limit_then_resume_with_more_minutes_continues(synthetic_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    stopped = fit(unet_config(synthetic_data, epochs=3, max_minutes=1e-4), run, enable_progress_bar=False)
    assert stopped["stopped"] == "time limit" and stopped["epochs_done"] < 3
    config = unet_config(synthetic_data, epochs=3, max_minutes=60)
    finished = fit(config, run, resume=True, enable_progress_bar=False)
    assert finished["stopped"] == "finished" and finished["epochs_done"] == 3
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert [s["ended"] for s in sessions] == ["time limit", "finished"]
    assert finished["train_seconds"] == pytest.approx(sum(s["seconds"] for s in sessions), abs=0.2)


def test_ctrl_c_gives_genmedsegs_own_resume_hint(
    scripted, synthetic_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(scripted, "interrupt_at", 4)  # in epoch 2, after epoch 1's checkpoint
    run = tmp_path / "run"
    args = [
        "train",
        "--model",
        "scripted",
        "--data",
        str(synthetic_data),
        "--image-size",
        "32",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--accelerator",
        "cpu",
        "--out",
        str(run),
    ]
    assert main(args) == 130
    error = capsys.readouterr().err
    assert f"genmedseg train --resume {run.resolve()}" in error and "Detected KeyboardInterrupt" not in error
    assert json.loads((run / "run.json").read_text())["sessions"][-1]["ended"] == "interrupted"
    monkeypatch.setattr(scripted, "interrupt_at", None)
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "train_summary.json").read_text())["epochs_done"] == 3


KILL_SCRIPT = """
import os, signal, sys
import lightning as L
from genmedseg.config import RunConfig
from genmedseg.engine.training import fit

class Kill(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3:  # the first step of epoch 2 (two steps per epoch)
            os.kill(os.getpid(), signal.SIGKILL)

fit(RunConfig.from_yaml(sys.argv[1]), sys.argv[2], callbacks=[Kill()], enable_progress_bar=False)
"""


def test_sigkill_mid_epoch_then_resume_ends_as_an_uninterrupted_run(
    synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path
) -> None:
    config = RunConfig(
        data=DataConfig(root=str(synthetic_data), image_size=32),
        model=ModelConfig(name="wave-gms", pretrained={"vae": str(tiny_vae_dir)}, options=TINY_OPTIONS["wave-gms"]),
        train=TrainConfig(epochs=3, batch_size=4, warmup_epochs=1, accelerator="cpu", preview_every=0),
    )
    config.to_yaml(tmp_path / "config.yaml")
    fit(config, tmp_path / "straight", enable_progress_bar=False)
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(tmp_path / "config.yaml"), str(tmp_path / "killed")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    fit(config, tmp_path / "killed", resume=True, enable_progress_bar=False)
    assert same_weights(weights(tmp_path / "killed"), weights(tmp_path / "straight"))


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(synthetic_data: Path, tmp_path: Path) -> None:
    """The same global batch (4 = 2 processes x 2) on 2 CPU processes gives the validation Dice of one process.

    The sampler gives the two processes the two halves of one process's batches, so only the order of floating-point
    sums differs (gradients are averaged across processes): measured 6e-8 apart; the tolerance is 1e-4.
    """
    one = fit(unet_config(synthetic_data, epochs=2), tmp_path / "one", enable_progress_bar=False)
    config = unet_config(synthetic_data, epochs=2, devices=2)
    config.override("train", batch_size=2)
    config.to_yaml(tmp_path / "ddp.yaml")
    # A script file, not `python -c`: DDP starts the second process by running the same command line again.
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\nfrom genmedseg.config import RunConfig\nfrom genmedseg.engine.training import fit\n"
        "fit(RunConfig.from_yaml(sys.argv[1]), sys.argv[2], enable_progress_bar=False)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ddp.yaml"), str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CI": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert two["steps"] == one["steps"]
    assert two["best_val"]["value"] == pytest.approx(one["best_val"]["value"], abs=1e-4)


def test_a_stuck_run_is_reported(scripted, synthetic_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(scripted, "predict_everything", True)
    summary = fit(scripted_config(synthetic_data, epochs=3), tmp_path / "run", enable_progress_bar=False)
    assert any("foreground everywhere for 3 validations in a row" in w for w in summary["warnings"])
    assert "stuck at a trivial solution" in capsys.readouterr().err


# --- the command line ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/nowhere", "--out", "RUN"], "/nowhere: dataset folder not found"),
        (["train", "--model", "wavegms", "--data", ".", "--out", "RUN"], "unknown model 'wavegms'"),
        (["evaluate", "/nowhere", "--out", "EVAL"], "no trained model here"),
        (["predict", "/nowhere", "x.png", "--out", "P"], "no trained model here"),
    ],
)
def test_mistakes_are_answered_before_torch_is_imported(args: list[str], message: str, tmp_path: Path) -> None:
    script = "import sys; from genmedseg.cli import main; code = main(sys.argv[1:]); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert message in result.stderr and result.stdout.strip() == "False"


def test_every_option_says_what_it_does() -> None:
    from genmedseg.cli import build_parser

    parser = build_parser()
    verbs = next(action for action in parser._actions if isinstance(action, type(parser._subparsers._actions[-1])))
    for name, verb in verbs.choices.items():
        for action in verb._actions:
            assert action.help, f"genmedseg {name} {action.option_strings or action.dest} has no help"


def test_plain_epoch_lines_and_no_lightning_chatter(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    args = [
        "train",
        "--model",
        "unet",
        "--data",
        str(synthetic_data),
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--accelerator",
        "cpu",
        "--out",
        str(tmp_path / "run"),
        "--threads",
        "1",
        *[f"--option={key}={value}" for key, value in TINY_OPTIONS["unet"].items()],
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "epoch 1/2: train_loss" in captured.out and "epoch 2/2:" in captured.out
    for chatter in ("litlogger", "Tip", "GPU available", "LeafSpec"):
        assert chatter not in captured.out + captured.err
