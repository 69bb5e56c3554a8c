"""Face-model I/O speed: parsing an upstream OBJ and loading the cached default model.

    .venv/bin/python benchmarks/facemodel.py [--obj PATH] [--repeats 5]

Defaults to the ICT-FaceKit OBJ beside the checkout (../shared/assets/ict-facekit/FaceXModel/generic_neutral_mesh.obj)
and the cached default model (converted on first use). Prints the median and minimum wall time of each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from stylerig_engine.facemodel import default_model_path, load_default_model, shared_ict_pack
from stylerig_engine.facemodel.model import MorphableModel
from stylerig_engine.facemodel.obj import read_obj, read_obj_vertices


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--obj", type=Path, default=shared_ict_pack() / "FaceXModel" / "generic_neutral_mesh.obj")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    load_default_model()  # make sure the cache exists
    rows = []
    if args.obj.is_file():
        size = args.obj.stat().st_size / 1e6
        rows += [(f"read_obj ({size:.1f} MB OBJ)", read_obj, args.obj),
                 (f"read_obj_vertices ({size:.1f} MB OBJ)", read_obj_vertices, args.obj)]
    else:
        print(f"(no OBJ at {args.obj}: OBJ rows skipped)")
    rows.append(("MorphableModel.load (cached default model)", MorphableModel.load, default_model_path()))
    for name, fn, path in rows:
        median, best = timed(fn, path, repeats=args.repeats)
        print(f"{name:<48} median {1000 * median:7.1f} ms   min {1000 * best:7.1f} ms")


if __name__ == "__main__":
    main()
