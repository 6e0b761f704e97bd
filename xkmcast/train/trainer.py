"""The training loop: one stage of a pipeline, on one process or many (torchrun).

One optimizer step (``step``) consumes ``batch_size`` samples: ``world_size`` processes x
``accumulation`` micro-batches x ``per_rank`` samples (:func:`~xkmcast.train.distributed.split_batch`).
For each micro-batch ``pipeline.loss(stage, batch, generator)`` gives per-sample losses; their mean /
accumulation is back-propagated. Then: a non-finite loss anywhere stops the run
(:class:`TrainingDivergedError`, the last good checkpoint is kept); gradients are clipped to
``grad_clip`` (global norm); the learning rate is ``lr x warmup(step) x decay(step)``
(:func:`~xkmcast.train.schedule.learning_rate`); the optimizer steps and the EMA of the weights follows (:class:`~xkmcast.train.ema.EMA`).

Every ``validate_every`` steps the EMA weights are evaluated on the validation set with a fixed noise
generator (so successive validations are comparable): their loss, or for a diffusion whose members make
their own ensemble mean the members' fair CRPS (``valid_score``: :mod:`xkmcast.train.valid_score`);
early stopping counts validations without an
improvement of ``min_delta``; the EMA weights of the best validation are kept (in memory and in each
checkpoint). A run stops cleanly -- checkpoint, then export of the EMA weights as a model bundle
``<run dir>/model``, the best validation's with ``export_weights: best`` (default) -- when its duration, time budget or FLOPs budget (FLOPs of the first
step counted with ``torch.utils.flop_counter``) is reached or early stopping triggers; on SIGINT /
SIGTERM it writes a checkpoint and exits.

Determinism: the data order is a function of (seed, epoch) (DistributedSampler), the position in the
epoch is checkpointed, the DataLoader has its own generator, and the RNG states of every rank are saved,
so N steps in one go and N/2 + resume + N/2 give bitwise identical weights (with ``num_workers=0``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..device import allocator_warning, autocast, native_bf16, resolve_precision
from ..diffusion.seeds import row_seeds
from ..errors import XkmcastError, explain
from . import checkpoint as ckpt
from . import distributed as D
from .config import TrainConfig, run_dir, save_config
from .ema import EMA, full_tensor
from .logging import RunLog, SigmaBins, save_image
from .schedule import learning_rate
from .setup import build_run, seed_everything
from .setup_messages import setup_messages
from .spread import evenly_spread_batches
from .valid_score import members_crps, resolve_valid_score

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError", "train", "to_device"]


class TrainingDivergedError(XkmcastError, FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    bundle: Path | None
    step: int
    samples: int
    stop_reason: str
    valid_losses: list[tuple[int, float]]  # (step, validation score: the loss or the members' CRPS)
    train_loss: float
    parameters: int
    flops_per_step: float | None
    samples_per_second: float


# ----------------------------------------------------------------------------------------- pieces
def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch (tensors in dicts / lists) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``cfg.model.stage`` of a pipeline.

    ``pipeline``, ``train_data`` and ``valid_data`` are normally built from ``cfg`` (:func:`build_run`);
    pass them to train a pipeline and torch Datasets of your own. ``stop_after`` stops (cleanly, with
    a checkpoint) after that absolute step without changing the schedule, as an interruption would.
    Resuming is bitwise exact with the same number of processes and ``num_workers=0``.
    """

    def __init__(self, cfg: TrainConfig, *, pipeline=None, train_data=None, valid_data=None,
                 quiet: bool = False, stop_after: int | None = None):
        self.cfg, self.t = cfg, cfg.training
        self.quiet, self.stop_after = quiet, stop_after
        self._given = (pipeline, train_data, valid_data)
        self._signal: int | None = None

    # ------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        t = self.t
        self.env = D.setup(t.device)
        self.dir = run_dir(self.cfg)
        self.ckpt_dir = self.dir / "checkpoints"
        pipeline, train_data, valid_data = self._given
        seed_everything(t.seed)  # identical fresh networks on every process
        if pipeline is None or train_data is None:
            pipeline, train_data, valid_data = build_run(self.cfg, pipeline, train_data, valid_data, self.env)
        self.pipeline = pipeline.to(self.env.device)
        self.train_data, self.valid_data = train_data, valid_data
        self.stage = self.cfg.model.stage
        self.valid_score = resolve_valid_score(t.valid_score, self.stage, self.pipeline)
        for name, module in self.pipeline.stages.items():  # only the trained stage learns
            module.requires_grad_(name == self.stage)
            module.train(name == self.stage)
        self.module = self.pipeline.stages[self.stage]
        batch = D.batch_for_samples(t.batch_size, len(train_data), self.env.world_size, t.batch_size_per_rank)
        messages = []
        if batch != t.batch_size:  # a short record: batches of what it holds
            messages.append(f"training.batch_size {t.batch_size} -> {batch}: the training set holds "
                            f"{len(train_data)} samples")
            self.t = t = t.model_copy(update={"batch_size": batch})
            self.cfg = self.cfg.model_copy(update={"training": t})
        self.per_rank, self.accum = D.split_batch(t.batch_size, self.env.world_size, t.batch_size_per_rank)
        n = t.duration if t.duration_unit == "steps" else math.ceil(t.duration / t.batch_size)
        self.total_steps = n
        self.wrapped = D.wrap_stage(self.module, self.env, t.strategy)
        self.pipeline.stages[self.stage] = self.wrapped
        seed_everything(t.seed + self.env.rank)  # dropout / augmentation differ between processes
        params = [p for p in self.module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.ema = EMA(self.module, t.ema, t.batch_size) if t.ema.enabled else None
        self.generator = torch.Generator(device=self.env.device).manual_seed(t.seed * 1000 + self.env.rank)
        self.step = self.samples = self.epoch = self.position = 0
        self.elapsed = 0.0
        self.best, self.bad_validations = math.inf, 0
        self.valid_losses: list[tuple[int, float]] = []
        self.best_weights: dict[str, torch.Tensor] | None = None  # EMA weights of the best validation (CPU)
        self.flops_per_step: float | None = None
        self._resume()
        if self.env.is_main:
            save_config(self.cfg, self.dir / "config.yaml")
        self.log = RunLog(self.dir, total_steps=self.total_steps, start_step=self.step, active=self.env.is_main,
                          tensorboard=t.tensorboard, quiet=self.quiet, batch_size=t.batch_size,
                          progress_every=t.log_every,
                          time_left=None if t.time_budget is None else lambda: t.time_budget - self.elapsed)
        for message in messages:
            self.log.message(message)
        self.precision = resolve_precision(self.env.device, t.precision)
        if self.env.device.type == "cpu" and (slow := allocator_warning()):
            self.log.message(slow)
        if t.precision == "auto":
            hardware = native_bf16(self.env.device)
            self.log.message(f"precision auto: {self.precision} "
                             + (f"({hardware} computes bfloat16)" if hardware else "(no bfloat16 hardware found)"))
        for message in setup_messages(self.pipeline, self.stage):
            self.log.message(message)

    def _resume(self) -> None:
        path = ckpt.resolve_resume(self.t.resume, self.ckpt_dir)
        if path is None:
            return
        state = ckpt.load_checkpoint(path, self.cfg.model_signature())
        D.load_model_state(self.module, self.optimizer, state["model"], state["optimizer"], self.t.strategy, self.env)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        for key in ("step", "samples", "epoch", "position", "elapsed", "best", "bad_validations", "flops_per_step"):
            setattr(self, key, state[key])
        self.valid_losses = [tuple(v) for v in state["valid_losses"]]
        self.best_weights = state.get("best_weights")
        if state.get("valid_score", "loss") != self.valid_score:  # another measure: its best is no bar
            self.best, self.bad_validations, self.valid_losses, self.best_weights = math.inf, 0, [], None
        rngs = state["rng"]
        if len(rngs) == self.env.world_size:
            ckpt.set_rng_state(rngs[self.env.rank]["global"])
            self.generator.set_state(rngs[self.env.rank]["loss"])

    # ------------------------------------------------------------------------------------- data
    def _micro_batches(self) -> Iterator[Any]:
        """Micro-batches forever; ``self.epoch`` / ``self.position`` track where we are."""
        while True:
            if hasattr(self.train_data, "set_epoch"):  # e.g. other random patches each epoch
                self.train_data.set_epoch(self.epoch)
            sampler = D.ResumableSampler(self.train_data, self.env, self.t.seed, self.epoch,
                                        self.position * self.per_rank)
            loader = torch.utils.data.DataLoader(
                self.train_data, batch_size=self.per_rank, sampler=sampler, drop_last=True,
                num_workers=self.cfg.data.num_workers, generator=torch.Generator().manual_seed(self.t.seed),
                persistent_workers=False)
            if len(loader) == 0 and self.position == 0:
                raise XkmcastError(explain("the training set is smaller than one batch per process",
                                           expected=f">= {self.per_rank * self.env.world_size} samples",
                                           found=len(self.train_data), fix="lower training.batch_size"))
            for batch in loader:
                self.position += 1
                yield to_device(batch, self.env.device)
            self.epoch, self.position = self.epoch + 1, 0

    # ------------------------------------------------------------------------------------- step
    def _autocast(self):
        return autocast(self.env.device, self.precision)

    def _train_step(self, batches: Iterator[Any], bins: SigmaBins) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.env.device)
        for i in range(self.accum):
            batch = next(batches)
            # FLOPs of the run's first step only: counting changes the kernels (not bitwise), and a
            # resumed run takes the count from its checkpoint so that resuming stays bitwise exact
            count = self.flops_per_step is None and self.step == 0 and i == 0
            with D.no_sync(self.wrapped, skip=i < self.accum - 1), self._flop_counter(count) as fc:
                with self._autocast():
                    loss, sigma = self.pipeline.loss(self.stage, batch, generator=self.generator)
                (loss.float().mean() / self.accum).backward()
            if count:
                self.flops_per_step = float(fc.get_total_flops()) * self.accum * self.env.world_size
            total += loss.detach().float().mean() / self.accum
            if sigma is not None:
                bins.add(loss.detach().float(), sigma)
        mean = D.all_mean(total, self.env)
        if not torch.isfinite(mean):
            raise self._diverged(float(mean))
        if self.t.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.t.grad_clip)
        lr = learning_rate(self.step, self.t, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        self.samples += self.t.batch_size
        if self.ema is not None:
            self.ema.update(self.samples)
        return float(mean)

    @contextlib.contextmanager
    def _flop_counter(self, enabled: bool):
        if not enabled:
            yield None
            return
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            yield fc

    def _diverged(self, value: float) -> TrainingDivergedError:
        last = ckpt.latest_checkpoint(self.ckpt_dir)
        return TrainingDivergedError(explain(
            f"the training loss became {value} at step {self.step + 1}; training stopped",
            expected="a finite loss",
            found=f"loss {value}; last good checkpoint: {last or 'none'}",
            fix="lower training.lr, set training.grad_clip (e.g. 1.0), use training.precision=fp32, "
                "check the data for NaNs; re-running resumes from the last good checkpoint",
        ))

    # ------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean score of the EMA weights on the validation set (:meth:`_valid_scores`; RNG states untouched)."""
        if self.valid_data is None or len(self.valid_data) == 0:
            return None
        saved = ckpt.rng_state()
        total = torch.zeros(2, dtype=torch.float64)  # on the CPU: MPS has no float64
        first = None
        with self._ema_weights(), self._eval_mode():
            for batch, scores in self._valid_scores():
                first = batch if first is None else first
                total += torch.tensor([float(scores.detach().double().sum()), float(scores.numel())], dtype=torch.float64)
            if self.t.image_every and self.env.is_main and first is not None and self.step % self.t.image_every == 0:
                self._image(first)
        ckpt.set_rng_state(saved)
        total = D.all_mean(total, self.env)
        return float(total[0] / total[1].clamp_min(1))

    def _valid_scores(self) -> Iterator[tuple[dict, torch.Tensor]]:
        """``(batch, per-sample scores)`` of this process's share of the validation: with
        ``valid_score: crps`` the members' fair CRPS on ``valid_samples`` samples spread evenly over the
        set (member k of sample j seeded by ``row_seed(seed, k, j)``), else the loss with a fixed noise
        generator on the first ``valid_batches`` batches."""
        t, env = self.t, self.env
        if self.valid_score == "crps":
            for index, batch in evenly_spread_batches(self.valid_data, t.valid_samples, env.device, self.per_rank,
                                                      rank=env.rank, world_size=env.world_size):
                yield batch, members_crps(self.pipeline, batch, [row_seeds(t.seed, t.valid_members, j) for j in index])
            return
        sampler = torch.utils.data.DistributedSampler(self.valid_data, num_replicas=env.world_size, rank=env.rank,
                                                      shuffle=False, drop_last=False)
        loader = torch.utils.data.DataLoader(self.valid_data, batch_size=self.per_rank, sampler=sampler)
        gen = torch.Generator(device=env.device).manual_seed(t.seed + 7919 * (env.rank + 1))
        for i, batch in enumerate(loader):
            if t.valid_batches is not None and i >= t.valid_batches:
                break
            batch = to_device(batch, env.device)
            with self._autocast():
                loss, _ = self.pipeline.loss(self.stage, batch, generator=gen)
            yield batch, loss

    @contextlib.contextmanager
    def _ema_weights(self):
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            yield

    @contextlib.contextmanager
    def _eval_mode(self):
        self.module.eval()
        try:
            yield
        finally:
            self.module.train()

    def _image(self, batch: dict) -> None:
        """Target vs prediction of the first validation sample (pipelines with ``sample``)."""
        if not (hasattr(self.pipeline, "sample") and isinstance(batch, dict) and "target" in batch):
            return
        try:
            n_in = len(getattr(self.pipeline.spec, "input_vars", [])) or batch["input"].shape[1]
            cond = batch["input"][:1, :n_in]  # sample() appends the invariants itself
            out = self.pipeline.sample(cond, seeds=[[self.t.seed]], num_steps=8)
        except (NotImplementedError, TypeError, RuntimeError, XkmcastError) as exc:
            self.log.message(f"validation image skipped: {type(exc).__name__}: {exc}")
            return
        pred = (out[0] if isinstance(out, tuple) else out)[0, 0]
        names = list(getattr(self.pipeline.spec, "output_vars", []))
        target = batch["target"][0]
        if batch.get("mask") is not None:  # missing target values are 0 in a batch
            target = torch.where(batch["mask"][0].bool(), target, torch.full_like(target, float("nan")))
        png = save_image(self.dir / "images" / f"valid-{self.step:09d}.png", target, pred, names,
                         title=f"step {self.step}")
        self.log.image(self.step, "valid/target_vs_prediction", png)

    # ------------------------------------------------------------------------- checkpoint/export
    def save_checkpoint(self) -> Path | None:
        model_sd, optim_sd = D.model_state(self.module, self.optimizer, self.t.strategy, self.env)
        rng = D.gather_objects({"global": ckpt.rng_state(), "loss": self.generator.get_state().cpu()}, self.env)
        ema = self.ema.state_dict() if self.ema is not None else None
        path = None
        if self.env.is_main:
            state = {
                "model": model_sd, "optimizer": optim_sd, "ema": ema, "rng": rng,
                "step": self.step, "samples": self.samples, "epoch": self.epoch, "position": self.position,
                "elapsed": self.elapsed, "best": self.best, "bad_validations": self.bad_validations,
                "valid_losses": [list(v) for v in self.valid_losses], "signature": self.cfg.model_signature(),
                "world_size": self.env.world_size, "flops_per_step": self.flops_per_step,
                "best_weights": self.best_weights, "valid_score": self.valid_score,
            }
            path = ckpt.save_checkpoint(self.ckpt_dir, state, self.step, self.t.max_checkpoints)
        D.barrier(self.env)
        return path

    def _weights_copy(self) -> dict[str, torch.Tensor] | None:
        """The (EMA) weights of the trained stage as a full CPU state dict (None on non-main ranks)."""
        with self._ema_weights():
            full = D.model_state(self.module, self.optimizer, self.t.strategy, self.env)[0]
        return {k: v.detach().cpu().clone() for k, v in full.items()} if self.env.is_main else None

    def exported_weights(self) -> tuple[str, dict[str, torch.Tensor] | None]:
        """("best", the best validation's weights) with ``export_weights: best`` once a validation kept
        them, else ("last", None): the EMA weights at the end. The same answer on every process (only the
        main process holds the weights)."""
        have_best = D.any_of([self.best_weights is not None], self.env)[0]
        if self.t.export_weights == "best" and have_best:
            return "best", self.best_weights
        return "last", None

    def export(self) -> Path | None:
        """The pipeline with the exported weights of the trained stage (:meth:`exported_weights`) as a
        bundle ``<run dir>/model`` (:func:`xkmcast.train.export.export_run`)."""
        from .export import export_run

        return export_run(self)

    # ------------------------------------------------------------------------------------- loop
    _REASONS = ("SIGINT", "SIGTERM", "duration", "stop_after", "time_budget", "flops_budget", "early_stopping")

    def _stop_reason(self) -> str | None:
        """Why to stop now (the same answer on every process: the first reason any process has)."""
        t = self.t
        flags = [
            self._signal == signal.SIGINT,
            self._signal == signal.SIGTERM,
            self.step >= self.total_steps,
            self.stop_after is not None and self.step >= self.stop_after,
            t.time_budget is not None and self.elapsed >= t.time_budget,
            bool(t.flops_budget and self.flops_per_step and self.step * self.flops_per_step >= t.flops_budget),
            t.patience is not None and self.bad_validations >= t.patience,
        ]
        flags = D.any_of(flags, self.env)
        return next((r for r, f in zip(self._REASONS, flags) if f), None)

    def _after_step(self, loss: float, bins: SigmaBins, t0: float, step0: int) -> None:
        t = self.t
        rate = (self.step - step0) * t.batch_size / max(time.perf_counter() - t0, 1e-9)
        if self.step % t.log_every == 0 or self.step == 1:
            values = {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": rate,
                      "samples": float(self.samples), **bins.means()}
            if self.flops_per_step:
                values["flops"] = self.step * self.flops_per_step
            self.log.scalars(self.step, values)
            bins.reset()
        self.log.progress(self.step, loss, rate)
        if self.step % t.validate_every == 0:
            v = self.validate()
            if v is not None:
                self.valid_losses.append((self.step, v))
                self.log.scalars(self.step, {f"valid_{self.valid_score}": v})
                if v < self.best - t.min_delta:
                    self.best, self.bad_validations = v, 0
                    self.best_weights = self._weights_copy()
                else:
                    self.bad_validations += 1
        if self.step % t.checkpoint_every == 0:
            self.save_checkpoint()

    def _write_digest(self, loss: float) -> None:
        """``<run dir>/ranks/rank<r>.json``: this process's step, last loss and SHA-256 of its weights
        (all ranks of a data-parallel run must agree)."""
        import hashlib
        import json

        digest = hashlib.sha256()
        for name, tensor in sorted(self.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(full_tensor(tensor).detach().cpu().contiguous().numpy().tobytes())
        path = self.dir / "ranks" / f"rank{self.env.rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rank": self.env.rank, "world_size": self.env.world_size, "step": self.step,
                                    "loss": loss, "sha256": digest.hexdigest()}))

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # second signal: stop at once
            raise KeyboardInterrupt
        self._signal = signum

    @contextlib.contextmanager
    def _signals(self):
        old = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def run(self) -> TrainResult:
        """Train until a stop condition; returns what happened (rank 0 has the bundle path)."""
        try:
            self._setup()
            with self._signals():
                return self._loop()
        finally:
            if getattr(self, "log", None) is not None:
                self.log.close()
            if getattr(self, "env", None) is not None:
                D.teardown(self.env)

    def _loop(self) -> TrainResult:
        bins, batches = SigmaBins(), self._micro_batches()
        step0, t0, loss = self.step, time.perf_counter(), math.nan
        last_ckpt = self.step
        reason = self._stop_reason()
        while reason is None:
            tick = time.perf_counter()
            loss = self._train_step(batches, bins)
            self.elapsed += time.perf_counter() - tick
            self._after_step(loss, bins, t0, step0)
            if self.step % self.t.checkpoint_every == 0:
                last_ckpt = self.step
            reason = self._stop_reason()
        if self.step != last_ckpt or ckpt.latest_checkpoint(self.ckpt_dir) is None:
            self.save_checkpoint()
        bundle = None if reason in ("SIGINT", "SIGTERM", "stop_after") else self.export()
        self._write_digest(loss)
        rate = (self.step - step0) * self.t.batch_size / max(time.perf_counter() - t0, 1e-9)
        self.log.message(f"stopped at step {self.step} ({reason}); run directory {self.dir}")
        return TrainResult(
            run_dir=self.dir, bundle=bundle, step=self.step, samples=self.samples, stop_reason=reason,
            valid_losses=list(self.valid_losses), train_loss=loss,
            parameters=sum(p.numel() for p in self.module.parameters()),
            flops_per_step=self.flops_per_step, samples_per_second=rate,
        )


def train(cfg: TrainConfig, **kwargs) -> TrainResult:
    """Run :class:`Trainer` ``(cfg, **kwargs)``; with ``training.stages`` (a recipe), each stage in turn
    (:func:`xkmcast.train.recipe.train_stages`)."""
    from .recipe import is_recipe, train_stages

    if is_recipe(cfg):
        return train_stages(cfg, **kwargs)
    return Trainer(cfg, **kwargs).run()
