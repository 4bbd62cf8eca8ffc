"""``bench_peers --task s3``: the bound (server CPU per GET, from the real moto process) and a
slow smoke run of the task. No speed is asserted (house rule: figures live in benchmarks/)."""

import os
import subprocess
import sys

import psutil
import pytest
from servers.s3 import ForkedS3Server

from benchmarks._peers_s3 import get_bound, get_ceiling, server_cpu
from tests.test_benchmarks_remote import ROOT


def test_bound_is_server_cpu_per_get_over_the_cores(s3_server):
    fs = s3_server.fs()
    bucket = s3_server.make_bucket("sds-peers-s3-bound")
    keys = [f"{bucket}/k{i}" for i in range(40)]
    fs.pipe({key: b"x" * 1000 for key in keys})
    ms_per_get, bound = get_bound(s3_server, keys)
    assert ms_per_get > 0
    assert bound == pytest.approx((os.cpu_count() or 1) * 1000 / ms_per_get)


def test_ceiling_downloads_every_key_through_our_get_path(s3_server, tmp_path):
    fs = s3_server.fs()
    bucket = s3_server.make_bucket("sds-peers-s3-ceiling")
    keys = [f"{bucket}/k{i}" for i in range(100)]  # more than the 64 kept in flight
    fs.pipe({key: bytes([i % 256]) * (1000 + i) for i, key in enumerate(keys)})
    rate, cores = get_ceiling(s3_server, keys, tmp_path / "got")
    assert rate > 0 and cores > 0
    for i in range(len(keys)):
        assert (tmp_path / "got" / str(i)).read_bytes() == bytes([i % 256]) * (1000 + i)


def test_server_cpu_counts_every_process_of_a_split_server():
    keys = [f"sds-peers-s3-forked/k{i}" for i in range(40)]
    with ForkedS3Server(processes=2) as server:
        server.make_bucket("sds-peers-s3-forked")
        server.fs().pipe({key: b"x" * 1000 for key in keys})
        server.split()
        for _ in range(30):  # until the forked process has served a share of the GETs
            ms_per_get, _ = get_bound(server, keys)
            each = [sum(psutil.Process(pid).cpu_times()[:2]) for pid in server.pids]
            if min(each) > 0.05:
                break
        assert len(each) == 2 and min(each) > 0.05 and ms_per_get > 0
        assert server_cpu(server) == pytest.approx(sum(each), abs=0.02)


@pytest.mark.slow  # a benchmark smoke run (~1 min): SDS_SLOW=1
def test_peers_s3_quick_prints_every_reader_and_the_bound(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_peers", "--task", "s3", "--quick",
         "--dir", str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for name in ("LitData (its chunks, s3://)", "WebDataset (its tars, HTTP from moto)",
                 "mosaicml-streaming (its MDS shards, s3://)", "sdsnodes packed shards (s3://)",
                 "sdsnodes (raw files, s3://)"):  # fmt: skip
        assert name in out
    assert (
        "x the bound" in out and "x the ceiling" in out and "delivered" not in out
    )  # every reader gave every sample
    assert f"in {os.cpu_count()} process(es)" in out  # moto split onto the cores by default
