"""The LightningModule: any architecture, cross-entropy, an optional weight penalty, metrics and logging."""
from typing import Callable, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from cifar_ablate.penalty import WeightPenalty


class Float32States:
    """For a torchmetrics Metric whose float states must stay float32 when the module is cast.

    trainer.precision=16-true or bf16-true casts the module with .to(dtype), which torchmetrics applies to
    metric states too: a float16 sum of an epoch's losses overflows at 65,504 (a healthy run would end as
    "diverged"), a bfloat16 one drops small terms, and a bfloat16 best accuracy of 0.8123 reads 0.8125.
    Here float states follow the device, never the dtype.
    """

    def _apply(self, fn, exclude_state=()):
        floats = tuple(k for k, v in self._defaults.items() if torch.is_tensor(v) and v.is_floating_point())
        device = fn(torch.zeros((), dtype=torch.long, device=self.device)).device  # never cast: an integer
        this = super()._apply(fn, exclude_state=(*exclude_state, *floats))
        for name in floats:
            setattr(this, name, getattr(this, name).to(device))
            this._defaults[name] = this._defaults[name].to(device)
        this._dtype = torch.float32  # the dtype torchmetrics' aggregators (MaxMetric) cast their inputs to
        return this


class Float32MaxMetric(Float32States, MaxMetric):
    """The best validation accuracy so far, in float32 whatever the training precision."""


class TrainingMeans(Float32States, Metric):
    """An epoch's training loss, accuracy and penalty, each the mean over images, kept as four running sums.

    It stands in for two MeanMetrics and a MulticlassAccuracy in the training step: a LeNet step dispatched
    140 operators with those and 115 with this (`bench/op_count.py`); on a GPU each is a kernel launch. Nothing in
    `update` reads a value back or builds a tensor from Python data. Sums add up across DDP processes, and a
    NaN or inf loss stays in `loss_sum`, which is how divergence is seen.
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name, dtype in (("loss_sum", torch.float32), ("penalty_sum", torch.float32),
                            ("correct", torch.long), ("count", torch.long)):
            self.add_state(name, torch.zeros((), dtype=dtype), dist_reduce_fx="sum", persistent=True)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
               penalty: Optional[torch.Tensor] = None):
        # torchmetrics runs update without autograd, so no detach; add_ with alpha is one operator, and it
        # sums in float32 also when the loss is float16 (a float16 product overflows at 65,504).
        n = len(target)
        self.loss_sum.add_(loss, alpha=n)
        self.correct.add_(logits.argmax(1).eq(target).sum())
        self.count.add_(n)
        if penalty is not None:
            self.penalty_sum.add_(penalty, alpha=n)

    def compute(self) -> dict:
        return {"loss": self.loss_sum / self.count, "acc": self.correct / self.count,
                "penalty": self.penalty_sum / self.count}


class Classifier(L.LightningModule):
    """Trains `model` with `optimizer` (a factory taking the parameters) and an optional LR scheduler.

    `scheduler` is a factory taking the optimizer; `scheduler_interval` says whether it steps every
    "epoch" or every "step" (batch); `scheduler_monitor` names the metric a scheduler that steps on one
    (ReduceLROnPlateau) is given, after each validation. Logged: train/loss (data loss only), train/penalty
    apart from it, train/acc (each _step and _epoch), val/loss, val/acc, val/acc_best, test/loss, test/acc.
    """

    def __init__(self, model: nn.Module, optimizer: Callable, scheduler: Optional[Callable] = None,
                 scheduler_interval: str = "epoch", penalty: Optional[WeightPenalty] = None,
                 scheduler_monitor: Optional[str] = None,
                 num_classes: int = 10, compile_model: bool = False, compile_mode: str = "default",
                 channels_last: bool = True):
        super().__init__()
        self.model = torch.compile(model, mode=compile_mode) if compile_model else model
        self.compiled = compile_model
        self.channels_last = channels_last
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.penalty = penalty if penalty is not None and penalty.active else None
        # Training values only accumulate per step: the epoch means are computed once, and step values
        # only on the steps the logger writes.
        self.train_means = TrainingMeans()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = Float32MaxMetric()
        # Kept in checkpoints: a resumed run knows its best epoch, and one resumed mid-epoch continues
        # that epoch's training sums.
        self.val_acc_best.persistent(True)  # TrainingMeans' states are persistent already
        # A buffer, so it travels with the weights (back from DDP workers, into checkpoints).
        self.register_buffer("diverged", torch.tensor(False))

    @property
    def example_input_array(self) -> Optional[torch.Tensor]:
        """One image, which Lightning's model summary runs through the model for each layer's sizes and FLOPs
        (else it shows 0 FLOPs). In the weights' dtype, read when the summary runs: trainer.precision=bf16-true
        has cast them by then. None for a compiled model, which would compile for this shape as well."""
        if self.compiled:
            return None
        return torch.zeros(1, 3, 32, 32, dtype=next(self.model.parameters()).dtype)

    def on_fit_start(self):
        # Channels-last lets cuDNN pick its fastest convolutions; on CPU it only adds copies.
        if self.channels_last and self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)

    def forward(self, x):
        if self.channels_last and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def on_train_epoch_start(self):
        # Not called when a run resumes inside an epoch (Lightning), so the restored sums continue.
        self.train_means.reset()

    def _logging_step(self) -> bool:
        """True on the steps whose values Lightning hands to the logger (every log_every_n_steps; never for 0).
        Lightning counts them in a private counter that equals global_step under automatic optimization."""
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        penalty = self.penalty() if self.penalty is not None else None
        self.train_means.update(loss, logits, y, penalty)
        if self._logging_step():
            self.log("train/loss_step", loss)
            self.log("train/acc_step", (logits.detach().argmax(1) == y).float().mean())
            if penalty is not None:
                self.log("train/penalty_step", penalty)
        return loss if penalty is None else loss + penalty

    def on_train_epoch_end(self):
        means = self.train_means.compute()
        # The metric's compute has already summed over DDP processes: sync_dist only averages equal values
        # (one reduction per epoch, nothing on one device) and spares Lightning's warning that it is missing.
        self.log("train/loss_epoch", means["loss"], sync_dist=True)
        self.log("train/acc_epoch", means["acc"], sync_dist=True)
        if self.penalty is not None:
            self.log("train/penalty_epoch", means["penalty"], sync_dist=True)
        # One host sync per epoch: a non-finite loss ends the run as "diverged", a result, not a crash.
        if not torch.isfinite(means["loss"]):
            self.diverged.fill_(True)
            self.trainer.should_stop = True

    def _evaluate(self, batch, stage: str, accuracy: MulticlassAccuracy):
        x, y = batch
        logits = self(x)
        accuracy.update(logits, y)  # the logged Metric object is computed once, at epoch end
        # sync_dist: under DDP the image-weighted mean over every process's batches (one reduction per epoch;
        # nothing on one device). The accuracy Metric syncs itself.
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_epoch=True, batch_size=len(y))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", self.val_acc)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)  # equal on every process

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", self.test_acc)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        lengths = self.scheduler_length(int(self.trainer.estimated_stepping_batches), self.trainer.max_epochs)
        scheduler = self.scheduler_factory(optimizer, **lengths)
        stepping = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if self.scheduler_monitor is not None:
            # Lightning steps an epoch scheduler every `frequency` epochs; validation runs every
            # check_val_every_n_epoch: stepping in between would read a stale metric, or none (an error) at first.
            stepping.update(monitor=self.scheduler_monitor, frequency=self.trainer.check_val_every_n_epoch or 1)
        return {"optimizer": optimizer, "lr_scheduler": stepping}

    def scheduler_length(self, steps: int, epochs: int) -> dict:
        """Fill a schedule length left null in the config: OneCycle's total_steps, cosine's T_max, from the run's
        optimizer `steps` and `epochs`."""
        keywords = getattr(self.scheduler_factory, "keywords", {})
        if "total_steps" in keywords and keywords["total_steps"] is None:
            return {"total_steps": steps}
        if "T_max" in keywords and keywords["T_max"] is None:
            return {"T_max": steps if self.scheduler_interval == "step" else epochs}
        return {}
