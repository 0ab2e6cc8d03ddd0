"""Training shared by every method: ``TrainConfig``, the optimizers (Adam, LARS), the linear warm-up +
cosine schedule, one minibatch loop (``MinibatchTrainer``), and the budget of adversarial training.

The loop is the only place where a method's parameters are stepped. Per epoch it puts the model in
training mode and, for each stream in turn, draws one ``torch.randperm`` of the stream's rows (on their
device) and steps through those minibatches; the stream's schedule, if any, steps after every optimizer
step. Methods rely on that order of random numbers: their pinned results (tests/test_pinned_behaviour.py)
were made with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector, DetectorConfig, ProgressFn
from robust_ad_bench.core.errors import unknown_choice

OPTIMIZERS = ("adam", "lars")
LARS_TRUST = 1e-3  # trust coefficient of the LARS wrapper in the COBRA authors' code (torchlars)
LARS_EPS = 1e-8  # the same wrapper's eps
LARS_MOMENTUM = 0.9


@dataclass
class TrainConfig(DetectorConfig):
    """Config of methods trained by Adam over shuffled minibatches of their training images
    (``train_on_images``)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0


class LARS(torch.optim.SGD):
    """SGD with momentum where every parameter's gradient plus weight decay is rescaled by
    ``trust·‖w‖ / (‖g‖ + wd·‖w‖ + eps)`` (1 where ‖w‖ or ‖g‖ is zero), as the torchlars wrapper of the COBRA
    authors' code: biases and batch-norm parameters are scaled too (SimCLR's LARS skips them)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> None:
        super().__init__(params, lr=lr, momentum=LARS_MOMENTUM, weight_decay=0.0)
        self.lars_weight_decay = weight_decay

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        wd = self.lars_weight_decay
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                w_norm, g_norm = p.norm(), p.grad.norm()
                trust = torch.where((w_norm > 0) & (g_norm > 0),
                                    LARS_TRUST * w_norm / (g_norm + wd * w_norm + LARS_EPS), torch.ones_like(w_norm))
                p.grad.add_(p, alpha=wd).mul_(trust)
        return super().step(closure)


def make_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, kind: str = "adam",
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    """Adam (``eps`` is Adam's) or LARS over ``params``."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=eps)
    if kind == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay)
    raise unknown_choice("optimizer", kind, OPTIMIZERS)


def warmup_cosine(step: int, total: int, warmup: int, multiplier: float = 1.0) -> float:
    """Learning-rate factor at ``step`` (0-based) of ``total``: a linear warm-up over the first ``warmup``
    steps, then cosine decay to zero at ``total`` from the peak. ``multiplier`` = 1: the warm-up goes from
    1/warmup to 1; > 1: from 1 to ``multiplier`` (the COBRA authors' GradualWarmupScheduler with multiplier
    10). Without warm-up the peak is 1 whatever the multiplier."""
    peak = multiplier if warmup > 0 else 1.0
    if step < warmup:
        return (step + 1) / warmup if multiplier == 1 else 1 + (multiplier - 1) * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int,
                           multiplier: float = 1.0) -> torch.optim.lr_scheduler.LambdaLR:
    """``warmup_cosine`` as a scheduler stepped once per optimizer step (the loop does it)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup, multiplier))


def resample(images: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows of ``images`` for an epoch: the whole set repeated ``count // n`` times plus a random
    subset (without replacement) of ``count % n`` rows, drawn once (the COBRA authors' fixed 10,000 MVTec
    images per epoch); ``count`` = 0 returns ``images``."""
    if count <= 0:
        return images
    n = len(images)
    rows = torch.cat([torch.arange(n).repeat(count // n), torch.randperm(n)[: count % n]])
    return images[rows.to(images.device)]


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return math.ceil(rows / batch_size)


@dataclass
class Stream:
    """One stream of minibatches: the rows of the ``data`` tensors, shuffled together every epoch, the
    loss of a batch (called with the batch's rows of each tensor), and what steps on that loss.
    ``refresh(epoch)``, when given, returns the epoch's data instead (BGAD: fresh synthetic anomalies every
    epoch); it is called at the start of each epoch, before the stream's shuffle."""

    data: tuple[torch.Tensor, ...]
    loss: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped after every optimizer step
    refresh: Callable[[int], tuple[torch.Tensor, ...]] | None = None


class MinibatchTrainer:
    """Epochs of shuffled minibatches over one or more streams (BGAD: one per feature level, each with its
    own optimizer), visited in turn within each epoch.

    - ``model`` is put in training mode at the start of every epoch and in eval mode at the end.
    - ``report`` (a detector's ``report``) gets ``(epoch, epochs, describe(mean loss))`` after each epoch;
      the mean loss is over the rows of the epoch.
    - ``stop`` is asked after every optimizer step; once it says yes, the epoch is reported and training
      ends (SLA²P's running-accuracy threshold).
    - batches of fewer than ``min_batch`` rows are skipped (batch norm needs two samples).
    - ``epoch`` is the current epoch (0-based) while it runs, for losses that change with it.
    """

    def __init__(self, model: nn.Module, epochs: int, batch_size: int, *, report: ProgressFn | None = None,
                 describe: Callable[[float], str] | None = None, stop: Callable[[], bool] | None = None,
                 min_batch: int = 1) -> None:
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.report = report
        self.describe = describe or (lambda loss: f"loss {loss:.4f}")
        self.stop = stop
        self.min_batch = min_batch
        self.epoch = 0

    def run(self, *streams: Stream) -> list[float]:
        """Train; returns the mean loss of each epoch."""
        history: list[float] = []
        for epoch in range(self.epochs):
            self.epoch = epoch
            self.model.train()
            mean_loss, stopped = self._run_epoch(streams)
            history.append(mean_loss)
            if self.report is not None:
                self.report(epoch + 1, self.epochs, self.describe(mean_loss))
            if stopped:
                break
        self.model.eval()
        return history

    def _run_epoch(self, streams: tuple[Stream, ...]) -> tuple[float, bool]:
        """One epoch over every stream in turn: (mean loss over its rows, whether ``stop`` ended it)."""
        total, rows = 0.0, 0
        for stream in streams:
            data = stream.data if stream.refresh is None else stream.refresh(self.epoch)
            order = torch.randperm(len(data[0]), device=data[0].device)
            for idx in order.split(self.batch_size):
                if len(idx) < self.min_batch:
                    continue
                loss = stream.loss(*(d[idx] for d in data))
                stream.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stream.optimizer.step()
                if stream.schedule is not None:
                    stream.schedule.step()
                total, rows = total + float(loss.detach()) * len(idx), rows + len(idx)
                if self.stop is not None and self.stop():
                    return total / rows, True
        return total / max(rows, 1), False


def training_eps(train: TrainSet, configured: float | None) -> float:
    """Linf budget of the attacks of adversarial training: ``configured`` when set, else the dataset's
    largest default Linf eps (8/255 when it has none)."""
    if configured is not None:
        return configured
    return max(train.default_eps.get("linf", (8 / 255,)))


def train_on_images(detector: Detector, images: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
                    params: Iterable[nn.Parameter] | None = None) -> list[float]:
    """Adam over shuffled minibatches of ``images`` (on the detector's device) with the ``TrainConfig``
    fields of the detector's config, over ``params`` (default: all of the detector's); returns the mean
    loss of each epoch."""
    c: TrainConfig = detector.config
    optimizer = make_optimizer(detector.parameters() if params is None else params, c.lr, c.weight_decay)
    trainer = MinibatchTrainer(detector, c.epochs, c.batch_size, report=detector.report)
    return trainer.run(Stream((images.to(detector.device),), loss, optimizer))
