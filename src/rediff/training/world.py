"""Processes and devices: one process, or data-parallel processes under torchrun.

Under ``torchrun --nproc_per_node N`` every process draws the same global batch and its random
inputs from the run's generator and trains on its own contiguous 1/N of it;
DistributedDataParallel averages the gradients, so N processes compute what one process
computes with the same global batch. Process 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rediff._tensor import Tensor
from rediff.runs.config import Device


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` data-parallel processes (1: no torchrun)."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"  # where collectives' tensors live

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def leave(self) -> None:
        """Leave torchrun's process group at the end of a run, on every process: gloo's worker
        threads left to interpreter shutdown can abort a process whose run has finished
        ("terminate called without an active exception"; pytorch issue 190489)."""
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def stop(self, here: bool) -> bool:
        """True on every process if process 0 says so (clocks differ between processes)."""
        if self.size == 1:
            return here
        flag = torch.tensor([float(here)], device=self.device)
        torch.distributed.broadcast(flag, 0)
        return bool(flag.item())

    def mean(self, value: Tensor) -> float:
        """The mean of a scalar over all processes (each holds its slice's loss)."""
        if self.size > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
        return float(value) / self.size


def device_of(device: Device) -> torch.device:
    """The torch device of ``train.device`` (auto: CUDA when available), for this process
    (torchrun's LOCAL_RANK picks the GPU)."""
    cuda = torch.cuda.is_available()
    if device is Device.CUDA and not cuda:
        raise ValueError("train.device = 'cuda' but no CUDA device is available; use 'auto'")
    use_cuda = device is Device.CUDA or (device is Device.AUTO and cuda)
    if not use_cuda:
        return torch.device("cpu")
    chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(chosen)
    return chosen


def join(device: torch.device) -> World:
    """Join torchrun's process group (gloo on CPU, nccl on GPU) when WORLD_SIZE > 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(torch.distributed.get_rank(), size, str(device))
