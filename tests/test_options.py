"""The option groups (sdsnodes.options): validation, the old keywords they replaced (deprecated
for one release), and that each setting reaches the node that uses it."""

from __future__ import annotations

import pickle
import socket
import time

import pyarrow as pa
import pytest
from torchdata.nodes import Loader

from sdsnodes import (
    CacheOptions,
    CachingDownloader,
    Decoder,
    DownloadError,
    ErrorOptions,
    FetchOptions,
    IndexReader,
    RangeReader,
    build_image_graph,
    build_video_graph,
)
from sdsnodes._synthetic import write_image
from sdsnodes.cache import EvictionPolicy
from sdsnodes.errors import OnError
from sdsnodes.nodes.graph import iter_nodes, shutdown
from sdsnodes.options import DEFAULT_MAX_IN_FLIGHT
from sdsnodes.presets import IMAGE_MAX_IN_FLIGHT


def node_of(graph, kind):
    (node,) = [n for n in iter_nodes(graph) if isinstance(n, kind)]
    return node


def closed_port_url() -> str:
    """An HTTP URL on 127.0.0.1 where nothing listens: every attempt is refused (transient)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/a.bin"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: CacheOptions(max_bytes=0), "max_bytes=0 must be an int > 0"),
        (lambda: CacheOptions(max_bytes=1.5), "max_bytes"),
        (lambda: CacheOptions(ttl=0), "ttl=0"),
        (lambda: CacheOptions(policy="fifo"), r"policy='fifo' must be one of \['keepset', 'lru'\]"),
        (lambda: CacheOptions(cache_dir=3), "cache_dir"),
        (lambda: FetchOptions(retries=-1), "retries=-1 must be an int >= 0"),
        (lambda: FetchOptions(retries=True), "retries"),
        (lambda: FetchOptions(timeout=0), "timeout=0 must be None or > 0"),
        (lambda: FetchOptions(deadline_s=-1.0), "deadline_s=-1.0"),
        (lambda: FetchOptions(max_in_flight=0), "max_in_flight=0 must be an int >= 1"),
        (lambda: FetchOptions(storage_options="anon"), "storage_options='anon' must be a dict"),
        (lambda: ErrorOptions(on_error="ignore"), r"on_error='ignore' must be one of \['raise'"),
        (lambda: ErrorOptions(max_error_rate=1.5), "max_error_rate=1.5 must be in"),
    ],
)
def test_a_bad_option_fails_when_the_group_is_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_groups_are_frozen_normalized_and_picklable():
    cache = CacheOptions("/tmp/c", max_bytes=10, policy="lru", ttl=60)
    assert cache.policy is EvictionPolicy.LRU
    assert ErrorOptions("raise").on_error is OnError.RAISE
    secret = {"key": "AKIA", "secret": "hunter2"}
    fetch = FetchOptions(secret, max_in_flight=3)
    assert fetch.storage_options == secret and fetch.storage_options is not secret
    assert "hunter2" not in repr(fetch)  # credentials stay out of logs and errors
    with pytest.raises(AttributeError):
        fetch.retries = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(fetch)) == fetch  # graphs travel to spawned workers


@pytest.fixture
def url_index(http_dir):
    urls = []
    for i in range(6):
        write_image(http_dir.path / f"{i}.png", width=24 + i, height=20, seed=i)
        urls.append(http_dir.url_for(f"{i}.png"))
    return pa.table({"image": urls, "caption": [f"c{i}" for i in range(6)]})


def test_old_preset_keywords_warn_and_build_the_same_graph(url_index, tmp_path):
    kw = dict(size=16, batch_size=3, shuffle=False, num_threads=2)
    with pytest.warns(DeprecationWarning) as caught:
        old = build_image_graph(
            url_index, cache_dir=str(tmp_path / "c"), max_bytes=10**6, storage_options={},
            download_threads=2, retries=3, timeout=9.0, on_error="raise", max_error_rate=0.2,
            **kw,
        )  # fmt: skip
    (warning,) = caught
    message = str(warning.message)
    assert warning.filename == __file__  # points at the caller
    for replacement in (
        "cache=CacheOptions(cache_dir=..., max_bytes=...)",
        "fetch=FetchOptions(storage_options=..., max_in_flight=..., retries=..., timeout=...)",
        "errors=ErrorOptions(on_error=..., max_error_rate=...)",
    ):
        assert replacement in message, message
    new = build_image_graph(
        url_index, cache=CacheOptions(str(tmp_path / "c"), max_bytes=10**6),
        fetch=FetchOptions({}, retries=3, timeout=9.0, max_in_flight=2),
        errors=ErrorOptions("raise", max_error_rate=0.2), **kw,
    )  # fmt: skip
    got, want = node_of(old, CachingDownloader), node_of(new, CachingDownloader)
    assert (got.cache, got.fetch) == (want.cache, want.fetch)
    assert got.errors.on_error is OnError.RAISE and got.errors.max_error_rate == 0.2
    assert node_of(old, Decoder).errors.on_error is OnError.RAISE
    old_batches, new_batches = list(Loader(old)), list(Loader(new))
    assert [b["__key__"] for b in old_batches] == [b["__key__"] for b in new_batches]
    for a, b in zip(old_batches, new_batches):
        assert a["image"].equal(b["image"])
    shutdown(old), shutdown(new)


def test_an_old_keyword_keeps_the_presets_own_default_group(url_index, tmp_path):
    # the image preset fetches IMAGE_MAX_IN_FLIGHT samples ahead; an old keyword keeps that
    window = IMAGE_MAX_IN_FLIGHT
    with pytest.warns(DeprecationWarning, match="fetch=FetchOptions"):
        graph = build_image_graph(url_index, cache_dir=str(tmp_path), retries=2)
    assert node_of(graph, CachingDownloader).fetch == FetchOptions(retries=2, max_in_flight=window)
    default = build_image_graph(url_index, cache=CacheOptions(str(tmp_path)))
    assert node_of(default, CachingDownloader).fetch.max_in_flight == window


def test_a_window_left_unset_is_the_presets_or_the_nodes_own(url_index, tmp_path):
    # FetchOptions(storage_options) for credentials must not cost the image preset its window
    cache = CacheOptions(str(tmp_path))
    assert IMAGE_MAX_IN_FLIGHT > DEFAULT_MAX_IN_FLIGHT
    for fetch in (None, FetchOptions({"anon": True}), FetchOptions(retries=3)):
        graph = build_image_graph(url_index, cache=cache, fetch=fetch)
        assert node_of(graph, CachingDownloader).fetch.max_in_flight == IMAGE_MAX_IN_FLIGHT
    mine = build_image_graph(url_index, cache=cache, fetch=FetchOptions(max_in_flight=3))
    assert node_of(mine, CachingDownloader).fetch.max_in_flight == 3
    video = build_video_graph(url_index, cache=cache, fetch=FetchOptions({"anon": True}),
                              video_column="image", caption_column=None)  # fmt: skip
    assert node_of(video, CachingDownloader).fetch.max_in_flight == DEFAULT_MAX_IN_FLIGHT
    reader = IndexReader(pa.table({"v": ["http://127.0.0.1:1/a.mp4"]}))
    node = CachingDownloader(reader, ["v"], cache=cache, fetch=FetchOptions(retries=1))
    assert node.fetch == FetchOptions(retries=1, max_in_flight=DEFAULT_MAX_IN_FLIGHT)
    assert FetchOptions().max_in_flight is None
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="max_in_flight=.* or None"):
            FetchOptions(max_in_flight=bad)


def test_old_node_keywords_warn_and_land_in_the_groups(tmp_path):
    reader = IndexReader(pa.table({"v": ["http://127.0.0.1:1/a.mp4"]}))
    with pytest.warns(DeprecationWarning, match=r"fetch=FetchOptions\(max_in_flight=\.\.\.\)"):
        node = CachingDownloader(
            reader, ["v"], cache_dir=str(tmp_path), policy="lru", num_threads=3, on_error="raise"
        )
    assert node.cache == CacheOptions(str(tmp_path), policy="lru")
    assert node.fetch == FetchOptions(max_in_flight=3)
    assert node.errors.on_error is OnError.RAISE
    with pytest.warns(DeprecationWarning, match="CacheOptions"):
        ranged = RangeReader(reader, ["v"], cache_dir=str(tmp_path), num_threads=2)
    assert ranged.fetch.max_in_flight == ranged.num_threads == 2
    with pytest.warns(DeprecationWarning, match="errors=ErrorOptions"):
        decoder = Decoder(reader, {"v": len}, num_threads=2, max_error_rate=1.0)
    assert decoder.num_threads == 2 and decoder.errors.max_error_rate == 1.0


def test_an_old_keyword_beside_its_group_is_refused(tmp_path):
    reader = IndexReader(pa.table({"v": ["http://127.0.0.1:1/a.mp4"]}))
    with pytest.raises(ValueError, match=r"max_bytes= and cache= both given.*cache=CacheOptions"):
        CachingDownloader(reader, ["v"], cache=CacheOptions(str(tmp_path)), max_bytes=10)
    with pytest.raises(ValueError, match="download_threads= and fetch= both given"):
        build_video_graph(reader.index.table, fetch=FetchOptions(), download_threads=2)
    with pytest.raises(TypeError, match=r"cache= takes a CacheOptions"):
        build_video_graph(reader.index.table, cache=str(tmp_path))
    with pytest.raises(TypeError, match="unexpected keyword argument 'cache_dir'"):
        Decoder(reader, {"v": len}, cache_dir=str(tmp_path))  # never had one


@pytest.mark.parametrize("partial_reads", [False, True])
def test_the_preset_hands_each_group_to_the_nodes_that_use_it(tmp_path, partial_reads):
    table = pa.table({"video": ["http://127.0.0.1:1/a.mp4"]})
    cache = CacheOptions(str(tmp_path), max_bytes=1 << 30, ttl=3600.0)
    fetch = FetchOptions(retries=2, deadline_s=5.0, max_in_flight=4)  # None: filled in, a copy
    errors = ErrorOptions(max_error_rate=0.9)
    graph = build_video_graph(
        table, partial_reads=partial_reads, caption_column=None, cache=cache, fetch=fetch,
        errors=errors,
    )  # fmt: skip
    remote = node_of(graph, RangeReader if partial_reads else CachingDownloader)
    assert remote.cache is cache and remote.fetch is fetch
    assert remote.errors.max_error_rate == node_of(graph, Decoder).errors.max_error_rate == 0.9


@pytest.mark.parametrize("streaming", [False, True], ids=["random-access", "streaming"])
def test_deadline_s_ends_the_retries_of_a_download(tmp_path, streaming):
    url = closed_port_url()
    fetch = FetchOptions(retries=10_000, deadline_s=0.4, timeout=2.0)
    node = CachingDownloader(
        IndexReader(pa.table({"file": [url]})), ["file"], cache=CacheOptions(str(tmp_path)),
        fetch=fetch, errors=ErrorOptions("raise"),
    )  # fmt: skip
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"the 0\.4 s deadline"):
        if streaming:
            list(Loader(node))
        else:
            node.process({"file": url})
    assert time.monotonic() - start < 5
    node.shutdown()


def test_without_a_deadline_the_retries_bound_the_attempts(tmp_path):
    url = closed_port_url()
    node = CachingDownloader(
        IndexReader(pa.table({"file": [url]})), ["file"], cache=CacheOptions(str(tmp_path)),
        fetch=FetchOptions(retries=2, deadline_s=None), errors=ErrorOptions("raise"),
    )  # fmt: skip
    with pytest.raises(DownloadError, match="failed after 3 attempts.*2 retries"):
        node.process({"file": url})


def test_deadline_s_ends_the_retries_of_a_range_read(http_server, http_dir, tmp_path):
    (http_dir.path / "v.bin").write_bytes(b"x" * 10_000)
    http_server.faults(fail_next=10_000, status=503, path="v.bin")  # every GET; HEADs answer
    node = RangeReader(
        IndexReader(pa.table({"v": ["x"]})), ["v"], block_size=4096,
        cache=CacheOptions(str(tmp_path)),
        fetch=FetchOptions(retries=10_000, deadline_s=0.4, timeout=2.0),
    )  # fmt: skip
    with node.open(http_dir.url_for("v.bin")) as file:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"the 0\.4 s deadline"):
            file.read(100)
    assert time.monotonic() - start < 5
    http_server.clear_faults()


def test_index_options_are_frozen_normalized_and_picklable():
    import pyarrow.compute as pc

    from sdsnodes.options import IndexOptions

    rename = {"text": "caption"}
    index = IndexOptions(filter=pc.field("score") > 2, rename=rename, key_column="id", max_rows=5)
    assert index.rename == rename and index.rename is not rename
    with pytest.raises(AttributeError):
        index.max_rows = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(index)) == index  # graphs travel to spawned workers
    assert IndexOptions().merged("IndexReader", lazy=False, filter=None) == IndexOptions(lazy=False)
