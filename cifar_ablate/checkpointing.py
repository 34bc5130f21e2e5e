"""What makes a run resumable: `checkpoints/last.ckpt` at every epoch end and when a signal stops the
run, holding what Lightning does not keep itself (the global RNG that draws dropout masks), and the check
that a checkpoint fits the model about to load it.

A stop signal (SIGTERM, SIGINT, SIGUSR1: SLURM's warning before a time limit) ends the run after the
batch in progress, never inside one; the checkpoint then saved mid-epoch resumes bit-identically,
because the tensor loader also saves how far into the epoch it got (TensorBatches.state_dict).
"""
import os
import signal
import threading
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cifar_ablate.errors import CheckpointError
from cifar_ablate.report import SWEEP_PID_ENV

# Lightning already turns SIGTERM into a stop at the next batch end; these two are routed to it.
ROUTED_TO_SIGTERM = (signal.SIGINT, signal.SIGUSR1)


class ResumeCheckpoint(Callback):
    """Saves `path` when a stop signal ends training, and carries the global RNG state in every checkpoint.

    `stopped_by` is the signal that stopped the run (None while none did); `ctrl_c` says that a Ctrl+C reached
    Lightning outside training (before it starts, or while testing), which Lightning ends with exit status 1.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.stopped_by: Optional[int] = None
        self.ctrl_c = False
        self.orphaned = False  # stopped because the sweep process that started this trial is gone
        self._previous_handlers: dict = {}
        self._sweep_pid: Optional[int] = None

    def state_dict(self) -> dict:
        return {"torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def _route_to_sigterm(self, signum, frame):
        self.stopped_by = signum
        os.kill(os.getpid(), signal.SIGTERM)

    def on_train_start(self, trainer, pl_module):
        # Only where this process is a trial the sweep process started itself: not the sweep process's own trials
        # (basic launcher), nor a SLURM job, nor a run whose shell merely went away (nohup).
        parent = os.getppid()
        self._sweep_pid = parent if os.environ.get(SWEEP_PID_ENV) == str(parent) else None
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (e.g. not under some launchers' threads)
        for signum in ROUTED_TO_SIGTERM:
            self._previous_handlers[signum] = signal.signal(signum, self._route_to_sigterm)

    def _restore_handlers(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._sweep_pid is not None and os.getppid() != self._sweep_pid and not self.orphaned:
            self.orphaned = True  # re-parented: the sweep process ended; stop here as on SIGTERM (checkpoint saved)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, trainer, pl_module):
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception):
        self._restore_handlers()
        self.ctrl_c = isinstance(exception, KeyboardInterrupt)
        if isinstance(exception, SIGTERMException):
            self.stopped_by = self.stopped_by or signal.SIGTERM
            if trainer.training:  # raised at a batch end: a consistent point to continue from
                trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, said (else Lightning says it)


def check_checkpoint(path: Path, state_dict: dict) -> None:
    """Refuse, in one line, a checkpoint that is truncated or was saved by another model or config."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as e:  # truncated zip, garbage, or an object weights_only will not unpickle
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); delete it to start "
                              "this run over") from None
    differ = sorted(k for k in state_dict.keys() | saved.keys()
                    if k not in saved or k not in state_dict or saved[k].shape != state_dict[k].shape)
    if differ:
        raise CheckpointError(f"{path}: saved by a different model or config, or an older cifar_ablate "
                              f"({len(differ)} tensors differ, e.g. {differ[0]}); use a new run dir, or delete the "
                              "checkpoint to start over")
