"""Processes and devices of a run: torchrun's process group, this process's device, and the
mask digest that proves every rank trains the same sparse network."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Dict

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class Dist:
    """This process's place in the run: rank, number of processes, GPU index on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; use NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device_name != "cpu"
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, d: Dist) -> torch.device:
    """``auto``: CUDA when available (this process's local GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name} but CUDA is not available; use train.device=cpu")
        if name == "cuda":
            name = f"cuda:{d.local_rank}"
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device '{name}' is not a device; use auto, cpu or cuda[:N]") from None


def configure_backend(device: torch.device, deterministic: bool) -> None:
    """Bind this process to its GPU (collectives need it) and pick cuDNN's deterministic kernels
    when ``train.deterministic``; CPU kernels here are deterministic already."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def mask_digest(masks: Dict[str, torch.Tensor]) -> str:
    """Short SHA-256 of every mask in name order: equal digests mean identical masks."""
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(name.encode())
        h.update(masks[name].detach().to("cpu", torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
