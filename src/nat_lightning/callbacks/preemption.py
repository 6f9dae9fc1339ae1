"""SIGTERM under DDP: every rank stops at the same batch.

Lightning's own handler broadcasts from inside the signal handler, once per signal received, and
lets each rank act on its own flag. When the scheduler signals every rank and rank 0 forwards the
signal to the ranks it launched, a rank receives it twice, makes one collective too many and the
job hangs (seen here with 2 processes). This handler only notes the signal (rank 0 forwards it
once); after every training batch all ranks agree through one all-reduce, then all of them set
Lightning's flag, so they raise together and write on_exception.ckpt once.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback


class StopAllRanksOnSigterm(Callback):
    def __init__(self):
        self.pending = False

    def on_train_start(self, trainer, pl_module) -> None:
        launcher = trainer.strategy.launcher

        def note(signum, frame) -> None:
            if not self.pending and launcher is not None and trainer.global_rank == 0:
                launcher.kill(signum)  # the ranks this process launched, once
            self.pending = True

        signal.signal(signal.SIGTERM, note)  # Lightning restores its saved handlers at teardown

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pending = self.pending
        if trainer.world_size > 1 and dist.is_initialized():  # one process needs no tensor
            flag = torch.tensor([float(pending)], device=pl_module.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank, every batch
            pending = bool(flag.item())
        if pending:
            trainer._signal_connector.received_sigterm = True  # Lightning raises after this batch
