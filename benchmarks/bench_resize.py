"""``ImageTensor``'s resize: torch's uint8 kernels against Pillow's ``Image.resize``, per filter.

One decoded 256x256 RGB image (the grainy JPEG of ``bench_image``) resized to 224x224 in a loop,
in this process with one torch thread (as in a DataLoader worker); CPU ms per resize, medians of
``--repeats``. Rows: Pillow's bilinear/bicubic (*the baseline*: Pillow's own, always
antialiased) and torch's ``interpolate`` on the channels-last uint8 tensor, antialiased or not,
as ``ImageTensor(interpolation=..., antialias=...)`` runs it; plus the largest difference
between the two, in levels (0-255).

A last table decodes the same JPEG (bytes in memory) with Pillow (``open`` + ``load``, *the
baseline*, what ``ImageTensor`` runs) and with ``simplejpeg.decode_jpeg`` (libjpeg-turbo, an
optional dependency, skipped when absent): the gain a simplejpeg path could bring.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks._common import Result, add_common_args, default_data_dir, format_table, in_turn

NAME = "resize"
DESCRIPTION = "ImageTensor's resize: torch uint8 interpolate vs Pillow resize, CPU ms per image"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=5)
    args = parser.parse_args(argv)
    import torch
    from PIL import Image

    from benchmarks._common import repeats_of
    from benchmarks.bench_image import make_images
    from sdsnodes.codecs._resize import resize

    repeats, loops = repeats_of(args), (50 if args.quick else 400)
    (path,) = make_images((args.dir or default_data_dir()) / "image" / "jpeg-256", 1, 256, 256)
    image = Image.open(path).convert("RGB")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [3, H, W], channels-last
    torch.set_num_threads(1)
    rows, diffs = [], {}
    for name in ("bilinear", "bicubic"):
        method = Image.Resampling[name.upper()]
        ways = {
            f"Pillow {name}": lambda m=method: image.resize((224, 224), m),
            f"torch {name}, antialias": lambda n=name: resize(pixels, (224, 224), n, True),
            f"torch {name}, no antialias": lambda n=name: resize(pixels, (224, 224), n, False),
        }
        group = {w: Result(w, unit="CPU ms/image", group=name, baseline=w.startswith("Pillow"))
                 for w in ways}  # fmt: skip
        for repeat in range(repeats):
            for way in in_turn(list(ways), repeat):
                start = time.process_time()
                for _ in range(loops):
                    ways[way]()
                group[way].values.append(1000 * (time.process_time() - start) / loops)
        reference = np.asarray(ways[f"Pillow {name}"]()).astype(int)
        ours = ways[f"torch {name}, antialias"]().permute(1, 2, 0).numpy().astype(int)
        diffs[name] = int(np.abs(reference - ours).max())
        group[f"torch {name}, antialias"].note = f"max difference to Pillow: {diffs[name]} levels"
        rows += list(group.values())
    print(format_table(rows, title="resize 256x256 -> 224x224 RGB, 1 thread (lower is better)"))
    data = open(path, "rb").read()  # noqa: SIM115 - read once
    ways = {"Pillow open + load": lambda: Image.open(io.BytesIO(data)).load()}
    try:
        import simplejpeg

        ways["simplejpeg.decode_jpeg"] = lambda: simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ImportError:
        print("simplejpeg is not installed: its row is skipped")
    decode = {w: Result(w, unit="CPU ms/image", group="decode 256x256 JPEG",
                        baseline=w.startswith("Pillow")) for w in ways}  # fmt: skip
    for repeat in range(repeats):
        for way in in_turn(list(ways), repeat):
            start = time.process_time()
            for _ in range(loops):
                ways[way]()
            decode[way].values.append(1000 * (time.process_time() - start) / loops)
    for row in decode.values():
        row.note = f"median {row.median:.3f} ms"
    print()
    print(format_table(list(decode.values()), title="JPEG decode, 1 thread (lower is better)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
