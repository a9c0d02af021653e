"""Training in several processes with PyTorch's own engine: torchrun starts them,
``torch.distributed`` connects them, DistributedDataParallel averages the gradients.

``torchrun --nproc_per_node N -m marionette train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address for every process; :func:`join` reads them. What the
trainer does with a group (see ``docs/distributed.md``): each process draws its own slice of
every step's global batch, rank 0 alone writes the run directory and calls the callbacks, and
the processes agree at every step boundary whether to stop (a signal on any of them) and before
every update whether the loss is finite, so that they never wait on each other forever.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Group", "from_environment", "join"]


@dataclass(frozen=True)
class Group:
    """The processes training one run together.

    Attributes:
        rank: this process's index (0 writes the run directory).
        world: how many processes.
        local_rank: index on this machine (picks the GPU).
        device: where this process computes.
        owned: the group was created here (and is destroyed when training ends).
    """

    rank: int
    world: int
    local_rank: int
    device: torch.device
    owned: bool

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes and reports."""
        return self.rank == 0

    def _tensor(self, values) -> torch.Tensor:
        where = self.device if dist.get_backend() == "nccl" else "cpu"
        return torch.as_tensor(values, dtype=torch.float64, device=where)

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag: whether it is true on any process (every process must call this)."""
        tensor = self._tensor([float(flag) for flag in flags])
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(value) for value in tensor.tolist()]

    def meet(self) -> None:
        """Wait until every process gets here: the last collective before the group is torn
        down. A barrier, not :meth:`agree`: gloo's worker thread releases a finished
        collective's tensors a moment after the caller wakes, and releasing one made in Python
        takes the GIL, which at interpreter exit aborts the process ("terminate called without
        an active exception"). The barrier's own tensor is made in C++, and while the caller
        waits in it the earlier collectives' tensors are released."""
        dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (a new tensor on ``tensor``'s device)."""
        total = self._tensor(tensor.detach().to(torch.float64).cpu())
        dist.all_reduce(total)
        return total.to(tensor.device, tensor.dtype)

    def share(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's parameters and buffers of ``module`` (in place)."""
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def from_environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) that torchrun set, or None when not under torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world < 2 and not dist.is_initialized():
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0))


@contextmanager
def join(device_name: str):
    """The group this process belongs to (None outside torchrun), for the duration of the block.

    NCCL joins the processes on CUDA (each on ``cuda:<local rank>``), gloo on the CPU. A group
    already initialised by the caller is used as it is and left alone afterwards.
    """
    found = from_environment()
    if found is None:
        yield None
        return
    rank, world, local_rank = found
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    owned = not dist.is_initialized()
    if owned:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        group = Group(rank, world, local_rank, device, owned)
        yield group
        if owned:  # all ranks done before any tears down (gloo aborts a rank left in a call)
            group.meet()
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
