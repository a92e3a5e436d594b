"""One training run's configuration (`TrainConfig`), light to import: the CLI builds its options from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["pretrain", "finetune"]
# The paper's recipe (8x A100): (learning rate, global batch) per stage; LoRA: r 128, alpha 256, projector lr 2e-5.
PAPER = {"pretrain": (1e-3, 256), "finetune": (2e-5, 128), "lora": (2e-4, 128)}
LORA_R, LORA_ALPHA, LORA_PROJECTOR_LR = 128, 256, 2e-5


class TrainingError(ValueError):
    """A training configuration that cannot run; the message says what to change."""


class TrainConfig(BaseModel):
    """One training run: what `llava-labeler train` takes as options or as a JSON file (`--config`).

    Unset learning rate and batch size take the paper's values for the stage.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Stage = Field(description="pretrain (stage 1: projector only) | finetune (stage 2: projector + LLM).")
    model: str = Field(description="Checkpoint to start from (llava-hf format dir or hub id).")
    data: Path = Field(description="LLaVA conversation JSON (or JSONL).")
    out: Path = Field(description="Where the trained checkpoint goes.")
    images: Path | None = Field(default=None, description="Directory the records' image paths are relative to.")
    lora: bool = Field(default=False, description="Stage 2 with LoRA on the LLM (paper: r 128, alpha 256, lr 2e-4).")
    lora_r: int = Field(default=LORA_R, ge=1)
    lora_alpha: int = Field(default=LORA_ALPHA, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    merge_lora: bool = Field(default=True, description="Merge LoRA into the weights (else save the adapter).")
    train_vision_tower: bool = Field(default=False, description="Also train the CLIP tower (models trained from scratch).")
    learning_rate: float | None = Field(default=None, gt=0, description="Learning rate (default: the paper's for the stage).")
    projector_lr: float | None = Field(default=None, gt=0, description="Projector learning rate (LoRA default 2e-5).")
    batch_size: int | None = Field(default=None, ge=1, description="Global batch (default: 256 stage 1, 128 stage 2).")
    per_device_batch_size: int = Field(default=16, ge=1)
    epochs: float = Field(default=1.0, gt=0.0)
    max_steps: int = Field(default=-1, description="Stop after this many optimizer steps (-1: epochs decide).")
    # Skills a small model learns from scratch arrive as sudden drops whose step varies by seed.
    stop_at_loss: float | None = Field(
        default=None, description="End early once a logged training loss is at or under this (max_steps stays the cap)."
    )
    warmup_ratio: float = Field(default=0.03, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_length: int = Field(default=2048, ge=1, description="Longer samples are counted as bad, not truncated.")
    gradient_checkpointing: bool = True
    group_by_length: bool = Field(default=True, description="Batch samples of similar token length together.")
    save_steps: int = Field(default=500, ge=0, description="Checkpoint every N steps for --resume (0: never).")
    logging_steps: int = Field(default=10, ge=1)
    max_bad_fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="Fail when more than this share of records is bad.")
    deepspeed: Path | None = Field(default=None, description="DeepSpeed config (training/deepspeed/zero2.json, zero3.json).")
    seed: int = 0
    resume: bool = Field(default=False, description="Continue from the last checkpoint under OUT/checkpoints.")
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    verbose: bool = Field(default=False, description="Print a line per logged optimizer step, not one progress bar.")

    def resolved(self) -> "TrainConfig":
        """Fill the paper's defaults and check the combination."""
        if self.lora and self.stage != "finetune":
            raise TrainingError("--lora applies to the finetune stage (stage 1 trains only the projector)")
        if self.deepspeed is not None and not self.deepspeed.is_file():
            raise TrainingError(f"DeepSpeed config not found: {self.deepspeed}")
        lr, batch = PAPER["lora" if self.lora else self.stage]
        projector_lr = self.projector_lr if self.projector_lr is not None else (LORA_PROJECTOR_LR if self.lora else None)
        return self.model_copy(
            update={"learning_rate": self.learning_rate or lr, "batch_size": self.batch_size or batch, "projector_lr": projector_lr}
        )
