"""Data-parallel training under ``torchrun`` and mixed precision on CUDA, on PyTorch's own machinery.

``torchrun --nproc_per_node N -m meddeblur train ...`` starts N processes with
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set; :func:`process_group` joins them
(NCCL on CUDA, one GPU per local rank; gloo on the CPU) and everything else here
is a thin layer over ``torch.distributed``: DistributedDataParallel averages the
gradients, :class:`~torch.utils.data.DistributedSampler` shards the epoch, and
metric sums are all-reduced so every process takes the same LR and early-stopping
decisions. Only rank 0 writes the run folder; the data (and, for ``--resume``, the
run folder) must be visible at the same path on every node. Without torchrun (or
with one process) every helper is a no-op.

``--batch`` is the global batch: each process takes ``batch // world`` images a
step, and the union of the processes' step-k batches is one global batch, so the
gradient is the single-process one. BatchNorm: on CUDA the layers become
:class:`~torch.nn.SyncBatchNorm`, whose batch statistics are the global batch's.
SyncBatchNorm has no CPU kernel ("expected input tensor to be on GPU"), so on gloo
each process normalises with the statistics of its own share of the batch, and
:func:`average_batchnorm_stats` averages the running statistics over the processes
after every training epoch (so validation and the saved weights use one agreed set).
Besides that, a parallel run differs from a single-process one only in its shuffle
(DistributedSampler's permutation; the single-process loader is left as it was so
single-process results do not change); a run repeats itself exactly with the same
number of processes, resumed or not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from meddeblur.errors import UserError

T = TypeVar("T")


def launched() -> bool:
    """True when torchrun (or another launcher) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    """Number of training processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes files and log lines (rank 0; also after the group is gone)."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join the torchrun process group for the duration of a run; yields this process's device.

    On CUDA each process takes GPU ``LOCAL_RANK``. The group is always destroyed on
    the way out, so a failing run does not leave sockets or NCCL communicators behind.
    """
    if not launched():
        yield device
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"torchrun local rank {local_rank} has no GPU (only {torch.cuda.device_count()} visible); "
                "lower --nproc_per_node to the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(
            f"device={device.type}: torchrun training runs on cuda (NCCL) or cpu (gloo); pass device=cuda or device=cpu"
        )
    try:
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    except ValueError as exc:  # launched by hand with WORLD_SIZE but no MASTER_ADDR/PORT
        raise UserError(f"cannot join the training processes ({exc}); start multi-process training with torchrun") from None
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over all processes, in float64 so sums of many losses keep their digits."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_mean(values: Sequence[float]) -> list[float]:
    """Element-wise mean over all processes."""
    return [v / world_size() for v in all_reduce_sum(values)]


def all_agree(flag: bool) -> bool:
    """True only if ``flag`` is true in every process (a collective: all must call it)."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def barrier() -> None:
    """Wait until every process gets here."""
    if dist.is_initialized():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (any picklable object) in every process."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(work: Callable[[], T]) -> T:
    """Run ``work`` in rank 0 only and hand its result (or its UserError) to every process.

    For set-up that writes files (the run folder, split.json): other processes wait
    here instead of racing rank 0, and a user error stops all of them with the same
    message rather than leaving them blocked in the next collective.
    """
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", work())
        except UserError as error:
            outcome = ("error", str(error))
    kind, payload = broadcast(outcome)
    if kind == "error":
        raise UserError(payload)
    return payload


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` as trained in this process: itself alone, DistributedDataParallel under torchrun.

    Converts BatchNorm to SyncBatchNorm on CUDA (see the module docstring for gloo).
    The caller keeps the unwrapped module for state dicts, so weights saved by a
    parallel run have the same keys (no ``module.`` prefix) as single-process ones.
    """
    if not dist.is_initialized():
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    # Per-process BatchNorm statistics differ within an epoch on purpose (they are averaged at
    # its end); broadcasting rank 0's buffers every step would just throw the others away.
    return DistributedDataParallel(model, forward_sync_buffers=False)


def synchronises_batchnorm(device: torch.device) -> bool:
    """Whether BatchNorm batch statistics span the global batch (one process, or SyncBatchNorm on CUDA)."""
    return not dist.is_initialized() or device.type == "cuda"


@torch.no_grad()
def average_batchnorm_stats(model: nn.Module) -> None:
    """Replace every BatchNorm running mean/variance by its mean over the processes (gloo path)."""
    if not dist.is_initialized():
        return
    buffers = [b for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
    if not buffers:  # no BatchNorm (NAFNet): nothing to average
        return
    flat = torch.cat([b.reshape(-1) for b in buffers]).to(_comm_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def describe(device: torch.device, batch: int) -> str:
    """One log line saying how the processes split the work and how BatchNorm is handled."""
    batchnorm = (
        "SyncBatchNorm over the global batch"
        if synchronises_batchnorm(device)
        else "BatchNorm batch statistics per process (SyncBatchNorm needs CUDA), running statistics "
        "averaged over the processes after each epoch"
    )
    return (
        f"data parallel: {world_size()} processes ({dist.get_backend()}), global batch {batch} = "
        f"{per_process_batch(batch)} per process; {batchnorm}"
    )


def per_process_batch(batch: int) -> int:
    """This process's share of the global ``--batch``; an error unless it splits evenly."""
    world = world_size()
    if batch % world:
        raise UserError(
            f"batch={batch}: the global batch must split evenly over the {world} processes; pass a multiple of {world}"
        )
    return batch // world


def sharded_train_loader(dataset: Dataset, batch: int, seed: int, epoch: int) -> DataLoader:
    """This process's shuffled share of an epoch; the union over processes of step k is one global batch.

    DistributedSampler draws one permutation from (seed, epoch), identical in every
    process, and deals it out; the last global batch may be padded with repeated
    samples so that all processes take the same number of steps.
    """
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    # A generator of our own: the loader draws a base seed from it, not from the global RNG
    # whose state the checkpoint carries.
    return DataLoader(
        dataset,
        batch_size=per_process_batch(batch),
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed + epoch),
        num_workers=0,
    )


def sharded_eval_loader(dataset: Dataset, batch: int) -> DataLoader:
    """This process's share of an evaluation set, without padding (every image counts once).

    Processes may get different numbers of batches, so evaluation must not run
    through DistributedDataParallel (whose forward is a collective).
    """
    indices = range(rank(), len(dataset), world_size())  # type: ignore[arg-type]
    return DataLoader(
        Subset(dataset, indices),
        batch_size=per_process_batch(batch),
        shuffle=False,
        generator=torch.Generator().manual_seed(0),
        num_workers=0,
    )


@dataclass(frozen=True)
class Precision:
    """How the network runs: autocast dtype (None = float32) and memory format."""

    dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def active(self) -> bool:
        return self.dtype is not None or self.channels_last

    def describe(self) -> str:
        kind = {None: "float32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast with loss scaling"}[self.dtype]
        return f"precision: {kind}, {'channels_last' if self.channels_last else 'NCHW'} memory format"


def choose_precision(device: torch.device, amp: bool, channels_last: bool) -> Precision:
    """Mixed precision (bf16 where supported, else fp16) and channels_last on CUDA; float32 NCHW elsewhere.

    The CPU path stays plain float32, so CPU results do not change with these options.
    """
    if device.type != "cuda":
        return Precision()
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    return Precision(dtype, channels_last)


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast (bf16 and float32 need none)."""
    return torch.amp.GradScaler(device.type) if precision.dtype == torch.float16 else None


class PrecisionModel(nn.Module):
    """Runs ``net`` under autocast / channels_last and returns float32, so losses and metrics stay in float32."""

    def __init__(self, net: nn.Module, precision: Precision) -> None:
        super().__init__()
        self.net, self.precision = net, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.precision.dtype, enabled=self.precision.dtype is not None):
            out = self.net(x)
        return out.float()


def with_precision(net: nn.Module, precision: Precision) -> nn.Module:
    """``net`` wrapped in :class:`PrecisionModel` when anything is switched on, else ``net`` itself."""
    return PrecisionModel(net, precision) if precision.active else net
