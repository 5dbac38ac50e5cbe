"""Sharded data-parallel training: FSDP2 over a model's blocks, and its checkpoints.

Under ``torchrun`` with ``TrainConfig.shard``, every block of the model (the ``blocks`` list of
our DiT or of a Wan transformer) and then the model itself are wrapped by
``torch.distributed.fsdp.fully_shard``: each process keeps a 1/P slice of every parameter,
gradient and optimizer state and gathers a block's weights just for its forward and backward.
On CUDA the gathered weights compute in bf16 and gradients reduce in fp32
(``MixedPrecisionPolicy``); on a CPU (gloo) everything stays fp32, which is how the tests run it.
Activation checkpointing recomputes each block's activations in the backward pass instead of
keeping them.

Checkpoints: the training state (raw and EMA weights, optimizer) is written by every process
with ``torch.distributed.checkpoint`` as a folder of shards, ``train_state/``, replaced
atomically; the shipped EMA weights are gathered whole onto rank 0 and written as usual.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["block_lists", "checkpoint_blocks", "full_state", "load_sharded", "save_sharded", "shard_model"]


def block_lists(model: nn.Module) -> list[nn.ModuleList]:
    """The model's lists of repeated blocks: every ``nn.ModuleList`` named ``blocks``."""
    found = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "blocks" and isinstance(m, nn.ModuleList)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no 'blocks' list to shard")
    return found


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass (parameter names unchanged)."""
    from torch.distributed._composable import checkpoint

    for blocks in block_lists(model):
        for block in blocks:
            checkpoint(block)


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Wraps every block, then the whole model, with FSDP2's ``fully_shard`` (in place)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    for blocks in block_lists(model):
        for block in blocks:
            fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict on rank 0 (on the CPU); an empty dict elsewhere.
    Collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else {}


def save_sharded(folder: Path, model: nn.Module, ema: nn.Module, optimizer, extra: dict) -> None:
    """Writes the training state as a ``torch.distributed.checkpoint`` folder; the previous one
    is replaced only once the new one is complete. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    if dist.get_rank() == 0 and partial.exists():
        shutil.rmtree(partial)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "ema": get_model_state_dict(ema), "optimizer": optim_state},
             checkpoint_id=str(partial))
    if dist.get_rank() == 0:
        torch.save(extra, partial / "extra.pt")
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(partial, folder)
        if old.exists():
            shutil.rmtree(old)
    dist.barrier()


def load_sharded(folder: Path, model: nn.Module, ema: nn.Module, optimizer) -> dict:
    """Loads a folder written by :func:`save_sharded` into the sharded model, EMA and optimizer;
    returns the extra record (step, losses, generators). Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "ema": get_model_state_dict(ema), "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    set_model_state_dict(ema, state["ema"])
    return torch.load(Path(folder) / "extra.pt", weights_only=False)
