"""sdsnodes.ray on a local Ray instance (127.0.0.1, 2 CPUs) started once for the module."""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from utils import json_roundtrip

ray = pytest.importorskip("ray")

import sdsnodes.ray as sds_ray  # noqa: E402
from sdsnodes import (  # noqa: E402
    Batcher,
    CacheOptions,
    ImageTensor,
    IndexOptions,
    IndexReader,
    Loader,
    Mapper,
    Prefetcher,
    collate,
)
from sdsnodes.cache import Cache  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Ray Data's own deprecation notices (e.g. DataContext's use_push_based_shuffle), not ours
pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance: loopback only, no dashboard, no usage report, a small object
    store, no prestarted workers; its workers import sdsnodes from this checkout."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("PYTHONPATH", path)  # inherited by the raylet and its workers
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
                 # no idle workers started with the cluster: they competed with its start-up
                 # (init 20-32 s instead of 39-53 s at a load average of 25-30 on 2 CPUs)
                 _system_config={"enable_worker_prestart": False})  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    gc.collect()  # Ray Data iterators left by the tests finish while Ray is still up
    ray.shutdown()


def test_read_index_gives_the_index_readers_rows(ray_cluster, image_index):
    options = IndexOptions(filter="caption is not None", rename={"image": "picture"}, max_rows=9)
    rows = sds_ray.read_index(image_index, index=options, name="img", block_rows=4).take_all()
    index = IndexReader(image_index, name="img", index=options).index
    expected = [index.sample(i) for i in range(len(index))]
    assert len(rows) == len(expected) == 9
    for row, sample in zip(rows, expected):
        assert row["__key__"] == sample["__key__"] and row["__index__"] == sample["__index__"]
        assert (row["picture"], row["caption"]) == (sample["picture"], sample["caption"])


def test_decode_batches_local_and_cached_remote_files(ray_cluster, image_index, http_dir, tmp_path):
    paths = pq.read_table(image_index).column("image").to_pylist()[:5]
    for p in paths[3:]:
        shutil.copy(p, http_dir.path / Path(p).name)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a jpeg")
    column = paths[:3] + [http_dir.url_for(Path(p).name) for p in paths[3:]] + [str(corrupt)]
    cache_dir = tmp_path / "cache"
    codec = ImageTensor(size=(24, 32))
    decode = sds_ray.decode_batches({"image": codec}, cache=CacheOptions(cache_dir))
    ds = sds_ray.read_index(pa.table({"image": column})).map_batches(
        decode, batch_format="numpy", batch_size=3
    )
    got = {}
    for batch in ds.select_columns(["image", "__index__"]).iter_torch_batches(batch_size=4):
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 24, 32)
        got.update(zip(batch["__index__"].tolist(), batch["image"]))
    assert sorted(got) == [0, 1, 2, 3, 4]  # the corrupt file is skipped
    for i, path in enumerate(paths):
        assert torch.equal(got[i], codec(path))
    assert Cache(cache_dir).stats()["files"] == 2  # the two URLs went through the cache


def test_ray_source_gives_equal_disjoint_splits_every_epoch(ray_cluster):
    import threading

    ds = ray.data.from_items([{"x": np.full(3, i, np.int64), "id": i} for i in range(10)])
    splits = ds.streaming_split(2, equal=True)
    seen: dict[int, list] = {}

    def rank(r: int) -> None:
        graph = Prefetcher(Mapper(Batcher(sds_ray.RaySource(splits[r]), 5), collate), 2)
        loader = Loader(graph)
        seen[r] = [[(b["x"].shape, b["id"].tolist(), b["__epoch__"].tolist()) for b in loader]
                   for _ in range(2)]  # fmt: skip

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for epoch in range(2):
        ids = []
        for r in range(2):
            ((shape, batch_ids, epochs),) = seen[r][epoch]  # one batch of 5 per rank
            assert shape == (5, 3) and epochs == [epoch] * 5
            ids += batch_ids
        assert sorted(ids) == list(range(10))


def test_ray_source_resumes_at_epoch_boundaries(ray_cluster):
    ds = ray.data.from_items([{"id": i} for i in range(6)]).materialize()

    def make():
        return Mapper(Batcher(sds_ray.RaySource(ds), 2), collate)

    def epoch_of(loader):
        batches = list(loader)
        return sorted(i for b in batches for i in b["id"].tolist()), {
            e for b in batches for e in b["__epoch__"].tolist()
        }

    loader = Loader(make())
    assert epoch_of(loader) == (list(range(6)), {0})
    at_end = json_roundtrip(loader.state_dict())
    resumed = Loader(make())
    resumed.load_state_dict(at_end)
    assert epoch_of(resumed) == (list(range(6)), {1})  # exactly the next epoch, no warning

    loader = Loader(make())
    next(iter(loader))
    middle = json_roundtrip(loader.state_dict())
    resumed = Loader(make())
    resumed.load_state_dict(middle)
    with pytest.warns(RuntimeWarning, match="after 2 samples of epoch 0"):
        assert epoch_of(resumed) == (list(range(6)), {1})  # the rest of epoch 0 is skipped

    source = sds_ray.RaySource(ds)
    source.reset({"epoch": 3, "position": 0, "finished": False})  # taken at an epoch's start
    assert [s["__epoch__"] for s in source] == [3] * 6
    assert source.get_state() == {"epoch": 3, "position": 6, "finished": True}


def test_example_runs(ray_cluster, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ray_decode", ROOT / "examples" / "ray_decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--dir", str(tmp_path), "--num-images", "8", "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "ray batch: image torch.uint8 [4, 3, 16, 16] rows [0, 1, 2, 3]" in out
    assert "ray decoded 8 images" in out
    assert out.count(": 8 samples, first keys") == 2  # two epochs through the graph


def test_bad_arguments(tmp_path, image_index):
    with pytest.raises(ValueError, match="ray.data.read_parquet"):
        sds_ray.read_index(image_index, index=IndexOptions(lazy=True))
    with pytest.raises(ValueError, match="block_rows=0"):
        sds_ray.read_index(image_index, block_rows=0)
    with pytest.raises(ValueError, match="at least one column"):
        sds_ray.decode_batches({})
    with pytest.raises(TypeError, match="streaming_split"):
        sds_ray.RaySource([1, 2, 3])


def test_without_ray_a_clear_import_error(monkeypatch, image_index):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when not installed
    with pytest.raises(ImportError, match=r'pip install "sdsnodes\[ray\]"'):
        sds_ray.read_index(image_index)


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_import_sdsnodes_does_not_import_ray():
    code = "import sys, sdsnodes; sys.exit(int('ray' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


@pytest.mark.slow  # starts its own Ray instance and runs every row once: a minute or more
def test_benchmark_quick_prints_the_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "ray", "--quick", "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Ray map_batches, 2 Ray workers" in proc.stdout and "ratio" in proc.stdout
