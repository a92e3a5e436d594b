"""`llava-labeler retrain`: finetune the active model on new reviewed labels, and promote it only if it is better.

The labeler owns the database side (the lock, which reviews are new, ModelVersion rows,
the promotion); training runs as `llava-labeler train` and `llava-labeler eval`
processes that exchange files with it (labeler and training never import each other).
One run:
1. take the `retrain` lock (two retrains never overlap, whichever pods they run on);
2. count reviews accepted or edited since the active version's data was collected; too
   few: stop, exit 0, nothing written;
3. register the candidate (status `candidate`, its parent the active version);
4. build train.json / eval.json (`retrain_data`), finetune from the active checkpoint
   (LoRA unless `--full`), evaluate candidate and active on the held-out reviews;
5. run the paper benchmarks of `retrain.benchmarks` (`llava-labeler benchmark run`) on candidate
   and active; their scores go on both versions' rows (`metrics["benchmarks"]`);
6. promote when candidate score - active score >= the margin and no benchmark dropped by more
   than its own margin; else the candidate ends `rejected`, the reason naming what fell short.
   Promotion publishes first (`engine build` when the predictor runs
   TensorRT-LLM; an upload when the model store is an object store, `model_store`), then
   rolls out, then marks the version active, so a predictor that never takes the new
   model leaves the old one active. Any error ends it `failed`, the active version untouched.
Every count, score, the decision and its reason go on the candidate's `metrics["retrain"]`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labeler.settings import LabelerConfig, RetrainSettings
from labeler import locks, model_store, registry, retrain_data, rollout, subcommands
from labeler.db import Database
from labeler.models import ModelState, ModelVersion, utcnow
from labeler.reading import ReadError
from labeler.registry import RegistryError

LOCK = "retrain"
Echo = Callable[[str], None]


class RetrainError(RuntimeError):
    """The retrain could not finish; the candidate (if any) is marked failed and the active model is unchanged."""


# Failures whose message is already a sentence for a person; anything else is shown with its type.
EXPLAINED = (
    RetrainError,
    subcommands.CommandFailed,
    model_store.ModelStoreError,
    retrain_data.RetrainDataError,
    rollout.RolloutError,
    ReadError,
    RegistryError,
)


@dataclass(frozen=True)
class RetrainOutcome:
    """How a run ended: `not-enough-reviews`, `dry-run`, `promoted` or `rejected`."""

    decision: str
    reason: str
    reviews: int
    candidate: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Base:
    """The model a retrain starts from and is judged against."""

    name: str | None
    uri: str
    reviews_after: datetime | None


def retrain(db: Database, settings: LabelerConfig, *, full: bool = False, dry_run: bool = False, echo: Echo = print) -> RetrainOutcome:
    """One retrain under the database lock (`locks.LockHeld` when another one runs)."""
    with locks.holding(db, LOCK, settings.retrain.lock_ttl_s) as lock:
        return _Run(db, settings, lock, lora=settings.retrain.lora and not full, echo=echo).run(dry_run)


def overall_score(table: dict[str, dict[str, Any]]) -> float:
    """One number per model: each evaluation type's main metric, weighted by its item count.

    JSON: the mean per-field accuracy (finer than exact match on small slices); captions:
    token F1; VQA: VQA accuracy; multiple choice: accuracy.
    """
    total = sum(row["n"] for row in table.values())
    return sum(_main_metric(kind, row) * row["n"] for kind, row in table.items()) / total if total else 0.0


def _main_metric(kind: str, row: dict[str, Any]) -> float:
    if row.get("fields"):
        return sum(row["fields"].values()) / len(row["fields"])
    for name in ("vqa_accuracy", "accuracy", "token_f1", "exact_match"):
        if name in row:
            return float(row[name])
    raise RetrainError(f"evaluation type {kind!r} has no metric to compare models by: {sorted(row)}")


def train_config(
    options: RetrainSettings, lora: bool, base_uri: str, data: retrain_data.RetrainData, checkpoint: Path
) -> dict[str, Any]:
    """The finetune run as the fields of a `llava-labeler train --config` file (training's TrainConfig)."""
    config = {
        "stage": "finetune", "model": base_uri, "data": str(data.train), "images": str(data.images),
        "out": str(checkpoint), "lora": lora, "max_steps": options.max_steps, "epochs": options.epochs,
        "seed": options.seed, "save_steps": 0, "learning_rate": options.learning_rate, "batch_size": options.batch_size,
    }  # fmt: skip
    return {key: value for key, value in config.items() if value is not None}


class _Run:
    def __init__(self, db: Database, settings: LabelerConfig, lock: locks.HeldLock, *, lora: bool, echo: Echo):
        self.db, self.settings, self.lock, self.lora, self.echo = db, settings, lock, lora, echo
        self.options = settings.retrain

    def run(self, dry_run: bool) -> RetrainOutcome:
        base = self._base()
        collected_at = utcnow()
        reviewed = retrain_data.reviewed_since(self.db, base.reviews_after)
        count = sum(len(items) for items in reviewed.values())
        since = f"since {base.reviews_after:%Y-%m-%d %H:%M:%S} UTC" if base.reviews_after else "in total"
        self.echo(f"retrain: {count} reviews accepted or edited {since}; base model {base.name or base.uri}")
        if count < self.options.min_reviews:
            reason = f"{count} new reviews, fewer than the {self.options.min_reviews} a retrain needs"
            self.echo(f"retrain: nothing to do: {reason}")
            return RetrainOutcome("not-enough-reviews", reason, count)
        if dry_run:
            reason = f"would finetune {base.uri} ({'LoRA' if self.lora else 'full'}) on {count} reviews"
            self.echo(f"retrain: dry run: {reason}")
            return RetrainOutcome("dry-run", reason, count)
        facts: dict[str, Any] = {"reviews": count, "reviews_until": collected_at.isoformat(), "lora": self.lora}
        name, parent = self._register(f"retrain-{collected_at:%Y%m%d-%H%M%S}", base, facts)
        try:
            return self._train_and_judge(name, parent, base, reviewed, facts)
        except BaseException as exc:  # Ctrl-C included: the candidate must not stay a "candidate" forever
            reason = str(exc) if isinstance(exc, EXPLAINED) else repr(exc)
            self._conclude(name, ModelState.FAILED, {**facts, "decision": "failed", "reason": reason})
            self.echo(f"retrain: {name} failed: {reason}")
            if not isinstance(exc, Exception):
                raise
            raise RetrainError(f"{name} failed: {reason}") from exc

    def _train_and_judge(
        self, name: str, parent: str, base: _Base, reviewed: dict[int, set[int]], facts: dict[str, Any]
    ) -> RetrainOutcome:
        model_store.check(self.settings)
        work = Path(self.settings.data_dir).resolve() / "retrain" / name
        data = retrain_data.build(self.db, self.settings, reviewed, work)
        facts["data"] = data.counts
        counts = data.counts
        self.echo(
            f"retrain: data: {counts['train_reviewed']} reviewed + {counts['replay']} replay records to train on, "
            f"{counts['held_out']} held out"
        )
        checkpoint = model_store.versions_dir(self.settings) / name
        start = model_store.local_copy(self.settings, base.uri)
        facts["training"] = self._train(start, data, checkpoint, work)
        candidate = self._evaluate("candidate", str(checkpoint), data, work)
        active = self._evaluate("active", start, data, work)
        gain = candidate["score"] - active["score"]
        margin = self.options.margin
        facts["evaluation"] = {"candidate": candidate, "active": {"version": parent, **active}, "margin": margin}
        if self.options.benchmarks:
            facts["benchmarks"] = self._benchmarks({"candidate": str(checkpoint), "active": start}, work)
            self._record_active_scores(parent, facts["benchmarks"])
        verdict = f"candidate {candidate['score']:.4f} vs active {active['score']:.4f}: {gain:+.4f}"
        dropped = [
            f"{bench} {row['candidate']:.2f} vs active {row['active']:.2f} ({-row['drop']:+.2f}), "
            f"a drop above its margin {row['margin']:.2f}"
            for bench, row in facts.get("benchmarks", {}).items()
            if row["drop"] > row["margin"]
        ]
        if gain < margin or dropped:
            held_out = f"below the margin {margin:+.4f}" if gain < margin else f"at least the margin {margin:+.4f}"
            reason = f"{verdict}, {held_out}" + ("; benchmark dropped: " + "; ".join(dropped) if dropped else "")
            self._conclude(name, ModelState.REJECTED, {**facts, "decision": "rejected", "reason": reason})
            self.echo(f"retrain: rejected {name}: {reason}; {parent} stays active")
            return RetrainOutcome("rejected", reason, facts["reviews"], name, facts)
        reason = f"{verdict}, at least the margin {margin:+.4f}"
        uri, serving = self._publish(name, checkpoint, work)
        facts["published"] = {"uri": uri, "serving_uri": serving}
        facts["rollout"] = rollout.roll_out(self.settings.rollout, serving, echo=self.echo).to_dict()
        self._promote(name, uri, {**facts, "decision": "promoted", "reason": reason})
        self.echo(f"retrain: promoted {name}: {reason}")
        return RetrainOutcome("promoted", reason, facts["reviews"], name, facts)

    def _publish(self, name: str, checkpoint: Path, work: Path) -> tuple[str, str]:
        """Compile the engines when the predictor runs TensorRT-LLM, upload to an object store when there is one;
        (the URI the version records, the URI the predictor serves)."""
        served, local = name, checkpoint
        build = self.settings.rollout.engine_build
        if build:  # before anything is published: a failed build leaves nothing behind
            served, local = f"{name}-trtllm", checkpoint.with_name(f"{name}-trtllm")
            args = ["engine", "build", "--model", str(checkpoint), "--out", str(local), *self.settings.rollout.engine_build_args]
            self.echo(f"retrain: compiling {name} with TensorRT-LLM into {local}")
            self._cli(args, work / "engine-build.log", "the TensorRT-LLM engine build")
        uri = model_store.publish(self.settings, checkpoint, name)
        if build:
            model_store.publish(self.settings, local, served)
        if model_store.uploads(self.settings):
            self.echo(f"retrain: uploaded {name} to {uri}")
        return uri, rollout.storage_uri(self.settings.rollout, served, str(local))

    # the database side
    def _base(self) -> _Base:
        with self.db.read() as session:
            current = registry.active(session)
        if current is None:  # nothing promoted yet: the configured model, and every review so far
            return _Base(None, self.settings.engine.model, None)
        return _Base(current.name, current.uri, _reviews_after(current))

    def _register(self, stem: str, base: _Base, facts: dict[str, Any]) -> tuple[str, str]:
        """The candidate's row (named `stem`, or `stem-N` when a run in the same second took it); (name, parent)."""

        def add(session) -> tuple[str, str]:
            parent = registry.get(session, base.name) if base.name else registry.version_for_uri(session, base.uri)
            taken = set(session.scalars(select(ModelVersion.name).where(ModelVersion.name.startswith(stem))))
            name = next(n for n in (stem, *(f"{stem}-{k}" for k in range(2, len(taken) + 3))) if n not in taken)
            registry.register(session, name, str(model_store.versions_dir(self.settings) / name), parent=parent.name, metrics={"retrain": facts})
            return name, parent.name

        name, parent = self.db.retrying(add)
        self.echo(f"retrain: registered candidate {name} (parent {parent})")
        return name, parent

    def _conclude(self, name: str, status: str, facts: dict[str, Any]) -> None:
        self.db.retrying(lambda session: registry.conclude(session, name, status, _version_metrics(facts)))

    def _record_active_scores(self, name: str, gates: dict[str, dict[str, Any]]) -> None:
        """Put the active model's benchmark scores on its version's row (next to what it already holds)."""

        def record(session) -> None:
            version = registry.get(session, name)
            own = {bench: {"score": row["active"], "metric": row["metric"]} for bench, row in gates.items()}
            version.metrics = {**(version.metrics or {}), "benchmarks": {**(version.metrics or {}).get("benchmarks", {}), **own}}

        self.db.retrying(record)

    def _promote(self, name: str, uri: str, facts: dict[str, Any]) -> None:
        if not locks.still_held(self.db, self.lock):
            raise RetrainError("the retrain lock expired while training (raise retrain.lock_ttl_s); not promoting")

        def promote(session) -> None:
            registry.conclude(session, name, ModelState.CANDIDATE, _version_metrics(facts)).uri = uri
            registry.promote(session, name)

        self.db.retrying(promote)

    # the training side: processes and files
    def _train(self, base_uri: str, data: retrain_data.RetrainData, checkpoint: Path, work: Path) -> dict[str, Any]:
        config = work / "train-config.json"
        config.write_text(json.dumps(train_config(self.options, self.lora, base_uri, data, checkpoint), indent=1) + "\n")
        self.echo(f"retrain: finetuning {base_uri} ({'LoRA' if self.lora else 'full'}) into {checkpoint}: {config.read_text()}")
        self._cli(["train", "--config", str(config), *self.options.extra_train_args], work / "train.log", "training")
        metrics = json.loads((checkpoint / "train_metrics.json").read_text())
        keep = ("global_steps", "train_loss", "final_loss", "trainable_parameters", "wall_seconds")
        return {key: metrics.get(key) for key in keep}

    def _evaluate(self, who: str, model: str, data: retrain_data.RetrainData, work: Path) -> dict[str, Any]:
        self.echo(f"retrain: evaluating the {who} model on the held-out reviews")
        table = subcommands.evaluate(
            model, data.eval, data.images, work / f"scores-{who}.json", f"evaluating the {who} model", self.echo,
            batch_size=self.options.eval_batch_size,
        )  # fmt: skip
        return {"score": overall_score(table), "table": table}

    def _benchmarks(self, models: dict[str, str], work: Path) -> dict[str, dict[str, Any]]:
        """Each gate's benchmark on candidate and active (`benchmark run` processes): both scores, the drop, the margin."""
        results: dict[str, dict[str, Any]] = {}
        for gate in self.options.benchmarks:
            scores: dict[str, Any] = {}
            for who, model in models.items():
                out = work / "benchmarks" / gate.name / who
                args = ["benchmark", "run", gate.name, "--model", model, "--data", str(gate.data), "--out", str(out)]
                args += ["--batch-size", str(self.options.eval_batch_size), *(["--limit", str(gate.limit)] if gate.limit else [])]
                self.echo(f"retrain: benchmark {gate.name} on the {who} model")
                self._cli(args, work / "benchmarks" / f"{gate.name}-{who}.log", f"benchmark {gate.name} on the {who} model")
                scores[who] = json.loads((out / "scores.json").read_text())["scores"]
                if scores[who] is None:
                    raise RetrainError(f"benchmark {gate.name} has private answers (an upload file only): it cannot gate a retrain")
            candidate, active = scores["candidate"]["score"], scores["active"]["score"]
            results[gate.name] = {
                "candidate": candidate, "active": active, "drop": active - candidate, "margin": gate.margin,
                "metric": scores["candidate"]["metric"],
            }  # fmt: skip
            self.echo(f"retrain: {gate.name} ({results[gate.name]['metric']}): candidate {candidate:.2f}, active {active:.2f}")
        return results

    def _cli(self, args: list[str], log: Path, what: str) -> None:
        subcommands.run_command(args, log, what, self.echo)


def _version_metrics(facts: dict[str, Any]) -> dict[str, Any]:
    """A candidate's row: the retrain's facts, and its own benchmark scores where the retrain ran them."""
    own = {bench: {"score": row["candidate"], "metric": row["metric"]} for bench, row in facts.get("benchmarks", {}).items()}
    return {"retrain": facts, **({"benchmarks": own} if own else {})}


def _reviews_after(version: ModelVersion) -> datetime:
    """Reviews newer than this were not in `version`'s data: its recorded cut-off, else its creation."""
    until = ((version.metrics or {}).get("retrain") or {}).get("reviews_until")
    return datetime.fromisoformat(until) if until else version.created_at
