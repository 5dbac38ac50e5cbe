"""A short run of the streaming engine: ``python -m streamdit_core.demo``.

1. Streams frames of Gaussian data N(mean, std^2) with its exact velocity field (no weights
   needed) and compares what comes out with the data law and with the Euler law of the schedule.
2. Streams a few chunks through a randomly initialised ``tiny`` StreamDiT and times the calls.
"""

from __future__ import annotations

import argparse
import time

import torch

from .analytic import GaussianVelocity
from .conditioning import TextEmbedding
from .model import StreamDiT
from .schedule import Partition, SigmaWarp
from .stream import Streamer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streamdit_core.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames to stream from the Gaussian field")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error(f"--frames must be at least 2, got {args.frames}")

    mean, std = 0.7, 0.4
    partition = Partition.streamdit(16, 2, s=4)  # K=0, N=8, c=2: T=32 steps per frame
    field = GaussianVelocity(mean, std)
    stream = Streamer(field, partition, (4, 16, 16), seed=args.seed, warp=SigmaWarp.shift(3.0))
    print(f"Gaussian field, partition {partition}, warp {stream.state.warp}")
    stream.warm_start()
    start = time.perf_counter()
    out = torch.cat([c.latents for c in stream.chunks(-(-args.frames // partition.c))], dim=2)
    seconds = time.perf_counter() - start
    head, tail = out[:, :, : out.shape[2] // 4], out[:, :, -out.shape[2] // 4:]
    table = stream.state.warp(torch.arange(partition.T, -1, -1, dtype=torch.float64) / partition.T)
    euler_mean, euler_std = field.euler_law(table.tolist())
    print(f"  {out.shape[2]} frames in {seconds:.2f} s ({stream.state.calls} calls)")
    print(f"  data law                  mean {mean:.4f}  std {std:.4f}")
    print(f"  law of {partition.T} Euler steps     mean {euler_mean:.4f}  std {euler_std:.4f}")
    print(f"  first quarter of frames   mean {head.mean():.4f}  std {head.std():.4f}")
    print(f"  last quarter of frames    mean {tail.mean():.4f}  std {tail.std():.4f}")

    model = StreamDiT.from_preset("tiny").eval()
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():  # random weights: a fresh adaLN-Zero model would output exactly zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    text = TextEmbedding(torch.randn(1, 8, model.config.text_dim, generator=gen))
    stream = Streamer(model, Partition.streamdit(16, 2, s=1), (4, 8, 8), text=text, seed=args.seed)
    stream.warm_start()
    calls = stream.state.calls
    start = time.perf_counter()
    chunks = list(stream.chunks(32))
    seconds = time.perf_counter() - start
    per_call = seconds / (stream.state.calls - calls)
    print(f"tiny StreamDiT (random weights), partition {stream.partition}")
    print(f"  {len(chunks)} chunks of {tuple(chunks[0].latents.shape)}, {per_call * 1e3:.2f} ms per call on "
          f"{stream.device.type}, {sum(c.frames for c in chunks) / seconds:.0f} latent frames/s")


if __name__ == "__main__":
    main()
