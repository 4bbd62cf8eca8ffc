"""``bench_peers --plot``: bar charts in ``docs/img/`` and ``docs/comparison.md`` from one run."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks._common import Result, machine
from benchmarks._peers_page_s3 import is_s3_run, s3_lines

DOCS = Path(__file__).resolve().parent.parent / "docs"
OURS = "sdsnodes (raw files)"
BASE = "plain DataLoader"
CHARTS = {  # metric key: (file stem, axis label, higher is better)
    "rate": ("peers_samples_per_s", "samples/s (higher is better)", True),
    "first": ("peers_first_batch", "first-batch latency, s (lower is better)", False),
    "cpu_ms": ("peers_cpu_ms", "CPU ms per image (lower is better)", False),
    "pss": ("peers_peak_pss", "peak PSS, MiB (lower is better)", False),
    "clip_rate": ("peers_clips_per_s", "16-frame clips/s (higher is better)", True),
    "clip_pss": ("peers_clips_peak_pss", "peak PSS with clips, MiB (lower is better)", False),
}
PEERS = [BASE, "torchdata.nodes", "webdataset", "litdata", "mosaicml-streaming"]
# (feature, sdsnodes, plain DataLoader, torchdata.nodes, webdataset, litdata, mosaicml-streaming)
FEATURES = [
    ("reads raw files, no conversion", "yes (local, S3, GCS, HTTP)", "local, your code",
     "local, your code", "no (tar shards)", "partly (`StreamingRawDataset`)", "no (MDS shards)"),
    ("budgeted disk cache shared by the machine's jobs", "yes", "no", "no", "no (unbounded cache)",
     "per dataset (`max_cache_size`)", "per dataset (`cache_limit`)"),
    ("exact mid-epoch resume", "yes", "no", "yes", "no", "yes", "yes"),
    ("resume on another world size", "yes", "no", "no", "no", "not checked",
     "yes (`num_canonical_nodes`)"),
    ("weighted mixing of datasets", "yes", "no", "yes", "yes (`RandomMix`)",
     "yes (`CombinedStreamingDataset`)", "yes (streams)"),
    ("video clips decoded (PyAV)", "yes", "your code", "your code", "partly (decoders)",
     "your code", "your code"),
    ("partial reads (byte ranges of large files)", "yes", "no", "no", "no", "no", "no"),
    ("every skipped sample counted by reason", "yes", "no", "no", "no (handler)", "no", "no"),
]  # fmt: skip


def _chart(rows: Mapping[str, Result], stem: str, label: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in [*PEERS, "torchdata.nodes (threads)", OURS] if n in rows]
    medians = [rows[n].median for n in names]
    errors = [[rows[n].median - rows[n].min for n in names],
              [rows[n].max - rows[n].median for n in names]]  # fmt: skip
    colors = ["#d62728" if n == OURS else "#7f7f7f" for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    ax.barh(names, medians, xerr=errors, color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    for y, (value, above) in enumerate(zip(medians, errors[1])):
        ax.text(value + above, y, f"  {value:.3g}", va="center", fontsize=8)
    ax.set_xlim(0, max(m + e for m, e in zip(medians, errors[1])) * 1.15)
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path, metadata={"Software": None})  # no timestamp: reproducible bytes
    plt.close(fig)
    return path


def _table(rows: Mapping[str, Mapping[str, Result]], convert_s: Mapping[str, float]) -> list[str]:
    names = [n for n in PEERS + [OURS] if n in rows["rate"]]
    lines = [
        "| loader | samples/s | vs plain DataLoader | first batch, s | CPU ms/image "
        "| peak PSS, MiB | conversion, s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = rows["rate"][BASE].median
    for n in names:
        conv = convert_s.get(n)
        lines.append(
            f"| {n} | {rows['rate'][n].median:.0f} | {rows['rate'][n].median / base:.2f}x "
            f"| {rows['first'][n].median:.2f} | {rows['cpu_ms'][n].median:.2f} "
            f"| {rows['pss'][n].median:.0f} | {'-' if conv is None else f'{conv:.1f}'} |"
        )
    return lines


def rows_from_json(paths: list[Path]) -> tuple[dict[str, dict[str, Result]], dict[str, Any]]:
    """The rows and config of saved runs (``bench_peers --json``; later files add their
    metrics), to rewrite the page without measuring again."""
    import json

    from benchmarks.bench_peers import CLIP_METRICS, METRICS

    titles = {title: key for key, (title, _, _) in {**METRICS, **CLIP_METRICS}.items()}
    rows: dict[str, dict[str, Result]] = {}
    config: dict[str, Any] = {}
    for path in paths:
        if is_s3_run(path):  # the S3 task: its own section (benchmarks/_peers_page_s3.py)
            config["s3_json"] = str(path)
            continue
        saved = json.loads(Path(path).read_text())
        for r in saved["results"]:
            result = Result(r["name"], list(r["values"]), r["unit"], r["group"], r["baseline"])
            rows.setdefault(titles[r["group"]], {})[r["name"]] = result
        run = saved["config"]
        if "clip_rate" in {titles[r["group"]] for r in saved["results"]}:
            config["num_videos"], config["clip_repeats"] = run.get("num_videos"), run["repeats"]
        if "rate" in {titles[r["group"]] for r in saved["results"]}:
            config.update({k: v for k, v in run.items() if k not in ("num_videos",)})
    return rows, config


def _clips(rows: Mapping[str, Mapping[str, Result]], config: dict[str, Any]) -> list[str]:
    """The clip section: clips/s and peak PSS, or where to get them."""
    if "clip_rate" not in rows:
        return [
            "Clips: run `python -m benchmarks.bench_peers --task clips` (figures in "
            "`benchmarks/README.md`).",
        ]
    names = list(rows["clip_rate"])
    base = rows["clip_rate"][BASE]
    lines = [
        f"16-frame H.264 clips ({config.get('num_videos') or 96} videos of 256x192, 3 s; 16 "
        "frames at 8 frames/s, 112x112 centre crops; batches of 8, 2 workers; medians of "
        f"{config.get('clip_repeats') or config.get('repeats')}; the peers decode with "
        "`benchmarks/bench_video.py::handwritten_clip`, torchdata.nodes in 4 threads of this "
        "process). Each epoch (4-5 s here) includes the workers' start-up, not separated "
        "from the decoding:",
        "",
        "| loader | clips/s | vs plain DataLoader | peak PSS, MiB |",
        "|---|---:|---:|---:|",
    ]
    for n in names:
        rate = rows["clip_rate"][n].median
        lines.append(
            f"| {n} | {rate:.1f} | {rate / base.median:.2f}x | {rows['clip_pss'][n].median:.0f} |"
        )
    return lines


def write_page(
    rows: Mapping[str, Mapping[str, Result]],
    convert_s: Mapping[str, float],
    config: dict[str, Any],
    docs: Path | None = None,
) -> list[Path]:
    """Write the charts and ``comparison.md`` in ``docs`` (default: the repository's);
    the paths written."""
    docs = docs or DOCS
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    written = [
        _chart(rows[key], stem, label, img)
        for key, (stem, label, _) in CHARTS.items()
        if key in rows
    ]
    host = machine()
    header = "| feature | " + " | ".join([OURS.split(" ")[0]] + PEERS) + " |"
    features = [header, "|---" * (len(PEERS) + 2) + "|"]
    features += ["| " + " | ".join(row) + " |" for row in FEATURES]
    day = datetime.date.today().isoformat()
    page = [
        "# Comparison with other loaders",
        "",
        "<!-- generated by `python -m benchmarks.bench_peers --plot`; edit benchmarks/_peers_page.py -->",
        "",
        f"One task, the same files, the same run ({day}, {host['cpus']} CPUs shared with other "
        f"jobs, Python {host['python']}, torch {host['torch']}): {config['num_images']} JPEGs "
        f"of 256x256 px (~40 KB) on local disk, decoded to 224x224 crops, one shuffled epoch, "
        f"{config['num_workers']} worker processes, batches of {config['batch_size']}; medians "
        f"of {config['repeats']} runs (order alternating), whiskers min-max. Every loader's "
        "sample ids are checked to cover the epoch exactly once. The peers decode with the same "
        "Pillow function (`benchmarks/_peers.py::crop224`); sdsnodes runs its `ImageTensor` "
        "(bicubic, antialiased). The peers read their own shards, converted beforehand (timed "
        "apart, last column); sdsnodes reads the raw files through an index.",
        "",
        *_table(rows, convert_s),
        "",
        "CPU ms per image counts this process and its reaped children (the workers); peak PSS is "
        "the sum of `Pss` in `/proc/<pid>/smaps_rollup` over the process and its descendants, "
        "sampled every 50 ms. Each epoch runs in a fresh process (spawned, with the same "
        "libraries imported before timing; its DataLoader workers forked), so no loader "
        "inherits what another left in memory. The machine is a shared 2-core VM: compare "
        "the rows with each other, not with other machines. sdsnodes runs its default "
        "`num_threads=None`: with 2 workers on 2 cores it decodes inline, one thread per "
        "worker as the peers do.",
        "",
        *[f"![{label}](img/{stem}.png)" for key, (stem, label, _) in CHARTS.items() if key in rows],
        "",
        "## Video clips",
        "",
        *_clips(rows, config),
        "",
        *s3_lines(config.get("s3_json")),
        "",
        "## Features",
        "",
        "As documented by each project and, for sdsnodes, tested in this repository; "
        '"not checked" means we did not verify it.',
        "",
        *features,
        "",
        "## Reproduce",
        "",
        "```bash",
        "pip install -e '.[dev,bench]'   # webdataset, litdata, mosaicml-streaming, matplotlib",
        "python -m benchmarks.bench_peers --plot          # this page and docs/img/peers_*.png",
        "python -m benchmarks.bench_peers --quick         # a smoke run (128 images, 8 videos)",
        "python -m benchmarks.bench_peers --task clips    # the clip task alone",
        "```",
        "",
    ]
    path = docs / "comparison.md"
    path.write_text("\n".join(page))
    return written + [path]
