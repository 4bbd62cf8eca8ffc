"""Hostile input through real graphs and multi-process loaders: every bad input is skipped with
its reason (``error_stats``) or refused at construction, nothing hangs, nothing is written
outside ``cache_dir``, and credentials given in ``storage_options`` never show.

Inputs: decompression bombs (a JPEG header and a real PNG declaring 30,000 x 30,000 pixels, a
real 10,000 x 10,000 PNG), a JPEG whose header declares more pixels than its data holds, HTML
error pages named ``.jpg``/``.mp4``/``.m4a``, zero-byte and truncated files of every media kind
(image, video, audio, latent ``.npy``/``.pt``, text), directories, a FIFO, a character device,
non-existent paths, NUL bytes in a path, unicode and spaces in names, ``..`` and ``%2e%2e`` in
URLs, ``.npy`` files of objects and pickles named ``.pt``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import struct
import threading
import traceback
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _faults import SEED, scaled
from PIL import Image
from torchdata.stateful_dataloader import StatefulDataLoader
from utils import hang_guard

from sdsnodes import (
    CacheOptions,
    ErrorOptions,
    FetchOptions,
    StreamingDataset,
    build_audio_graph,
    build_image_graph,
    build_video_graph,
    error_stats,
)
from sdsnodes._synthetic import write_audio, write_image
from sdsnodes.cli import main as sds_main
from sdsnodes.codecs import Latent, Text
from sdsnodes.errors import DecodeError, SdsError
from sdsnodes.nodes.decoder import Decoder
from sdsnodes.nodes.index_reader import IndexReader
from tests import media

HANG_GUARD_S = 240  # a generous guard: a FIFO used to hang a worker forever
TOKEN = "sds-hostile-SECRET-7f3a9c"  # a credential that must never show anywhere
_TALLY = {"inputs": 0, "handled": 0}


@pytest.fixture(scope="module", autouse=True)
def figure() -> Iterator[None]:
    """Print the suite's figure once the module ran: inputs tried, and crashes (inputs of a
    test that raised or hung instead of skipping them)."""
    yield
    crashes = _TALLY["inputs"] - _TALLY["handled"]
    print(f"FIGURE hostile: {_TALLY['inputs']} inputs, {crashes} crashes")


@contextlib.contextmanager
def hostile(count: int) -> Iterator[None]:
    """Count ``count`` hostile inputs; they are handled if the block ends without error within
    the hang guard (SIGALRM raises in the main thread, which waits on the loader)."""

    _TALLY["inputs"] += count
    with hang_guard(HANG_GUARD_S):
        yield
    _TALLY["handled"] += count


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root`` but ``skip``: path -> (size, mtime ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if path == skip:
                continue
            st = path.lstat()
            out[str(path)] = (st.st_size if not path.is_dir() else 0, st.st_mtime_ns)
    return out


class PeakRSS:
    """Peak memory of this process and its children (the loader's workers), sampled every
    20 ms in a thread as the sum of their proportional set sizes (PSS: pages shared after a
    fork count once); ``growth`` is in bytes over the first sample."""

    def __init__(self) -> None:
        self.base = self._now()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> int:
        me = psutil.Process()
        total = me.memory_full_info().pss
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_full_info().pss  # forked pages shared, counted once
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._now())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


def drain(graph, num_workers: int = 2) -> tuple[list[str], dict[str, int], dict]:
    """Run ``graph`` one epoch through ``StatefulDataLoader(num_workers)``: the keys delivered,
    the skip counts by reason and the loader's state (JSON round-tripped)."""
    loader = StatefulDataLoader(StreamingDataset(graph), batch_size=None, num_workers=num_workers)
    keys = []
    for batch in loader:
        keys += list(batch["__key__"])
    state = json.loads(json.dumps(loader.state_dict()))
    return keys, error_stats(state), state


def run_both(make_graph, good: list[str], counts: dict[str, int]) -> tuple[dict, dict]:
    """Run the graph in this process (``num_workers=0``, no prefetch: every skip reaches the
    state, and the logs reach caplog) and through 2 worker processes with the defaults.

    In both, exactly the ``good`` keys are delivered. The first counts exactly ``counts``; the
    second no other reason and no more (skips after a worker's last batch are lost from the
    loader's state: see the xfail test below). Returns both loader states.
    """
    keys, stats, state = drain(make_graph(prefetch_factor=0), num_workers=0)
    assert sorted(keys, key=int) == good
    assert stats == counts
    keys, stats, workers = drain(make_graph(), num_workers=2)
    assert sorted(keys, key=int) == good
    assert set(stats) <= set(counts) and all(stats[r] <= counts[r] for r in stats), stats
    return state, workers


def index(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


# ------------------------------------------------------------------------- hostile files


def jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A real 64 x 48 JPEG whose frame header declares ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(
        buffer, "JPEG"
    )
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def png_bomb(path: Path, side: int) -> Path:
    """A real, valid 1-bit PNG of ``side`` x ``side`` white pixels: small on disk (deflate),
    ``side**2`` bytes once Pillow decodes it, three times that as RGB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = b"\x00" + b"\xff" * ((side + 7) // 8)  # filter byte + packed bits
    squeeze = zlib.compressobj(9)
    rows = 256
    data = b"".join(squeeze.compress(row * rows) for _ in range(side // rows))
    data += squeeze.compress(row * (side % rows)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data))
        out.write(chunk(b"IEND", b""))
    return path


HTML = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>gone</body></html>"


def html(path: Path) -> Path:
    path.write_bytes(HTML * 20)
    return path


def cut(path: Path, fraction: float = 0.5) -> Path:
    """``path`` cut to its first ``fraction`` of bytes, in place."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """Decompression bombs, made once: a JPEG header and a real PNG declaring 30,000 x 30,000
    pixels (beyond Pillow's own limit), and a real PNG of 10,000 x 10,000 (within Pillow's
    error limit, above ImageTensor's default ``max_pixels``)."""
    d = tmp_path_factory.mktemp("bombs")
    return {
        "bomb_header.jpg": jpeg_declaring(d / "bomb_header.jpg", 30_000, 30_000),
        "bomb_30k.png": png_bomb(d / "bomb_30k.png", 30_000),
        "bomb_10k.png": png_bomb(d / "bomb_10k.png", 10_000),
    }


def image_inputs(d: Path, bombs: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    """Good images (some with unicode, spaces, ``%2e%2e`` in their names) and hostile ones:
    the paths, and the reason each hostile one must be skipped for."""
    good = []
    for i, name in enumerate(["a.jpg", "b.png", "c.webp", "ünï cödé 图 #1.jpg", "a%2e%2e b.png"]):
        write_image(d / name, width=40 + i, height=30, seed=i)
        good.append(str(d / name))
    bad = {
        str(bombs["bomb_header.jpg"]): "too_large",
        str(bombs["bomb_30k.png"]): "too_large",
        str(bombs["bomb_10k.png"]): "too_large",
        str(jpeg_declaring(d / "liar.jpg", 4000, 3000)): "decode",  # 64x48 of data
        str(cut(media.image(d, "cut.jpg", width=256, height=192))): "decode",
        str(cut(media.image(d, "cut.png", width=256, height=192))): "decode",
        str(cut(media.image(d, "cut.webp", width=256, height=192))): "decode",
        str(html(d / "error_page.jpg")): "decode",
        str(media.zero_byte(d, "empty.jpg")): "decode",
        str(media.garbage(d, "noise.png")): "decode",
        str(d / "missing.jpg"): "missing",
        str(folder(d / "folder.jpg")): "not_a_file",
        str(fifo(d / "pipe.jpg")): "not_a_file",
        str(d / "nul\x00byte.jpg"): "not_a_file",
        "/dev/zero": "not_a_file",
    }
    return good + list(bad), bad


def expected_counts(bad: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in bad.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


# ------------------------------------------------------------------------------ the tests


def test_hostile_images_are_skipped_with_their_reason_without_memory_blowup(tmp_path, bombs):
    d = tmp_path / "in"
    d.mkdir()
    paths, bad = image_inputs(d, bombs)
    src = index(
        tmp_path / "index.parquet", image=paths, caption=[f"c{i}" for i in range(len(paths))]
    )
    cache = tmp_path / "cache"
    before = snapshot(tmp_path, cache)

    def graph(seed, **kw):
        return build_image_graph(src, size=32, batch_size=4, cache=CacheOptions(str(cache)),
                                 errors=ErrorOptions(max_error_rate=1.0), num_threads=2,
                                 seed=seed, **kw)  # fmt: skip

    good = [str(i) for i in range(len(paths) - len(bad))]
    for seed in range(SEED, SEED + scaled(1, 4)):  # shuffled orders
        with hostile(len(bad)), PeakRSS() as rss:
            run_both(functools.partial(graph, seed), good, expected_counts(bad))
        print(f"hostile images: peak memory growth {rss.growth / 2**20:.0f} MiB (PSS; the 30k "
              f"bomb as RGB: {3 * 30_000**2 / 2**30:.1f} GiB)")  # fmt: skip
        assert rss.growth < 1 << 30  # a decoded 30k x 30k bomb alone would be 0.8-2.5 GiB
    assert snapshot(tmp_path, cache) == before, "something was written outside cache_dir"


def test_hostile_videos_and_audio_are_skipped_with_their_reason(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    good = [
        str(media.video(d, "ünï cödé 图 #1.mp4", num_frames=12)),
        str(media.video(d, "b c.mp4", num_frames=12)),
    ]
    bad = {
        str(html(d / "error_page.mp4")): "decode",
        str(media.zero_byte(d, "empty.mp4")): "decode",
        str(media.truncated_mp4(d)): "decode",
        str(media.corrupt_mp4(d)): "decode",
        str(d / "missing.mp4"): "missing",
        str(fifo(d / "pipe.mp4")): "not_a_file",
        str(folder(d / "folder.mp4")): "not_a_file",
    }
    cache = tmp_path / "cache"
    src = index(tmp_path / "video.parquet", video=good + list(bad), caption=["x"] * 9)
    before = snapshot(tmp_path, cache)
    with hostile(len(bad)):
        run_both(
            lambda **kw: build_video_graph(src, num_frames=4, size=32, batch_size=1,
                                           cache=CacheOptions(str(cache)),
                                           errors=ErrorOptions(max_error_rate=1.0), num_threads=2,
                                           **kw),
            ["0", "1"], expected_counts(bad),
        )  # fmt: skip
    assert snapshot(tmp_path, cache) == before, "something was written outside cache_dir"

    a = tmp_path / "audio"
    a.mkdir()
    write_audio(a / "tone one.wav", seconds=1.0)
    write_audio(a / "tøne 2.flac", seconds=1.0)
    flac = a / "cut.flac"
    write_audio(flac, seconds=4.0)
    bad = {
        str(media.zero_byte(a, "empty.wav")): "decode",
        str(cut(flac, 0.3)): "decode",
        str(html(a / "error_page.m4a")): "decode",
        str(fifo(a / "pipe.wav")): "not_a_file",
        str(folder(a / "folder.wav")): "not_a_file",
        str(a / "missing.flac"): "missing",
    }
    files = [str(a / "tone one.wav"), str(a / "tøne 2.flac"), *bad]
    src = index(tmp_path / "audio.parquet", audio=files, caption=["x"] * len(files))
    before = snapshot(tmp_path, cache)
    with hostile(len(bad)):
        run_both(
            lambda **kw: build_audio_graph(src, duration=0.5, batch_size=1,
                                           cache=CacheOptions(str(cache)),
                                           errors=ErrorOptions(max_error_rate=1.0),
                                           num_threads=2, **kw),
            ["0", "1"], expected_counts(bad),
        )  # fmt: skip
    assert snapshot(tmp_path, cache) == before, "something was written outside cache_dir"


def test_hostile_latents_and_text_are_skipped_never_unpickled(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "good.npy", np.zeros((4, 2, 8, 8), np.float32))
    torch.save(torch.ones(4, 2, 8, 8), d / "good two.pt")
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "cut.npy", np.zeros((64, 64), np.float32))
    torch.save(torch.zeros(64, 64), d / "cut.pt")
    rows = [  # (latent, caption bytes, reason or None)
        (d / "good.npy", b"a cat", None),
        (d / "good two.pt", "ünï cödé".encode(), None),
        (d / "good.npy", b"", None),  # an empty caption is a caption
        (d / "good.npy", b"caf\xc3", "decode"),  # truncated UTF-8
        (d / "good.npy", b"\xff\xfe\x00garbage", "decode"),
        (d / "objects.npy", b"x", "decode"),
        (media.pickle_as_pt(d, "payload.pt"), b"x", "decode"),
        (cut(d / "cut.npy"), b"x", "decode"),
        (cut(d / "cut.pt"), b"x", "decode"),
        (media.zero_byte(d, "empty.pt"), b"x", "decode"),
        (media.zero_byte(d, "empty.npy"), b"x", "decode"),
        (media.jpeg_named(d, "picture.npy"), b"x", "decode"),
        (html(d / "error_page.pt"), b"x", "decode"),
        (fifo(d / "pipe.npy"), b"x", "not_a_file"),
        (d / "missing.pt", b"x", "missing"),
        (folder(d / "folder.npy"), b"x", "not_a_file"),
    ]
    table = pa.table(
        {
            "latent": [str(r[0]) for r in rows],
            "caption": pa.array([r[1] for r in rows], pa.binary()),
        }
    )
    cache = tmp_path / "cache"
    before = snapshot(tmp_path, cache)

    def graph(prefetch_factor=None):  # samples, not batches: latents of any shape
        return Decoder(
            IndexReader(table, index_cache_dir=str(cache / "index")),
            {"latent": Latent(), "caption": Text()},
            num_threads=2,
            errors=ErrorOptions(max_error_rate=1.0),
        )

    bad = {str(i): r[2] for i, r in enumerate(rows) if r[2]}
    with hostile(len(bad)):
        run_both(graph, ["0", "1", "2"], expected_counts(bad))
        samples = list(
            StatefulDataLoader(StreamingDataset(graph()), batch_size=None, num_workers=2)
        )
    assert sorted(s["caption"] for s in samples) == ["", "a cat", "ünï cödé"]
    assert all(s["latent"].shape == (4, 2, 8, 8) for s in samples)
    assert snapshot(tmp_path, cache) == before, "something was written outside cache_dir"


def test_decode_errors_name_the_url_and_secrets_never_show_over_http(
    http_server, http_dir, tmp_path, caplog, capfd, bombs
):
    names = ["a.jpg", "ünï cödé 图 #1.jpg", "b c.png"]
    for i, name in enumerate(names):
        write_image(http_dir.path / name, width=40 + i, height=30, seed=i)
    html(http_dir.path / "error_page.jpg")
    media.zero_byte(http_dir.path, "empty.jpg")
    cut(media.image(http_dir.path, "cut.jpg", width=256, height=192))
    (http_dir.path / "bomb_header.jpg").write_bytes(bombs["bomb_header.jpg"].read_bytes())
    bad = {
        http_dir.url_for("error_page.jpg"): "decode",
        http_dir.url_for("empty.jpg"): "decode",
        http_dir.url_for("cut.jpg"): "decode",
        http_dir.url_for("bomb_header.jpg"): "too_large",
        http_dir.url_for("gone.jpg"): "missing",  # 404
        # after dot-segment removal, these name no served file (404)
        f"{http_dir.url}/%2e%2e/%2e%2e/%2e%2e/etc/passwd": "missing",
        f"{http_dir.url}/../../../../etc/passwd": "missing",
        f"{http_dir.url}/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd": "missing",
        f"{http_dir.url}/nul\x00byte.jpg": "download",  # the server answers 500
        f"{http_dir.url}/nul%00byte.jpg": "download",
    }
    urls = list(bad) + [http_dir.url_for(n) for n in names]  # no skip after the last sample
    src = index(tmp_path / "index.parquet", image=urls, caption=[f"c{i}" for i in range(len(urls))])
    cache = tmp_path / "cache"
    options = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
    before = snapshot(tmp_path, cache)
    caplog.set_level(logging.DEBUG)

    def graph(**kw):
        args = dict(size=32, batch_size=2, cache=CacheOptions(str(cache)),
                    fetch=FetchOptions(options, retries=1, max_in_flight=4),
                    errors=ErrorOptions(max_error_rate=1.0), num_threads=2,
                    shuffle=False)  # fmt: skip
        return build_image_graph(src, **{**args, **kw})

    with hostile(len(bad)):
        states = run_both(graph, ["10", "11", "12"], expected_counts(bad))
    assert snapshot(tmp_path, cache) == before, "something was written outside cache_dir"

    # the decode error names the URL the user knows, the column and the key; the cache path after
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("sdsnodes")]
    decode = [m for m in messages if "(decode," in m]
    assert decode, messages
    assert f"cannot decode '{http_dir.url_for('error_page.jpg')}'" in decode[0]  # the first one
    assert "column 'image'" in decode[0] and "__key__='0'" in decode[0]
    assert f"cached as '{cache}" in decode[0]

    # with on_error="raise", the error itself names the URL
    with pytest.raises(DecodeError) as caught:
        list(StreamingDataset(graph(errors=ErrorOptions("raise", 1.0), batch_size=1)))
    assert http_dir.url_for("error_page.jpg") in str(caught.value)

    # the credential shows nowhere: logs (every logger, DEBUG), the workers' stderr, errors,
    # loader states, `sds cache stats`
    texts = [r.getMessage() for r in caplog.records] + [capfd.readouterr().err]
    texts += ["".join(traceback.format_exception(caught.value))]
    texts += [json.dumps(state) for state in states]
    sds_main(["cache", "stats", str(cache)])
    texts.append(capfd.readouterr().out)
    leaks = [t for t in texts if TOKEN in t]
    assert not leaks, leaks[0][:500]


def test_s3_dot_dot_keys_and_credentials(s3_server, s3_bucket, tmp_path, caplog, capfd):
    fs = s3_server.fs()
    write_image(tmp_path / "x.jpg", width=40, height=30)
    for name in ["a.jpg", "ünï cödé 图 #1.jpg"]:
        fs.put_file(str(tmp_path / "x.jpg"), f"{s3_bucket}/imgs/{name}")
    fs.pipe_file(f"{s3_bucket}/imgs/error_page.jpg", HTML)
    bucket = s3_bucket.removeprefix("s3://")
    urls = [f"{s3_bucket}/imgs/a.jpg", f"{s3_bucket}/imgs/ünï cödé 图 #1.jpg"]
    hostile_urls = [
        f"{s3_bucket}/imgs/error_page.jpg",
        f"s3://{bucket}/../../x.jpg",
        f"s3://{bucket}/imgs/%2e%2e/%2e%2e/x.jpg",
        f"s3://{bucket}/imgs/../../../etc/passwd",
    ]
    src = index(tmp_path / "index.parquet", image=hostile_urls + urls, caption=["x"] * 6)
    cache = tmp_path / "cache"
    secret = f"{TOKEN}-s3"
    options = {**s3_server.storage_options, "key": "AKIAHOSTILE0TEST", "secret": secret}
    before = snapshot(tmp_path, cache)
    caplog.set_level(logging.DEBUG)

    def graph(**kw):
        args = dict(size=16, batch_size=2, cache=CacheOptions(str(cache)), shuffle=False,
                    fetch=FetchOptions(options, retries=1, max_in_flight=16),
                    errors=ErrorOptions(max_error_rate=1.0), num_threads=2)  # fmt: skip
        return build_image_graph(src, **{**args, **kw})

    with hostile(len(hostile_urls)):
        keys, stats, state = drain(graph(prefetch_factor=0), num_workers=0)
        assert sorted(keys) == ["4", "5"]
        assert sum(stats.values()) == len(hostile_urls) and stats.get("decode") == 1, stats
        assert set(stats) <= {"decode", "missing", "download"}, stats
        workers = drain(graph(), num_workers=2)
        assert sorted(workers[0]) == ["4", "5"]
    assert snapshot(tmp_path, cache) == before, "something was written outside cache_dir"
    raising = ErrorOptions("raise", max_error_rate=1.0)
    once = FetchOptions(options, retries=0, max_in_flight=16)
    with pytest.raises(SdsError) as caught:
        list(StreamingDataset(graph(errors=raising, batch_size=1, fetch=once)))
    sds_main(["cache", "stats", str(cache)])
    texts = [r.getMessage() for r in caplog.records] + [json.dumps(state), json.dumps(workers[2])]
    texts += ["".join(traceback.format_exception(caught.value)), str(capfd.readouterr())]
    leaks = [t for t in texts if secret in t]
    assert not leaks, leaks[0][:500]


@pytest.mark.xfail(
    strict=True,
    reason="skips after a worker's last batch never reach the loader's state: torchdata's "
    "StatefulDataLoader takes its snapshot only when it yields a batch (_process_data), not "
    "when a worker's final state arrives with _IterableDatasetStopIteration.",
)
def test_skips_after_each_workers_last_batch_are_counted(tmp_path):
    good = [str(media.video(tmp_path, f"g{i}.mp4", num_frames=8)) for i in range(2)]
    bad = [str(media.zero_byte(tmp_path, f"empty{i}.mp4")) for i in range(7)]
    src = index(tmp_path / "video.parquet", video=good + bad, caption=["x"] * 9)
    keys, stats, _ = drain(
        build_video_graph(src, num_frames=4, size=32, batch_size=1, shuffle=False,
                          cache=CacheOptions(str(tmp_path / "cache")),
                          errors=ErrorOptions(max_error_rate=1.0), num_threads=2)
    )  # fmt: skip
    assert sorted(keys) == ["0", "1"]
    assert stats == {"decode": 7}
