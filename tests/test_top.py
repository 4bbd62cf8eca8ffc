"""``sds top`` against a live job: a loader streaming over HTTP (loopback) in another process."""

from __future__ import annotations

import io
import multiprocessing
import os
import pty
import re
import select
import time
from typing import Any

import pytest
from test_metrics import NUM_IMAGES, remote_images  # noqa: F401 - a fixture

from sdsnodes._ledger_view import read_ledger
from sdsnodes.cli import main
from sdsnodes.top import CLEAR, parse_bytes, run


def _job(index: str, cache_dir: str, ready: Any, stop: Any) -> None:
    """A training job's loader: reads one batch, then holds what it pinned until ``stop``."""
    from torchdata.nodes import Loader

    from sdsnodes import CacheOptions, build_image_graph

    cache = CacheOptions(cache_dir, max_bytes=10**9)
    graph = build_image_graph(
        index, size=16, batch_size=1, cache=cache, num_threads=1, prefetch_factor=1
    )
    it = iter(Loader(graph))
    next(it)
    ready.set()
    stop.wait(60)


@pytest.fixture(scope="module")
def live_job(remote_images, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """A job (a forked process: no second start-up of torch) that read one batch and holds the
    rest of its window pinned; its cache dir and the bytes of the files."""
    index, total_bytes = remote_images
    cache_dir = tmp_path_factory.mktemp("top-cache")
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    job = context.Process(target=_job, args=(index, str(cache_dir), ready, stop), daemon=True)
    job.start()
    try:
        assert ready.wait(60), "the job did not read its first batch"
        deadline = time.monotonic() + 30
        while read_ledger(cache_dir)["files"] < NUM_IMAGES and time.monotonic() < deadline:
            time.sleep(0.05)  # the window's downloads end after the first batch
        yield str(cache_dir), total_bytes
    finally:
        job.kill()  # its pins are reclaimed as a dead process's
        job.join(30)
        job.close()


def test_once_shows_the_live_job(live_job):
    cache_dir, total_bytes = live_job
    figures = read_ledger(cache_dir)
    assert figures["files"] == NUM_IMAGES and figures["bytes"] == total_bytes
    assert figures["processes"] == 1  # the job, holding its window's pins
    assert 1 <= figures["pinned_files"] < NUM_IMAGES
    out = io.StringIO()
    assert run(cache_dir, interval_s=0.01, count=1, max_bytes=2 * total_bytes, out=out) == 0
    text = out.getvalue()
    assert CLEAR not in text  # not a terminal
    assert f"{NUM_IMAGES} ready" in text and "(50%)" in text
    assert "1 attached" in text and re.search(r"pinned +[1-7] files", text)
    assert f"0 hits, {NUM_IMAGES} misses" in text and "files/s" in text


def test_live_view_on_a_terminal(live_job):
    """On a terminal (a pseudo-terminal here) each frame replaces the last."""
    cache_dir, _ = live_job
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert terminal.isatty()
            run(cache_dir, interval_s=0.05, count=2, max_bytes=parse_bytes("1MB"), out=terminal)
        chunks = []
        while select.select([leader], [], [], 0.5)[0]:
            chunks.append(os.read(leader, 65536))
    finally:
        os.close(follower)
        os.close(leader)
    text = b"".join(chunks).decode()
    assert text.count(CLEAR) == 2 and text.count("sds top") == 2
    assert f"{NUM_IMAGES} ready" in text and "of 1.0 MB budget" in text


def test_the_command(live_job, capsys):
    cache_dir, _ = live_job
    assert main(["top", cache_dir, "--once", "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert out.count("sds top") == 1 and "(budget: pass --max-bytes)" in out


def test_arguments():
    assert parse_bytes("50GB") == 50 * 10**9 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="512MiB"):
        parse_bytes("lots")
    assert main(["top", "/no/such/dir", "--once"]) == 1
