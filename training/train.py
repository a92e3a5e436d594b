"""LLaVA-1.5's two training stages on the transformers Trainer.

- stage 1 (`pretrain`): only the projector learns (caption pairs), as in the paper;
- stage 2 (`finetune`): projector + LLM learn (instruction mix), fully or with LoRA
  (peft; the projector is trained whole at its own learning rate, the paper's recipe);
- `train_vision_tower` adds the CLIP tower, for models trained from scratch.

Everything distributed (DDP, DeepSpeed ZeRO-2/3, multi-node) is the Trainer's and
accelerate's: launch this same command under `torchrun` or `accelerate launch`.
The result is saved by `engine.model.save_model` in the llava-hf layout, so the
engine (and vLLM, TensorRT-LLM's converter) loads it unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress, TaskID, TextColumn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from engine.model import load_model, save_model
from training.config import LORA_PROJECTOR_LR, TrainConfig, TrainingError
from training.dataset import Collator, SupervisedDataset

log = logging.getLogger(__name__)

LLM_LINEAR_LAYERS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
CHECKPOINTS = "checkpoints"

def world_size() -> int:
    """Processes in this run (torchrun / accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def gradient_accumulation(config: TrainConfig) -> int:
    per_step = config.per_device_batch_size * world_size()
    if config.batch_size % per_step:
        raise TrainingError(
            f"global batch {config.batch_size} is not a multiple of per-device batch "
            f"{config.per_device_batch_size} x {world_size()} processes"
        )
    return config.batch_size // per_step


def set_trainable(model, config: TrainConfig) -> None:
    """Freeze everything, then unfreeze what this stage trains (LoRA layers are peft's)."""
    inner = model.model
    model.requires_grad_(False)
    inner.multi_modal_projector.requires_grad_(True)
    if config.train_vision_tower:
        inner.vision_tower.requires_grad_(True)
    if config.stage == "finetune" and not config.lora:
        inner.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)


def add_lora(model, config: TrainConfig):
    """Wrap the LLM's linear layers with LoRA; the projector (and tower, if trained) are saved whole."""
    from peft import LoraConfig, get_peft_model

    whole = ["multi_modal_projector"] + (["vision_tower"] if config.train_vision_tower else [])
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=LLM_LINEAR_LAYERS,
        modules_to_save=whole,
        bias="none",
    )
    return get_peft_model(model, lora)


class LlavaTrainer(Trainer):
    """The Trainer with LLaVA's two additions: a projector learning rate and length grouping by token count."""

    def __init__(self, *args: Any, lengths: list[int], projector_lr: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.projector_lr = projector_lr

    def _get_train_sampler(self, train_dataset=None):
        # The stock sampler would read every sample (decoding every image) to learn its length.
        if self.args.train_sampling_strategy == "group_by_length":
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=self.lengths)
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.projector_lr is not None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    groups.setdefault(("multi_modal_projector" in name, name in decay), []).append(param)
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(
                [
                    {
                        "params": params,
                        "weight_decay": self.args.weight_decay if decayed else 0.0,
                        **({"lr": self.projector_lr} if projector else {}),
                    }
                    for (projector, decayed), params in groups.items()
                ],
                **kwargs,
            )
        return super().create_optimizer(model)


class LossLog(TrainerCallback):
    """Appends every logged step (loss, learning rate, grad norm) to a JSON Lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: dict[str, Any] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            entry = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
            if "loss" in logs:
                self.last = entry
            with self.path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")


class ProgressBar(TrainerCallback):
    """One rich progress bar for the whole run, the latest loss beside it (instead of a line per logged step)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            columns = (*Progress.get_default_columns(), TextColumn("{task.fields[loss]}"))
            self.bar = Progress(*columns, transient=False)
            self.task = self.bar.add_task(self.title, total=state.max_steps, completed=state.global_step, loss="")
            self.bar.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and self.task is not None and logs and "loss" in logs:
            self.bar.update(self.task, loss=f"loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class StopAtLoss(TrainerCallback):
    """Ends training at the first logged loss at or under `threshold` (every process logs the same mean)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.stopped_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and logs["loss"] <= self.threshold:
            self.stopped_at = state.global_step
            control.should_training_stop = True


def _arguments(config: TrainConfig, out: Path) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation(config),
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=max(config.save_steps, 1),
        save_total_limit=2,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=not config.verbose,
        dataloader_num_workers=config.num_workers,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        ddp_backend="gloo" if world_size() > 1 and not cuda else None,
        ddp_find_unused_parameters=False,
        deepspeed=str(config.deepspeed) if config.deepspeed else None,
        seed=config.seed,
    )


def _trainable(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def _final_model(trainer: Trainer, model, config: TrainConfig):
    """The trained LLaVA model, gathered from ZeRO-3 shards when needed and with LoRA merged on request."""
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if trainer.is_world_process_zero():
            model.load_state_dict(state)
    if config.lora and config.merge_lora:
        model = model.merge_and_unload()
    return model


def _save(model, processor, config: TrainConfig) -> None:
    """The llava-hf checkpoint (or, for unmerged LoRA, the adapter) in OUT; resume checkpoints go."""
    out = Path(config.out)
    model.config.use_cache = True
    if config.lora and not config.merge_lora:
        model.save_pretrained(out / "adapter")
        processor.save_pretrained(out / "adapter")
    else:
        save_model(model, processor, out)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train, save the checkpoint to `config.out`, and return (and write) the final metrics."""
    config = config.resolved()
    out = Path(config.out)
    if (out / "config.json").exists():
        raise TrainingError(f"{out} already holds a checkpoint; choose another --out")
    last = get_last_checkpoint(str(out / CHECKPOINTS)) if (out / CHECKPOINTS).is_dir() else None
    if last and not config.resume:
        raise TrainingError(f"{last} is left from an interrupted run: pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    loaded = load_model(config.model, device="cpu", dtype="float32")
    model, processor = loaded.model, loaded.processor
    dataset = SupervisedDataset(
        config.data, config.images, processor, max_length=config.max_length, max_bad_fraction=config.max_bad_fraction
    )
    set_trainable(model, config)
    if config.lora:
        model = add_lora(model, config)
    model.config.use_cache = False
    trainable, total = _trainable(model)
    args = _arguments(config, out)
    loss_log = LossLog(out / "loss_log.jsonl")
    stop = StopAtLoss(config.stop_at_loss) if config.stop_at_loss is not None else None
    trainer = LlavaTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(processor.tokenizer.pad_token_id),
        callbacks=[loss_log] + ([stop] if stop else []),
        lengths=dataset.lengths,
        projector_lr=config.projector_lr,
    )
    if not config.verbose:  # the bar replaces the Trainer's printed log lines
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(ProgressBar(f"{config.stage} {config.out.name}"))
    if trainer.is_world_process_zero():
        print(dataset.report.summary(), flush=True)
        print(f"training {trainable:,} of {total:,} parameters ({config.stage}{', LoRA' if config.lora else ''})", flush=True)
    result = trainer.train(resume_from_checkpoint=last)
    final = _final_model(trainer, model, config)
    metrics: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        _save(final, processor, config)
        metrics = {
            "stage": config.stage,
            "lora": config.lora,
            "model": config.model,
            "data": dataset.report.to_dict(with_samples=False),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "global_steps": result.global_step,
            "train_loss": result.training_loss,
            "final_loss": loss_log.last.get("loss"),
            "stopped_at_loss": stop.stopped_at if stop else None,
            "resumed_from": last,
            "world_size": world_size(),
            "wall_seconds": round(time.monotonic() - start, 1),
            "runtime": result.metrics,
            "config": config.model_dump(mode="json"),
        }
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if dataset.report.bad:
            (out / "bad_samples.json").write_text(json.dumps(dataset.report.to_dict(), indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return metrics
