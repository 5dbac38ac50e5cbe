"""Scores a Wan-architecture model streamed through ComfyUI on the synthetic world's held-out
scenes: the model loaded by ComfyUI's Load Diffusion Model, the VAE by its Load VAE, streamed by
the StreamDiT Wan Model node's pipeline (no CLIP: the pack's MiniLM, as ``train --init wan:new``
trains), scored with the world's adherence and motion metrics (``evaluate``'s table).

    COMFYUI_DIR=~/ComfyUI ~/ComfyUI/venv/bin/python tests/host/wan_world_scores.py \\
        runs/wan_stream/model.safetensors runs/wan_t2v/base/vae_comfyui.safetensors --shift 3

Not a test (pytest does not collect it): a measurement, for models trained on world clips.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a Wan-format diffusion model file (models/diffusion_models/)")
    p.add_argument("vae", type=Path, help="its Wan 2.1-architecture VAE file (models/vae/)")
    p.add_argument("--size", type=int, default=64, help="frame size (the world's: 64)")
    p.add_argument("--buffer-frames", type=int, default=8, help="latent frames in the buffer")
    p.add_argument("--shift", type=float, default=3.0, help="sigma shift (what the model was trained with)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--schemes", default="streamdit-c2,uniform")
    p.add_argument("--scenes", type=int, default=24, help="stratified held-out scenes")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=16, help="denoising steps per frame T for every scheme")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        raise SystemExit("set COMFYUI_DIR to a ComfyUI checkout (and run this with its Python)")
    sys.path[:0] = [str(ROOT)]
    sys.path.append(comfy_dir)
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sd
    import comfy.utils

    from nodes.wan import comfy_pipeline
    from streamdit_core.cli import _TABLE_KEYS
    from streamdit_core.world import held_out_scenes
    from streamdit_core.world.evaluate import compare_schemes

    model = comfy.sd.load_diffusion_model(str(args.model))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(args.vae)))
    pipe = comfy_pipeline(model, None, vae, width=args.size, height=args.size, buffer_frames=args.buffer_frames,
                          guidance=args.guidance, shift=args.shift)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    results = compare_schemes(pipe, schemes, held_out_scenes(args.scenes), args.seconds, args.steps,
                              guidance=args.guidance, batch=8)
    print(f"{args.model} through ComfyUI: {args.scenes} held-out scenes, {args.seconds:g} s, T={args.steps}, "
          f"guidance {args.guidance:g}")
    print("| scheme | K,N,c,s | " + " | ".join(h for _, h in _TABLE_KEYS) + " |")
    print("|" + "---|" * (2 + len(_TABLE_KEYS)))
    for r in results:
        P = r.partition
        print(f"| {r.name} | {P.K},{P.N},{P.c},{P.s} | " + " | ".join(f"{r.summary[k]:.3f}" for k, _ in _TABLE_KEYS)
              + " |")
    if args.json is not None:
        args.json.write_text(json.dumps([{"name": r.name, **r.summary} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
