"""Distribution: process group, device, batch split, each rank's share of an epoch, DDP / FSDP2 wrapping,
collective helpers.

Launch with ``torchrun`` (any number of processes and nodes): it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`setup` joins the group with
``init_method="env://"`` -- NCCL on CUDA, gloo otherwise. Without those variables the run is a
single process and every helper here is a no-op.

Batch arithmetic: ``batch_size`` (total per optimizer step) = ``world_size x per_rank x accumulation``;
``per_rank="auto"`` takes ``batch_size / world_size`` with no accumulation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from typing import Any

import torch
import torch.distributed as dist

from ..device import select_device
from ..errors import ConfigError, explain

__all__ = [
    "DistEnv",
    "ResumableSampler",
    "setup",
    "teardown",
    "split_batch",
    "batch_for_samples",
    "wrap_stage",
    "no_sync",
    "all_mean",
    "any_true",
    "any_of",
    "barrier",
    "gather_objects",
    "broadcast_object",
    "model_state",
    "load_model_state",
]


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistEnv:
    """Join the torchrun process group if launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def split_batch(total: int, world_size: int, per_rank: int | str = "auto") -> tuple[int, int]:
    """``(per_rank_batch, accumulation_steps)`` so that total = world x per_rank x accumulation."""
    if total % world_size:
        raise ConfigError(explain(
            "training.batch_size must be divisible by the number of processes",
            expected=f"a multiple of {world_size}", found=total,
            fix=f"set training.batch_size={max(1, total // world_size) * world_size}",
        ))
    local = total // world_size
    if per_rank == "auto":
        return local, 1
    if local % int(per_rank):
        raise ConfigError(explain(
            "training.batch_size_per_rank must divide the per-process batch",
            expected=f"a divisor of batch_size / processes = {local}", found=per_rank,
            fix="set training.batch_size_per_rank=auto",
        ))
    return int(per_rank), local // int(per_rank)


def batch_for_samples(total: int, samples: int, world_size: int, per_rank: int | str = "auto") -> int:
    """``total`` (``training.batch_size``), or when ``samples`` training samples cannot fill one batch on
    every process (each takes ``samples // world_size``, the rest dropped), the largest batch they fill:
    ``world_size x (samples // world_size)``, with ``per_rank="auto"`` (one micro-batch per process; a
    short record such as 8 monthly fields then trains on batches of what it has). Unchanged otherwise: a
    record shorter than one sample per process, or a given ``per_rank``, is the trainer's to refuse."""
    local = samples // world_size
    if per_rank != "auto" or local < 1 or total <= world_size * local:
        return total
    return world_size * local


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that lets the pipeline read attributes of the wrapped network (``sigma_data`` ...)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_stage(module: torch.nn.Module, env: DistEnv, strategy: str = "ddp") -> torch.nn.Module:
    """The trained stage for this process: itself alone; DDP; or FSDP2-sharded in place."""
    if not env.distributed:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        with torch.no_grad():  # FSDP does not broadcast: start every shard from rank 0's weights
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

        for child in module.children():  # shard the big children first, then the root
            if sum(p.numel() for p in child.parameters()) > 0:
                fully_shard(child)
        return fully_shard(module)
    ids = [env.device.index] if env.device.type == "cuda" else None
    # buffers (positional grids, sigma_data) are constants, equal on every rank: no need to sync them at
    # each forward. Newer torch names this forward_sync_buffers (broadcast_buffers is deprecated there).
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return _DDP(module, device_ids=ids, **no_buffer_sync)


@contextlib.contextmanager
def no_sync(wrapped: torch.nn.Module, skip: bool):
    """Skip the gradient all-reduce of a micro-batch that is not the last of an accumulation."""
    if skip and isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        with wrapped.no_sync():
            yield
    elif skip and hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:
        yield


def all_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over processes."""
    if not env.distributed:
        return value
    value = value.detach().clone().to(env.device)
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / env.world_size


def any_true(flag: bool, env: DistEnv) -> bool:
    """True on every process if it is true on any (stop requests, divergence)."""
    if not env.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_of(flags: list[bool], env: DistEnv) -> list[bool]:
    """Element-wise OR of a list of flags over processes (one all-reduce)."""
    if not env.distributed:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def model_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer, strategy: str, env: DistEnv):
    """Full (unsharded, CPU) state dicts of the trained stage and its optimizer."""
    if env.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(module, optimizer, options=opts)
    model = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
    return model, _to_cpu(optimizer.state_dict())


def load_model_state(module, optimizer, model_sd: dict, optim_sd: dict | None, strategy: str, env: DistEnv) -> None:
    """Load full state dicts (as written by :func:`model_state`) into every process."""
    if env.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        opts = StateDictOptions(full_state_dict=True)
        set_state_dict(module, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd or {}, options=opts)
        return
    module.load_state_dict(model_sd, strict=True)
    if optim_sd is not None:
        optimizer.load_state_dict(optim_sd)


def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu").clone()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree


class ResumableSampler(torch.utils.data.Sampler):
    """A DistributedSampler for one epoch, starting ``skip`` indices in (to resume mid-epoch)."""

    def __init__(self, dataset, env: DistEnv, seed: int, epoch: int, skip: int, shuffle: bool = True):
        self.inner = torch.utils.data.DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                                         shuffle=shuffle, seed=seed, drop_last=True)
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip:])

    def __len__(self):
        return max(0, len(self.inner) - self.skip)
