"""Process-group setup for torchrun (DDP by default, FSDP2 as an option) and small rank helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sessa.modules.blocks import GatedBlock, PreNormBlock


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N", "mps" -> a torch.device."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be auto or one of {', '.join(DEVICE_TYPES)} (cuda:N), got {name!r}"
        ) from exc
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"device must be auto or one of {', '.join(DEVICE_TYPES)} (cuda:N), got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def setup(strategy: str, device_name: str) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if strategy != "none" and "WORLD_SIZE" not in os.environ:
        raise ValueError(
            f"--distributed {strategy} needs a torchrun launch (torchrun --nproc_per_node=N -m sessa "
            "train ...); without torchrun use --distributed none"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(device=resolve_device(device_name))
    if strategy == "none":
        raise ValueError(
            "launched with WORLD_SIZE > 1 (torchrun) but distributed='none'; pass --distributed ddp or fsdp"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def wrap_model(model: torch.nn.Module, strategy: str, info: DistInfo) -> torch.nn.Module:
    """DDP, or FSDP2 (``fully_shard`` per block, then the root), when distributed."""
    if not info.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    # FSDP2 cannot shard 0-d parameters (Sessa's gamma_bias, a scalar for checkpoint compatibility): they
    # stay replicated and their gradients are averaged by sync_replicated_grads.
    scalars = {p for p in model.parameters() if p.dim() == 0}
    for module in model.modules():
        if isinstance(module, (GatedBlock, PreNormBlock)):
            fully_shard(module, ignored_params=scalars)
    fully_shard(model, ignored_params=scalars)
    model._sessa_replicated = sorted(scalars, key=id)  # type: ignore[attr-defined]
    return model


def sync_replicated_grads(model: torch.nn.Module, info: DistInfo) -> None:
    """Average the gradients of parameters FSDP left replicated (no-op otherwise)."""
    for p in getattr(model, "_sessa_replicated", []):
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= info.world_size


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimizer state dicts, keyed by parameter names; a collective
    under DDP/FSDP. The same format for every strategy, so a run can resume under another one."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    # Tied parameters come back as separate copies; keep one name each, as save_pretrained would.
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    weights = {k: v for k, v in weights.items() if k in names}
    return weights, get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x)
    return x


def all_reduce_max(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
