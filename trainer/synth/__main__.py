"""``python -m trainer.synth``: render a synthetic RGB-D data set with Blender (see docs/synthetic_data.md)."""

from __future__ import annotations

import argparse
import sys

from .output import DEPTH_FORMATS, SynthOutputError
from .scenes import SCENE_KINDS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.synth",
        description="Render procedural rooms, tabletops and streets with Blender (Cycles) into the trainer's plain "
        "folder format: rgb/NAME.png, depth/NAME.npy (planar metres, 0 = sky), intrinsics/NAME.json, "
        "train.txt, val.txt. Re-running skips frames already written.",
    )
    p.add_argument("--out", required=True, help="output folder (created; an existing run in it is resumed)")
    p.add_argument("--count", type=int, required=True, help="number of frames (with --sequence: of sequences)")
    p.add_argument("--sequence", type=int, default=None, metavar="N",
                   help="render camera-path sequences of N frames through one scene each, with the camera pose of "
                   "every frame (OUT/SEQ/camera.json; see docs/synthetic_data.md)")
    p.add_argument("--resolution", default="256x192", help="WIDTHxHEIGHT in pixels (default 256x192)")
    p.add_argument("--seed", type=int, default=0, help="run seed; frame i depends only on (seed, i) (default 0)")
    p.add_argument("--start", type=int, default=0,
                   help="index of the first frame (default 0): several processes can share one --out")
    p.add_argument("--samples", type=int, default=8, help="Cycles samples per pixel (default 8)")
    p.add_argument("--denoise", choices=("off", "fast", "balanced", "high"), default="fast",
                   help="OpenImageDenoise quality (default fast: colour only, nearly free)")
    p.add_argument("--kinds", default=",".join(SCENE_KINDS),
                   help=f"comma-separated scene kinds to draw from (default {','.join(SCENE_KINDS)})")
    p.add_argument("--mesh-dir", default=None,
                   help="folder of .obj/.ply/.stl/.glb/.gltf meshes to place among the primitives")
    p.add_argument("--depth-format", choices=DEPTH_FORMATS, default=None,
                   help="depth file format (default npy; exr with --sequence, which Blender reads as an image sequence)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of frames in val.txt, chosen by a hash of the frame name (default 0.05)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="Cycles device: auto uses a GPU when Cycles finds one (default auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU render threads (default 0 = all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .generate import generate, parse_resolution

    try:
        width, height = parse_resolution(args.resolution)
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        if args.sequence is not None:
            from .sequence import generate_sequences

            stats = generate_sequences(
                args.out, args.count, args.sequence, width=width, height=height, seed=args.seed, start=args.start,
                samples=args.samples, denoise=args.denoise, kinds=kinds, mesh_dir=args.mesh_dir,
                depth_format=args.depth_format or "exr", device=args.device, threads=args.threads,
                progress=not args.no_progress)
        else:
            stats = generate(
                args.out,
                args.count,
                width=width,
                height=height,
                seed=args.seed,
                start=args.start,
                samples=args.samples,
                denoise=args.denoise,
                kinds=kinds,
                mesh_dir=args.mesh_dir,
                depth_format=args.depth_format or "npy",
                val_fraction=args.val_fraction,
                device=args.device,
                threads=args.threads,
                progress=not args.no_progress,
            )
    except (ValueError, FileNotFoundError, NotADirectoryError, SynthOutputError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished frames are kept; run the same command again to resume", file=sys.stderr)
        return 130
    print(
        f"{args.out}: rendered {stats.rendered} frames, skipped {stats.skipped} already written "
        f"({stats.seconds_per_frame:.2f} s/frame on {stats.device})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
