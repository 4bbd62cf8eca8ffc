"""Servers that misbehave (issue 10, suite item 3): retries, Retry-After, checksums, outages.

Every fault goes through a real loopback server (``tests/servers/http.py``, or the fault proxy
``tests/servers/proxy.py`` in front of moto's S3) and sdsnodes' own download path.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import operator
import os
import random
import threading
import time
from pathlib import Path

import google_crc32c
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _faults import LONG, SEED, scaled
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import CacheOptions, FetchOptions, StreamingDataset, build_image_graph, error_stats
from sdsnodes._checksum import ChecksumMismatch, parse_checksum
from sdsnodes._retry import DEFAULT_DEADLINE_S, DEFAULT_RETRIES
from sdsnodes._synthetic import write_image
from sdsnodes.codecs import ImageTensor
from sdsnodes.errors import DownloadError
from sdsnodes.storage import fetch, fetch_soon

DATA = os.urandom(50_000)


def _digests(data: bytes) -> dict[str, tuple[str, str]]:
    """Each algorithm's digest, in the encodings object stores use."""
    crc = google_crc32c.Checksum(data).digest()
    return {
        "md5-hex": ("md5", hashlib.md5(data).hexdigest()),
        "md5-etag": ("md5", f'"{hashlib.md5(data).hexdigest()}"'),
        "md5-b64": ("md5", base64.b64encode(hashlib.md5(data).digest()).decode()),
        "sha256-hex": ("sha256", hashlib.sha256(data).hexdigest()),
        "sha256-b64": ("sha256", base64.b64encode(hashlib.sha256(data).digest()).decode()),
        "crc32c-b64": ("crc32c", base64.b64encode(crc).decode()),
        "crc32c-hex": ("crc32c", crc.hex()),
    }


# ---------------------------------------------------------------------------- checksums
@pytest.mark.parametrize("encoding", sorted(_digests(b"")))
def test_checksum_accepts_the_right_bytes(http_dir, tmp_path, encoding) -> None:
    (http_dir.path / "a.bin").write_bytes(DATA)
    dest = tmp_path / "a.bin"
    size = fetch(http_dir.url_for("a.bin"), dest, checksum=_digests(DATA)[encoding])
    assert size == len(DATA)
    assert dest.read_bytes() == DATA


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "crc32c"])
def test_checksum_mismatch_is_permanent_and_removes_the_file(
    http_server, http_dir, tmp_path, algorithm
) -> None:
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    wrong = _digests(DATA[::-1])[f"{algorithm}-hex"]
    dest = tmp_path / "a.bin"
    with pytest.raises(ChecksumMismatch) as info:
        fetch(url, dest, checksum=wrong)
    assert isinstance(info.value, DownloadError)
    assert info.value.reason == "checksum"
    assert url in str(info.value) and algorithm in str(info.value)
    assert not dest.exists()  # wrong bytes never stay where a cache could rename them
    assert http_server.stats(url)["get"] == 1  # not retried

    with pytest.raises(ChecksumMismatch):  # the asynchronous path too
        fetch_soon(url, dest, checksum=wrong).result(timeout=60)
    assert not dest.exists()
    assert http_server.stats(url)["get"] == 2


@pytest.mark.parametrize(
    "bad",
    [("md4", "00"), ("md5", "xyz"), ("md5", "abc-3"), ("sha256", "0" * 32), "md5", ("crc32c",)],
)
def test_malformed_checksum_is_refused_before_downloading(http_server, http_dir, bad) -> None:
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    with pytest.raises(ValueError, match="must be"):
        fetch(url, "/nonexistent/never-written", checksum=bad)
    with pytest.raises(ValueError, match="must be"):
        fetch_soon(url, "/nonexistent/never-written", checksum=bad)
    with pytest.raises(ValueError):
        parse_checksum(bad)
    assert http_server.stats(url)["get"] == 0


# ----------------------------------------------------------------------- the retry policy
def test_transient_statuses_are_retried_permanent_ones_are_not(http_server, http_dir, tmp_path):
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    for status in (500, 502, 503, 504, 429, 408):
        http_server.reset_stats()
        http_server.faults(fail_next=2, status=status)
        assert fetch(url, tmp_path / "a.bin", backoff_s=0.05) == len(DATA)
        assert http_server.stats(url)["statuses"] == [status, status, 200]
    for status in (400, 401, 403, 410, 501):
        http_server.reset_stats()
        http_server.faults(fail_next=1, status=status)
        with pytest.raises(Exception) as info:
            fetch(url, tmp_path / "a.bin", backoff_s=0.05)
        assert getattr(info.value, "status", None) == status
        assert http_server.stats(url)["statuses"] == [status]  # one request, no retry
        http_server.clear_faults()


def test_deadline_bounds_the_retries_and_the_error_says_why(http_server, http_dir, tmp_path):
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    http_server.faults(fail_next=10**6, status=503)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_soon(url, tmp_path / "a.bin", backoff_s=0.05, deadline_s=2.0).result(timeout=60)
    elapsed = time.monotonic() - start
    gets = http_server.stats(url)["get"]
    message = str(info.value)
    assert url in message and "2 s deadline" in message and "503" in message
    assert f"failed after {gets} attempts" in message
    assert 2.0 <= elapsed < 30  # not before the deadline; generous hang guard after it
    assert gets <= DEFAULT_RETRIES + 1  # the retries bound the requests too
    http_server.reset_stats()
    with pytest.raises(DownloadError, match="3 retries"):
        fetch(url, tmp_path / "a.bin", retries=3, backoff_s=0.05)
    assert http_server.stats(url)["get"] == 4
    print(f"FIGURE deadline: 2 s deadline, gave up after {elapsed:.1f} s and {gets} requests")


def test_retry_after_is_honoured_in_seconds_and_as_a_date(http_server, http_dir, tmp_path):
    import email.utils

    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    http_server.faults(fail_next=1, status=429, retry_after=1)
    assert fetch(url, tmp_path / "a.bin") == len(DATA)
    when = email.utils.formatdate(time.time() + 2.5, usegmt=True)  # whole seconds: 1.5-2.5 s
    http_server.faults(fail_next=1, status=503, retry_after=when)
    assert fetch_soon(url, tmp_path / "a.bin").result(timeout=60) == len(DATA)
    stats = http_server.stats(url)
    assert stats["statuses"] == [429, 200, 503, 200]
    times = stats["times"]
    assert times[1] - times[0] >= 0.95 and times[3] - times[2] >= 1.4, times


def test_retry_after_past_the_deadline_fails_at_once(http_server, http_dir, tmp_path) -> None:
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    http_server.faults(fail_next=1, status=503, retry_after=3600)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="Retry-After 3600 s passes the 30 s deadline"):
        fetch(url, tmp_path / "a.bin")
    assert time.monotonic() - start < 20  # not an hour, nor the 30 s deadline (hang guard)
    assert http_server.stats(url)["get"] == 1


def test_consistent_content_length_lies(http_server, http_dir, tmp_path) -> None:
    """A server announcing 100 bytes less than the file, every time, gives a complete-looking
    torn file: only a checksum (or the index's size) catches it. One announcing more than it
    sends fails every attempt: a DownloadError once the deadline passed, never a torn file."""
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    http_server.faults(lie_length=-100, method="*")
    assert fetch(url, tmp_path / "torn.bin") == len(DATA) - 100  # no way to tell
    with pytest.raises(ChecksumMismatch):
        fetch(url, tmp_path / "a.bin", checksum=("md5", hashlib.md5(DATA).hexdigest()))
    assert not (tmp_path / "a.bin").exists()
    with pytest.raises(DownloadError, match=f"got {len(DATA) - 100} bytes, expected"):
        fetch(url, tmp_path / "a.bin", expected_size=len(DATA), retries=2, backoff_s=0.05)
    assert http_server.stats(url)["get"] == 1 + 1 + 3

    http_server.clear_faults()
    http_server.reset_stats()
    http_server.faults(lie_length=+100)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_soon(url, tmp_path / "a.bin", backoff_s=0.05, deadline_s=2.0).result(timeout=60)
    elapsed = time.monotonic() - start
    assert "ClientPayloadError" in str(info.value) and "2 s deadline" in str(info.value)
    assert 2.0 <= elapsed < 30, elapsed
    print(
        f"FIGURE lies: torn file caught by checksum; short bodies gave up after {elapsed:.1f} s,"
        f" {http_server.stats(url)['get']} requests"
    )


def test_the_graph_defaults_are_the_storage_policy() -> None:
    import inspect

    from sdsnodes import (
        CachingDownloader,
        build_audio_graph,
        build_text_to_video_graph,
        build_video_graph,
    )

    for fn in (
        build_image_graph,
        build_video_graph,
        build_audio_graph,
        build_text_to_video_graph,
        CachingDownloader.__init__,
    ):
        fetch_options = inspect.signature(fn).parameters["fetch"].default or FetchOptions()
        assert fetch_options.retries == DEFAULT_RETRIES, fn
        assert fetch_options.deadline_s == DEFAULT_DEADLINE_S, fn


def test_errors_never_show_credentials(http_server, http_dir, tmp_path, caplog) -> None:
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    secret_url = url.replace("http://", "http://alice:hunter2@") + "?X-Amz-Signature=s3cr3t&x=1"
    http_server.faults(fail_next=10**6, status=503)
    caplog.set_level("DEBUG", logger="sdsnodes")
    with pytest.raises(DownloadError) as info:
        fetch(secret_url, tmp_path / "a.bin", backoff_s=0.05, deadline_s=0.5)
    shown = str(info.value) + caplog.text
    assert "503" in str(info.value) and "X-Amz-Signature=***" in str(info.value)
    assert "hunter2" not in shown and "s3cr3t" not in shown and "alice" not in shown


@pytest.mark.parametrize("outage_s", [5.0, 15.0, 25.0, 29.0])
def test_the_default_schedule_rides_out_an_outage_shorter_than_the_deadline(outage_s) -> None:
    """The claim of docs/retries.md, on simulated time: every attempt fails (a refused
    connection) until ``outage_s`` after the first; files = URLs (each its own jitter)."""
    from sdsnodes._retry import DEFAULT_MAX_SLEEP_S, Retrier

    files = scaled(2000, 50_000)
    lost, requests, longest = 0, 0, 0.0
    for i in range(files):
        now = [0.0]
        clock = functools.partial(operator.getitem, now, 0)
        retrier = Retrier(f"https://example.com/{SEED}/{i}.jpg", clock=clock)
        while True:
            requests += 1
            if now[0] >= outage_s:
                break  # this attempt succeeds
            wait = retrier.wait_s(ConnectionRefusedError(111, "Connection refused"))
            if wait is None:
                lost += 1
                break
            assert 0 <= wait <= DEFAULT_MAX_SLEEP_S
            now[0] += wait
        longest = max(longest, now[0])
        assert retrier.attempts <= DEFAULT_RETRIES + 1
    print(
        f"FIGURE schedule-{outage_s:.0f}s: {files} files, {lost} lost, "
        f"{requests / files:.1f} requests per file, last success at {longest:.1f} s"
    )
    assert lost == 0
    assert longest <= DEFAULT_DEADLINE_S


# ---------------------------------------------------------------- through a real loader
NUM_IMAGES = 40
SIZE = 16


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """40 small JPEGs (2-4 kB), by file name."""
    root = tmp_path_factory.mktemp("misbehave-images")
    out = {}
    for i in range(NUM_IMAGES):
        path = root / f"img{i:03d}.jpg"
        write_image(path, width=48 + i, height=40, seed=i)
        out[path.name] = path
    return out


@pytest.fixture(scope="module")
def decoded(images) -> dict[str, torch.Tensor]:
    """What the graph must deliver for each file: its source bytes decoded the same way."""
    codec = ImageTensor(size=(SIZE, SIZE))
    return {name: codec(str(path)) for name, path in images.items()}


@pytest.fixture
def s3_proxy(s3_server):
    """A fault proxy in front of the session's moto server (its own process, this test's)."""
    from servers.proxy import FaultProxy

    with FaultProxy(s3_server.url, storage_options=s3_server.storage_options) as proxy:
        yield proxy


@dataclasses.dataclass
class Epoch:
    delivered: dict[str, torch.Tensor]  # file name -> image
    errors: dict[str, int]
    seconds: float
    max_stall_s: float  # the longest wait for a batch


def _index(urls: list[str], tmp_path: Path) -> Path:
    path = tmp_path / "index.parquet"
    pq.write_table(pa.table({"image": urls, "caption": [f"c{i}" for i in range(len(urls))]}), path)
    return path


def _epoch(index: Path, cache_dir: Path, during=None, num_workers: int = 2, **options) -> Epoch:
    """One epoch of ``build_image_graph`` through ``StatefulDataLoader(num_workers)``;
    ``during()`` runs after the first batch (an outage starts there); ``options``:
    FetchOptions fields."""
    options = {"max_in_flight": 4, "retries": DEFAULT_RETRIES, **options}  # retries: the storage
    args = dict(  # default, see the xfail below
        size=SIZE, batch_size=4, cache=CacheOptions(str(cache_dir)), num_threads=2,
        fetch=FetchOptions(**options), shuffle=False,
    )  # fmt: skip
    ds = StreamingDataset(functools.partial(build_image_graph, index, **args))
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=num_workers)
    delivered: dict[str, torch.Tensor] = {}
    start = last = time.monotonic()
    stall = 0.0
    for i, batch in enumerate(loader):
        now = time.monotonic()
        stall, last = max(stall, now - last), now
        for url, image in zip(batch["__url__.image"], batch["image"]):
            name = url.rsplit("/", 1)[-1]
            assert name not in delivered, f"{name} delivered twice"
            delivered[name] = image
        if i == 0 and during is not None:
            during()
            last = time.monotonic()
    return Epoch(delivered, error_stats(loader.state_dict()), time.monotonic() - start, stall)


def _assert_nothing_lost(epoch: Epoch, decoded: dict[str, torch.Tensor]) -> None:
    assert epoch.errors == {}, epoch.errors
    assert sorted(epoch.delivered) == sorted(decoded), (
        f"{len(epoch.delivered)} of {len(decoded)} delivered"
    )
    torn = [n for n, image in epoch.delivered.items() if not torch.equal(image, decoded[n])]
    assert not torn, f"delivered bytes differ from the source: {torn}"


#: Each fault of the suite, as a rule of servers.http / servers.proxy for one file. A timeout of
#: 2 s per attempt (``timeout=2`` below) turns the 4 s stall into a timed-out attempt.
FAULTS = {
    "500": {"fail_next": 1, "status": 500},
    "502": {"fail_next": 2, "status": 502},
    "503+Retry-After": {"fail_next": 1, "status": 503, "retry_after": 1},
    "429+Retry-After": {"fail_next": 1, "status": 429, "retry_after": 1},
    "reset": {"reset_next": 1, "after_bytes": 100},
    "reset-before-body": {"reset_next": 1, "after_bytes": 0},
    "short-body": {"short_next": 1},
    "slow-body": {"rate_bps": 8000, "count": 1},
    "stalled-headers": {"delay_s": 4, "count": 1},
}
_FIGURES: dict[str, list] = {"injected": [], "lost": [], "stall": []}


def _injections(faults: dict[str, str]) -> int:
    """How many answers the rules given to ``faults``' files spoil."""
    keys = ("fail_next", "reset_next", "short_next", "count")
    return sum(next(FAULTS[f][k] for k in keys if k in FAULTS[f]) for f in faults.values())


def _inject(server, names: list[str], seed: int) -> dict[str, str]:
    """Give two files of ``names`` each fault (a seeded choice): which fault each got."""
    rng = random.Random(seed)
    chosen = rng.sample(names, 2 * len(FAULTS))
    out = {}
    for i, name in enumerate(chosen):
        fault = list(FAULTS)[i % len(FAULTS)]
        server.faults(path=f"/{name}", **FAULTS[fault])
        out[name] = fault
    return out


def _assert_retry_after_honoured(server, paths: dict[str, str], prefix: str) -> None:
    for name, fault in paths.items():
        if "Retry-After" not in fault:
            continue
        stats = server.stats(f"{prefix}/{name}")
        i = next(i for i, code in enumerate(stats["statuses"]) if code in (429, 503))
        gap = stats["times"][i + 1] - stats["times"][i]
        assert gap >= 0.95, f"{name}: asked to wait 1 s, came back after {gap:.2f} s"


def _record(name: str, injected: int, lost: int, epoch: Epoch) -> None:
    _FIGURES["injected"].append(injected)
    _FIGURES["lost"].append(lost)
    _FIGURES["stall"].append(epoch.max_stall_s)
    print(
        f"FIGURE faults-{name}: {injected} injected, {lost} lost, max stall "
        f"{epoch.max_stall_s:.1f} s, epoch {epoch.seconds:.1f} s"
    )


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    if _FIGURES["injected"]:
        print(
            f"\nFIGURE faults: {sum(_FIGURES['injected'])} injected, {sum(_FIGURES['lost'])} "
            f"lost, max stall {max(_FIGURES['stall']):.1f} s"
        )


@pytest.mark.parametrize("round_", range(scaled(1, 5)))
def test_http_faults_lose_nothing(http_server, http_dir, images, decoded, tmp_path, round_):
    for name, path in images.items():
        (http_dir.path / name).write_bytes(path.read_bytes())
    index = _index([http_dir.url_for(n) for n in images], tmp_path)
    faults = _inject(http_server, sorted(images), SEED + round_)
    epoch = _epoch(index, tmp_path / "cache", timeout=2.0)
    stats = http_server.stats()
    lost = NUM_IMAGES - len(epoch.delivered)
    _record(f"http-{round_}", stats["injected"], lost, epoch)
    _assert_nothing_lost(epoch, decoded)
    assert stats["injected"] == _injections(faults)
    # retries bounded: each spoilt answer costs one more request, never more
    assert NUM_IMAGES <= stats["get"] <= NUM_IMAGES + stats["injected"], stats["get"]
    _assert_retry_after_honoured(http_server, faults, http_dir.url)


@pytest.mark.parametrize("round_", range(scaled(1, 3)))
def test_s3_faults_through_the_proxy_lose_nothing(
    s3_server, s3_bucket, s3_proxy, images, decoded, tmp_path, round_
) -> None:
    fs = s3_server.fs()
    for name, path in images.items():
        fs.put_file(str(path), f"{s3_bucket}/{name}")
    index = _index([f"{s3_bucket}/{n}" for n in images], tmp_path)
    bucket = s3_bucket[len("s3://") :]
    faults = _inject(s3_proxy, sorted(images), SEED + 100 + round_)
    epoch = _epoch(index, tmp_path / "cache", storage_options=s3_proxy.storage_options, timeout=2.0)
    stats = s3_proxy.stats()
    _record(f"s3-{round_}", stats["injected"], NUM_IMAGES - len(epoch.delivered), epoch)
    _assert_nothing_lost(epoch, decoded)
    assert stats["injected"] == _injections(faults)
    # botocore retries inside each of our attempts: still one more request per spoilt answer
    gets = sum(v["get"] for k, v in stats["paths"].items() if k.startswith(f"/{bucket}/"))
    assert NUM_IMAGES <= gets <= NUM_IMAGES + stats["injected"], gets


# ------------------------------------------------------------------------------ outages
OUTAGE_S = 5.0


class _Outage:
    """Stop ``server`` for ``seconds`` in a thread of its own, then start it on the same port.

    A test server dies with the thread that started it (``PR_SET_PDEATHSIG``), so the thread
    that restarts it lives on until :meth:`close`, which stops the server first and lets the
    main thread start it again.
    """

    def __init__(self, server, seconds: float, pause: bool = False) -> None:
        self.server, self.seconds, self.pause = server, seconds, pause
        self.back = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.pause:
            self.server.pause()
            time.sleep(self.seconds)
            self.server.resume()
        else:
            self.server.stop()
            time.sleep(self.seconds)
            self.server.start()
        self.back.set()
        self._done.wait()

    def close(self) -> None:
        if self._thread is None:
            return
        self.back.wait(timeout=60)
        if not self.pause:
            self.server.stop()  # it would die with the thread that started it
        self._done.set()
        self._thread.join(timeout=10)
        self.server.ensure_running()


@pytest.mark.parametrize("kind", ["stopped", "paused"] if LONG else ["stopped"])
def test_http_outage_of_5_s_mid_epoch_loses_nothing(
    http_server, http_dir, images, decoded, tmp_path, kind
) -> None:
    for name, path in images.items():
        (http_dir.path / name).write_bytes(path.read_bytes())
    index = _index([http_dir.url_for(n) for n in images], tmp_path)
    http_server.faults(delay_s=0.4)  # every answer: the epoch is still downloading at batch 1
    outage = _Outage(http_server, OUTAGE_S, pause=kind == "paused")
    try:
        epoch = _epoch(index, tmp_path / "cache", during=outage, max_in_flight=2)
        assert outage.back.is_set(), "the epoch ended before the server came back"
        after = http_server.stats()["get"]
    finally:
        outage.close()
    _record(f"outage-http-{kind}", 1, NUM_IMAGES - len(epoch.delivered), epoch)
    _assert_nothing_lost(epoch, decoded)
    if kind == "stopped":  # stats restart with the server: these came after the outage
        assert after > 0, "no download was pending during the outage: it tested nothing"
    print(f"FIGURE outage-http-{kind}: {OUTAGE_S:.0f} s, {len(epoch.delivered)} of 40 delivered")


@pytest.mark.skipif(not LONG, reason="15 s: in the long run (SDS_FAULTS=long) only")
def test_s3_outage_of_5_s_mid_epoch_loses_nothing(
    s3_server, s3_bucket, s3_proxy, images, decoded, tmp_path
) -> None:
    fs = s3_server.fs()
    for name, path in images.items():
        fs.put_file(str(path), f"{s3_bucket}/{name}")
    index = _index([f"{s3_bucket}/{n}" for n in images], tmp_path)
    s3_proxy.faults(delay_s=0.4)
    outage = _Outage(s3_proxy, OUTAGE_S)
    try:
        epoch = _epoch(
            index, tmp_path / "cache", during=outage, max_in_flight=2,
            storage_options=s3_proxy.storage_options,
        )  # fmt: skip
        assert outage.back.is_set(), "the epoch ended before the proxy came back"
        after = s3_proxy.stats()["get"]
    finally:
        outage.close()
    _record("outage-s3", 1, NUM_IMAGES - len(epoch.delivered), epoch)
    _assert_nothing_lost(epoch, decoded)
    assert after > 0, "no download was pending during the outage: it tested nothing"
    print(f"FIGURE outage-s3: {OUTAGE_S:.0f} s, {len(epoch.delivered)} of 40 delivered")
