"""Helpers shared by the tests (importable because pyproject puts tests/ on the path)."""

from __future__ import annotations

import gc

import torch

from streamdit_core import StreamDiT, StreamDiTConfig, TextEmbedding


def randomized(config: StreamDiTConfig | None = None, seed: int = 0, scale: float = 0.05) -> StreamDiT:
    """A model whose zero-initialised parts (adaLN-Zero gates, output layer) are switched on.

    A freshly initialised StreamDiT predicts v = 0 everywhere, which would make most checks
    vacuous; small random offsets on every parameter give a generic nonlinear field.
    """
    torch.manual_seed(seed)
    model = StreamDiT(config or StreamDiTConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


# A pixel-space model small enough for pipeline tests: 3 channels, a 4-frame 8x8 buffer.
PIXEL_CONFIG = StreamDiTConfig(in_channels=3, hidden_size=32, depth=2, num_heads=2, text_dim=4, window=(2, 4, 4),
                               buffer_frames=4, latent_size=(8, 8))


class Words:
    """A stand-in text encoder: one token per prompt, its value the prompt's length; it keeps
    every batch of prompts it was asked for in ``seen``."""

    def __init__(self):
        self.seen = []

    def encode(self, prompts):
        self.seen.append(list(prompts))
        return TextEmbedding(torch.tensor([[[float(len(p))] * 4] for p in prompts]))


class Patterns:
    """Two prompts, each with its own fixed clip plus a little noise: a learnable toy world of
    ``[4, 4, 4, 4]`` latents (C, F, h, w) for trainer and distillation tests."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.clips = torch.randn(2, 4, 4, 4, 4, generator=gen).sign() * 0.8  # [2, C, F, h, w]

    def sample(self, batch, gen):
        which = torch.randint(2, (batch,), generator=gen)
        x = self.clips[which] + 0.05 * torch.randn(batch, 4, 4, 4, 4, generator=gen)
        return type("Batch", (), {"latents": x, "prompts": ["one" if w == 0 else "two" for w in which.tolist()]})


def encode_patterns(prompts):
    """The text of :class:`Patterns`: one 8-wide token per known prompt, no text otherwise."""
    table = {"one": torch.ones(1, 8), "two": -torch.ones(1, 8)}
    tokens = torch.stack([table.get(p, torch.zeros(1, 8)) for p in prompts])  # [b, 1, 8]
    mask = torch.tensor([[p in table] for p in prompts])
    return TextEmbedding(tokens, mask)


def random_text(batch: int = 1, length: int = 6, dim: int = 32, seed: int = 0, real: int | None = None) -> TextEmbedding:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, dim, generator=gen)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, : (length if real is None else real)] = True
    return TextEmbedding(tokens, mask)


def _gloo(rank: int, world: int, port: int):
    """Joins a gloo process group of ``world`` processes on this machine (one thread each)."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return dist


def gradient_worker(rank: int, world: int, port: int, config, x0, sigma, eps, tokens, out, shard: bool = False) -> None:
    """One data-parallel process (DDP, or FSDP2 with ``shard``): the full gradients and the loss of
    the flow-matching loss on its share of a joint batch; rank 0 saves them to ``out``."""
    dist = _gloo(rank, world, port)
    try:
        # the wrapped model lives only inside this call: a DDP reducer that outlives the process
        # group aborts the interpreter's exit (seen: SIGABRT in 1 of 5 runs)
        _gradients(dist, rank, world, config, x0, sigma, eps, tokens, out, shard)
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        gc.collect()
        dist.destroy_process_group()


def _gradients(dist, rank, world, config, x0, sigma, eps, tokens, out, shard) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from streamdit_core.shard import shard_model
    from streamdit_core.train import flow_matching_loss

    torch.manual_seed(0)
    model = StreamDiT(config)
    net = shard_model(model, torch.device("cpu")) if shard else DistributedDataParallel(model)
    share = slice(rank * x0.shape[0] // world, (rank + 1) * x0.shape[0] // world)
    loss = flow_matching_loss(net, x0[share], sigma[share], eps[share], TextEmbedding(tokens[share]))
    loss.backward()
    # a sharded gradient is a DTensor: full_tensor() gathers its shards
    grads = {k: p.grad.full_tensor() if shard else p.grad.clone() for k, p in model.named_parameters()}
    losses = [None] * world
    dist.all_gather_object(losses, float(loss.detach()))
    if rank == 0:
        torch.save({"grads": grads, "losses": losses, "sharded": type(next(model.parameters())).__name__}, out)


class Interrupted(Patterns):
    """Patterns that stop the run (as Ctrl-C would) when batch ``stop`` is asked for."""

    def __init__(self, stop):
        super().__init__()
        self.stop, self.asked = stop, 0

    def sample(self, batch, gen):
        self.asked += 1
        if self.asked == self.stop:
            raise KeyboardInterrupt
        return super().sample(batch, gen)


def with_node_id(node: type, unique_id: str | None) -> type:
    """A node class whose hidden ``unique_id`` is set, as ComfyUI sets it for one execution."""
    from types import SimpleNamespace

    return type(node.__name__, (node,), {"hidden": SimpleNamespace(unique_id=unique_id, prompt=None,
                                                                     extra_pnginfo=None)})


def fsdp_resume_worker(rank: int, world: int, port: int, config, folder: str) -> None:
    """Two sharded runs of three steps: one straight, one stopped before step 3 (after its step-2
    checkpoint) and resumed."""
    from streamdit_core.train import TrainConfig, train

    dist = _gloo(rank, world, port)
    try:
        cfg = TrainConfig(steps=3, batch_size=2, warmup=1, checkpoint_every=2, shard=True)
        torch.manual_seed(0)
        train(StreamDiT(config), Patterns(), encode_patterns, cfg, out=f"{folder}/straight", progress=False)
        torch.manual_seed(0)
        try:
            train(StreamDiT(config), Interrupted(3), encode_patterns, cfg, out=f"{folder}/stopped", progress=False)
        except KeyboardInterrupt:
            pass
        torch.manual_seed(5)  # another init: the resumed state must replace it
        train(StreamDiT(config), Patterns(), encode_patterns, cfg, out=f"{folder}/stopped", resume=True,
              progress=False)
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
