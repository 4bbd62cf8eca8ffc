"""Tests of ``Cache.claim`` / ``Cache.finish``: the batch API that CachingDownloader downloads
through. Real files, a real SQLite ledger, real threads and a real forked process."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pathlib
import sqlite3

import pytest

from sdsnodes.cache import Cache, paths
from sdsnodes.cache.store import BUSY, NO_ROOM, Claim

URL = "s3://bucket/a.bin"


def ledger_rows(root: pathlib.Path) -> dict[str, tuple[str, int]]:
    """``{url: (state, size)}`` of every row of the ledger's ``files`` table."""
    conn = sqlite3.connect(root / "ledger.sqlite")
    try:
        return {url: (state, size) for url, state, size in conn.execute(
            "SELECT url, state, size FROM files"
        )}  # fmt: skip
    finally:
        conn.close()


def pins(root: pathlib.Path) -> list[tuple[str, int]]:
    """(key, count) of every pin in the ledger, all processes together."""
    conn = sqlite3.connect(root / "ledger.sqlite")
    try:
        return conn.execute("SELECT key, count FROM pins").fetchall()
    finally:
        conn.close()


def tmp_files(root: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in root.rglob("*.tmp") if p.is_file()]


def download(cache: Cache, url: str, size: int) -> pathlib.Path:
    """Claim ``url``, write ``size`` bytes into the claim and finish it: the pinned path."""
    (claim,) = cache.claim([(url, size)])
    assert isinstance(claim, Claim)
    claim.tmp.write_bytes(b"x" * size)
    assert cache.finish([(claim, None)]) == [size]
    return claim.path


def test_miss_claim_write_finish_then_hit(tmp_path):
    root = tmp_path / "c"
    with Cache(root, max_bytes=10_000) as cache:
        (claim,) = cache.claim([(URL, 5)])
        assert isinstance(claim, Claim)
        assert (claim.url, claim.reserved) == (URL, 5)
        assert claim.path == cache.path_for(URL)
        assert claim.tmp.parent == claim.path.parent and claim.tmp.name.endswith(".tmp")
        assert not claim.path.exists()
        assert ledger_rows(root) == {URL: ("reserved", 5)}

        claim.tmp.write_bytes(b"hello world")  # 11 bytes: more than the hint
        assert cache.finish([(claim, None)]) == [11]
        assert claim.path.read_bytes() == b"hello world" and not claim.tmp.exists()
        assert ledger_rows(root) == {URL: ("ready", 11)}
        stats = cache.stats()
        assert (stats["files"], stats["bytes"], stats["pinned_files"]) == (1, 11, 1)
        assert (stats["hits"], stats["misses"]) == (0, 1)

        assert cache.claim([(URL, 11)]) == [claim.path]  # a hit, pinned a second time
        assert cache.stats()["hits"] == 1
        cache.unpin(URL)
        assert cache.stats()["pinned_files"] == 1
        cache.unpin(URL)
        assert cache.stats()["pinned_files"] == 0
        with pytest.raises(ValueError, match="does not pin"):
            cache.unpin(URL)
        assert claim.path.read_bytes() == b"hello world"  # unpinned, still cached
        assert cache.claim([(URL, None)]) == [claim.path]


def test_claim_answers_in_order_for_a_mixed_batch(tmp_path):
    with Cache(tmp_path, max_bytes=10_000) as cache:
        hit = download(cache, "s3://b/hit", 7)
        answers = cache.claim([("s3://b/new1", 3), ("s3://b/hit", 7), ("s3://b/new2", None)])
        assert isinstance(answers[0], Claim) and answers[0].url == "s3://b/new1"
        assert answers[1] == hit
        # no size: the largest file the directory has held (7 bytes) is reserved
        assert isinstance(answers[2], Claim) and answers[2].reserved == 7
        with pytest.raises(ValueError, match="must be None or >= 0"):
            cache.claim([("s3://b/neg", -1)])
        assert "s3://b/neg" not in ledger_rows(tmp_path)
        answers[0].tmp.write_bytes(b"abc")
        answers[2].tmp.write_bytes(b"abcdef")
        assert cache.finish([(answers[0], None), (answers[2], None)]) == [3, 6]


@pytest.fixture(params=["ranges", "files"])
def key_locks(request, monkeypatch):
    """Both kinds of key locks: byte ranges of ``.locks/keys.lock`` (Linux) and a ``flock`` file
    per key (where the kernel refuses ranges)."""
    monkeypatch.setattr(paths, "_RANGE_WORKS", {})
    if request.param == "files":
        monkeypatch.setattr(paths, "RANGE_LOCKS", False)
    return request.param


def test_busy_while_a_claim_is_unfinished(tmp_path, key_locks):
    root = tmp_path / "c"
    cache = Cache(root)
    other = Cache(root)  # another object on the same directory, as another worker would have
    (claim,) = cache.claim([(URL, 4)])
    assert isinstance(claim, Claim)
    assert cache.claim([(URL, 4)]) == [BUSY]  # even the same Cache: the lock is per claim
    busy, free = other.claim([(URL, 4), ("s3://b/free", 1)])
    assert busy == BUSY and isinstance(free, Claim)  # a BUSY item does not block the next
    assert other.finish([(free, ValueError("not needed"))]) == [None]

    fetched = []

    def fetch(tmp):
        fetched.append(tmp)
        tmp.write_bytes(b"from get")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(other.get, URL, fetch, 4)
        done, _ = concurrent.futures.wait([waiter], timeout=0.3)
        assert not done, "Cache.get did not wait for the unfinished claim"
        claim.tmp.write_bytes(b"data")
        assert cache.finish([(claim, None)]) == [4]
        path = waiter.result(timeout=10)
    assert path == claim.path and path.read_bytes() == b"data"
    assert fetched == []  # the claim's file, not a second download
    assert cache.claim([(URL, 4)]) == [path]
    assert dict(pins(root))[claim.key] == 3  # the claim, other.get and the last hit
    cache.close()
    other.close()
    assert pins(root) == []
    kept = {
        "ranges": ["keys.lock", "open.lock", "users.lock"],
        "files": ["open.lock", "users.lock"],
    }
    assert sorted(p.name for p in (root / ".locks").iterdir()) == kept[key_locks]


def test_busy_while_get_downloads(tmp_path):
    with Cache(tmp_path) as cache, concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = concurrent.futures.Future()
        release = concurrent.futures.Future()

        def fetch(tmp):
            started.set_result(None)
            release.result(timeout=10)
            tmp.write_bytes(b"12345")

        getter = pool.submit(cache.get, URL, fetch, 5)
        started.result(timeout=10)
        assert cache.claim([(URL, 5)]) == [BUSY]
        release.set_result(None)
        path = getter.result(timeout=10)
        assert cache.claim([(URL, 5)]) == [path]


def test_no_room_keeps_window_order(tmp_path):
    root = tmp_path / "c"
    with Cache(root, max_bytes=250) as cache:
        urls = [f"s3://b/{i}" for i in range(4)]
        answers = cache.claim(list(zip(urls, [100, 100, 100, 10])))
        assert [type(a) for a in answers[:2]] == [Claim, Claim]
        assert answers[2:] == [NO_ROOM, NO_ROOM]  # 10 bytes would fit: the order holds
        assert set(ledger_rows(root)) == set(urls[:2])  # nothing reserved for NO_ROOM
        (late,) = cache.claim([(urls[2], 0)])  # NO_ROOM kept no lock: claimable (0 bytes fit)
        assert isinstance(late, Claim)
        failed = [(late, None)] + [(a, ValueError("cancelled")) for a in answers[:2]]
        assert cache.finish(failed) == [None, None, None]  # late wrote nothing
        assert ledger_rows(root) == {}


def test_hits_after_no_room_are_still_hits(tmp_path):
    with Cache(tmp_path, max_bytes=250) as cache:
        hit = download(cache, "s3://b/hit", 50)
        answers = cache.claim([("s3://b/big", 300), ("s3://b/hit", 50), ("s3://b/small", 1)])
        assert answers == [NO_ROOM, hit, NO_ROOM]


def test_unpinned_files_are_evicted_to_make_room(tmp_path):
    root = tmp_path / "c"
    with Cache(root, max_bytes=250) as cache:
        for i in range(2):
            download(cache, f"s3://b/old{i}", 100)
            cache.unpin(f"s3://b/old{i}")
        assert cache.stats()["bytes"] == 200
        answers = cache.claim([("s3://b/new0", 100), ("s3://b/new1", 100)])
        assert all(isinstance(a, Claim) for a in answers)
        assert cache.stats()["files"] == 0  # both old files evicted for 200 reserved bytes
        assert not any(cache.path_for(f"s3://b/old{i}").exists() for i in range(2))
        for claim in answers:
            claim.tmp.write_bytes(b"n" * 100)
        assert cache.finish([(a, None) for a in answers]) == [100, 100]

        # now 200 bytes are pinned: nothing can be evicted for another 100
        assert cache.claim([("s3://b/new2", 100)]) == [NO_ROOM]
        cache.unpin("s3://b/new0")
        (claim,) = cache.claim([("s3://b/new2", 100)])
        assert isinstance(claim, Claim)  # new0 was evicted for it
        assert not cache.path_for("s3://b/new0").exists()
        assert cache.finish([(claim, ValueError("cancelled"))]) == [None]


def test_reservations_count_in_the_budget(tmp_path):
    with Cache(tmp_path, max_bytes=250) as cache, Cache(tmp_path, max_bytes=250) as other:
        (first,) = cache.claim([("s3://b/a", 200)])
        assert isinstance(first, Claim)
        assert other.claim([("s3://b/b", 100)]) == [NO_ROOM]  # 200 reserved, not yet on disk
        cache.finish([(first, ValueError("download failed"))])
        assert isinstance(other.claim([("s3://b/b", 100)])[0], Claim)


def test_overshoot_claims_the_first_items_without_room(tmp_path):
    with Cache(tmp_path, max_bytes=250) as cache:
        download(cache, "s3://b/pinned", 250)  # the budget is full of a pinned file
        answers = cache.claim([("s3://b/x", 100), ("s3://b/y", 100)], overshoot=1)
        assert isinstance(answers[0], Claim) and answers[1] == NO_ROOM
        answers[0].tmp.write_bytes(b"o" * 100)
        assert cache.finish([(answers[0], None)]) == [100]
        assert cache.stats()["pinned_bytes"] == 350  # over max_bytes by the overshot file
        assert cache.claim([("s3://b/y", 100)]) == [NO_ROOM]  # without overshoot: no room


@pytest.mark.parametrize("how", ["error", "nothing written"])
def test_failed_finish_leaves_nothing(tmp_path, how):
    root = tmp_path / "c"
    with Cache(root, max_bytes=1000) as cache:
        ok, bad = cache.claim([("s3://b/ok", 10), (URL, 500)])
        ok.tmp.write_bytes(b"k" * 10)
        if how == "error":
            bad.tmp.write_bytes(b"half")
            sizes = cache.finish([(ok, None), (bad, OSError("connection reset"))])
        else:
            sizes = cache.finish([(ok, None), (bad, None)])  # no tmp: nothing was downloaded
        assert sizes == [10, None]
        assert tmp_files(root) == [] and not bad.path.exists()
        assert ledger_rows(root) == {"s3://b/ok": ("ready", 10)}
        assert [k for k, _ in pins(root)] == [ok.key]
        with pytest.raises(ValueError, match="does not pin"):
            cache.unpin(URL)
        assert cache.stats()["misses"] == 2
        (again,) = cache.claim([(URL, 900)])  # not BUSY, and its 500 bytes are free again
        assert isinstance(again, Claim)
        again.tmp.write_bytes(b"z" * 900)
        assert cache.finish([(again, None)]) == [900]
        assert again.path.read_bytes() == b"z" * 900


def _claim_and_die(cache: Cache, url: str) -> None:
    (answer,) = cache.claim([(url, 200)])
    if not isinstance(answer, Claim):
        os._exit(3)
    answer.tmp.write_bytes(b"half a download")
    os._exit(0)  # killed mid-download: no finish, no close


def test_a_dead_claimers_lock_and_reservation_are_reclaimed(tmp_path, key_locks):
    root = tmp_path / "c"
    cache = Cache(root, max_bytes=250)
    child = multiprocessing.get_context("fork").Process(target=_claim_and_die, args=(cache, URL))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert len(tmp_files(root)) == 1 and ledger_rows(root) == {URL: ("reserved", 200)}

    (other,) = cache.claim([("s3://b/other", 200)])  # fits only without the dead reservation
    assert isinstance(other, Claim)
    assert URL not in ledger_rows(root) and tmp_files(root) == []
    (mine,) = cache.claim([(URL, 50)])  # the dead child's lock went with it
    assert isinstance(mine, Claim)
    mine.tmp.write_bytes(b"m" * 50)
    other.tmp.write_bytes(b"o" * 200)
    assert cache.finish([(mine, None), (other, None)]) == [50, 200]
    assert mine.path.read_bytes() == b"m" * 50
    cache.close()
    assert pins(root) == []


def test_unknown_sizes_reserve_the_largest_file_held(tmp_path):
    with Cache(tmp_path, max_bytes=100) as cache:
        # nothing held yet: only the head may download, to learn a size
        first = cache.claim([("s3://b/a", None), ("s3://b/b", None)], overshoot=1)
        assert isinstance(first[0], Claim) and first[1] == NO_ROOM
        first[0].tmp.write_bytes(b"x" * 40)
        assert cache.finish([(first[0], None)]) == [40]
        # now each unknown size reserves 40 bytes: 40 held + 40 reserved, the third has no room
        answers = cache.claim([("s3://b/b", None), ("s3://b/c", None)])
        assert isinstance(answers[0], Claim) and answers[0].reserved == 40
        assert answers[1] == NO_ROOM
        cache.finish([(answers[0], OSError("gave up"))])
        cache.unpin("s3://b/a")


def test_unpinning_after_close_is_a_no_op(tmp_path):
    cache = Cache(tmp_path, max_bytes=1000)
    for _ in range(2):
        cache.get("s3://b/x", lambda tmp: tmp.write_bytes(b"x"))
    cache.close()  # releases both pins
    assert cache.stats()["pinned_files"] == 0
    cache.unpin("s3://b/x")  # a node shut down after its cache was closed
    cache.unpin("s3://b/x")
    with pytest.raises(ValueError, match="does not pin"):
        cache.unpin("s3://b/x")
    cache.close()


def _live_for(seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_a_release_does_not_wait_for_other_copies_of_the_lock(tmp_path, key_locks):
    """A forked child holds copies of the parent's lock descriptors until its after-fork hook
    closes them, and a loaded machine may run the parent first: the release must unlock the
    description itself, not rely on the last copy being closed. A ``dup`` plays the slow child."""
    root = tmp_path / "c"
    cache, other = Cache(root), Cache(root)
    (claim,) = cache.claim([(URL, 4)])
    copies = [os.dup(fd) for fd in paths._HELD]
    assert copies, "the claim holds no lock descriptor"
    try:
        claim.tmp.write_bytes(b"data")
        assert cache.finish([(claim, None)]) == [4]
        cache.discard(URL)
        (again,) = other.claim([(URL, 4)])
        assert isinstance(again, Claim), "a copy of the descriptor kept the released lock"
        assert other.finish([(again, ValueError("not needed"))]) == [None]
    finally:
        for fd in copies:
            os.close(fd)
    cache.close()
    other.close()


def test_a_forked_child_does_not_keep_its_parents_key_lock(tmp_path, key_locks):
    """The child shares the parent's lock descriptions after a fork; it closes its copies, so
    the parent's release takes effect while the child still lives."""
    root = tmp_path / "c"
    cache, other = Cache(root), Cache(root)
    (claim,) = cache.claim([(URL, 4)])
    child = multiprocessing.get_context("fork").Process(target=_live_for, args=(2.0,))
    child.start()
    try:
        assert other.claim([(URL, 4)]) == [BUSY]
        claim.tmp.write_bytes(b"data")
        assert cache.finish([(claim, None)]) == [4]
        assert child.is_alive()
        (hit,) = other.claim([("s3://b/next", 4)])  # a key never held: free
        assert isinstance(hit, Claim)
        assert other.finish([(hit, ValueError("not needed"))]) == [None]
        cache.discard(URL)  # unpinned and removed: the next claim must download it again
        (again,) = other.claim([(URL, 4)])
        assert isinstance(again, Claim), "the child kept the parent's lock of the key"
        assert other.finish([(again, ValueError("not needed"))]) == [None]
    finally:
        child.join(10)
    cache.close()
    other.close()
