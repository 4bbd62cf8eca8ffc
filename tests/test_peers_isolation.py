"""``benchmarks._peers.in_fresh_process``: a measure runs in a spawned child; a child that hangs
is killed with its descendants after ``CHILD_TIMEOUT_S`` and reported, so one hung loader does not
stall the whole benchmark; and the peak-PSS reader, which must not count shared pages twice
while workers fork."""

import os
import time

import psutil
import pytest

from benchmarks import _peers


def _sleep_with_a_child(seconds: float) -> int:
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(seconds,))
    child.start()
    with open(os.environ["SDS_TEST_PID_FILE"], "w") as out:
        out.write(f"{os.getpid()} {child.pid}")
    time.sleep(seconds)
    return 0


def test_a_result_comes_back():
    assert _peers.in_fresh_process(divmod, 7, 2) == (3, 1)


def test_an_error_in_the_child_is_raised_with_its_message():
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        _peers.in_fresh_process(divmod, 1, 0)


def test_a_hung_child_and_its_workers_are_killed_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(_peers, "CHILD_TIMEOUT_S", 8.0)  # the child's imports take a few s
    pid_file = tmp_path / "pids"
    monkeypatch.setenv("SDS_TEST_PID_FILE", str(pid_file))
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no result within 8 s"):
        _peers.in_fresh_process(_sleep_with_a_child, 120.0)
    assert time.monotonic() - start < 60
    pids = [int(p) for p in pid_file.read_text().split()]
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids):
        assert time.monotonic() < deadline, f"still running: {pids}"
        time.sleep(0.1)


def test_tree_pss_reads_again_when_a_fork_happens_during_the_read(monkeypatch):
    # a worker forked after the tree was listed: the parent's read already splits the pages it
    # now shares (500 of 800) while the child is missing; the read is refused and made again
    listings = iter([[10], [10, 11], [10, 11], [10, 11]])
    reads = {10: iter([500, 500]), 11: iter([300])}
    monkeypatch.setattr(_peers, "tree_pids", lambda pid: next(listings))
    monkeypatch.setattr(_peers, "pss_kib", lambda pid: next(reads[pid]))
    assert _peers.tree_pss_kib(10) == 800


def test_tree_pss_sums_this_process_and_its_children():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while child.pid not in _peers.tree_pids(os.getpid()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _peers.tree_pss_kib(os.getpid()) > _peers.pss_kib(os.getpid()) > 0
    finally:
        child.kill()
        child.wait()
