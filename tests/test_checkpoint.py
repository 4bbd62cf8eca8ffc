"""save_state / load_state: exact round trips, resume through object storage, refusing another
graph's state, and no half state after a writer is killed mid-write (local disk and moto S3)."""

import json
import random
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchdata.nodes import Batcher
from utils import stateful_loader

from sdsnodes import IndexReader, Shuffler, StreamingDataset
from sdsnodes.checkpoint import describe_graph, load_state, save_state


def _dataset(index, seed=0, batch_size=4):
    return StreamingDataset(lambda: Batcher(Shuffler(IndexReader(index), seed=seed), batch_size))


def _xs(batch):
    return [row["x"] for row in batch]


@pytest.fixture
def index(tmp_path):
    path = tmp_path / "index.parquet"
    pq.write_table(pa.table({"x": list(range(60))}), path)
    return str(path)


def test_round_trip_restores_values_json_cannot_hold(tmp_path):
    generator = torch.Generator().manual_seed(3).get_state()  # a ByteTensor, as samplers keep
    state = {
        "tuple": (1, "a", None),
        "bytes": b"\x00\xff",
        "ints": {0: "worker_0", 1: [2.5, True]},
        "tensor": generator,
        "floats": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "empty": torch.zeros(0, 4),
        "nested": [{"__sds_type__": "not a tag"}],
    }
    save_state(state, tmp_path / "run" / "state.json")
    back = load_state(tmp_path / "run" / "state.json")
    assert back.keys() == state.keys()
    assert back["tuple"] == (1, "a", None) and back["bytes"] == b"\x00\xff"
    assert back["ints"] == {0: "worker_0", 1: [2.5, True]}
    assert torch.equal(back["tensor"], generator) and back["tensor"].dtype == torch.uint8
    assert torch.equal(back["floats"], state["floats"]) and back["floats"].dtype == torch.float64
    assert back["empty"].shape == (0, 4)
    assert back["nested"] == state["nested"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["state.json"]  # no temporary left


def test_unsaveable_value_fails_naming_the_type(tmp_path):
    with pytest.raises(TypeError, match="object"):
        save_state({"x": object()}, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def _resume_through(url, storage_options, index):
    """After 3 batches, the state saved to ``url`` resumes a fresh 2-worker loader exactly."""
    whole = [_xs(b) for b in stateful_loader(_dataset(index), 2)]
    dl = stateful_loader(_dataset(index), 2)
    it = iter(dl)
    head = [_xs(next(it)) for _ in range(3)]
    save_state(dl.state_dict(), url, storage_options=storage_options, graph=dl)
    del it, dl
    fresh = stateful_loader(_dataset(index), 2)
    fresh.load_state_dict(load_state(url, storage_options=storage_options, graph=fresh))
    assert head + [_xs(b) for b in fresh] == whole


def test_loader_resumes_from_a_state_on_s3(s3_server, s3_bucket, index):
    _resume_through(f"{s3_bucket}/run-1/data.json", s3_server.storage_options, index)
    names = s3_server.fs().ls(f"{s3_bucket}/run-1")
    assert [n.rsplit("/", 1)[1] for n in names] == ["data.json"]


def test_loader_resumes_from_a_state_on_gcs(gcs_server, gcs_bucket, index):
    _resume_through(f"{gcs_bucket}/run-1/data.json", gcs_server.storage_options, index)


def test_another_graph_config_is_refused_naming_the_difference(tmp_path, index):
    dl = stateful_loader(_dataset(index, seed=0), 0)
    next(iter(dl))
    save_state(dl.state_dict(), tmp_path / "s.json", graph=dl)
    other = stateful_loader(_dataset(index, seed=1), 0)
    with pytest.raises(
        ValueError, match=r"saved Shuffler\(index=\w+, seed=0\), now Shuffler\(.*seed=1\)"
    ):
        load_state(tmp_path / "s.json", graph=other)
    with pytest.raises(ValueError, match="batch_size=4.*batch_size=5"):
        load_state(tmp_path / "s.json", graph=_dataset(index, batch_size=5))
    load_state(tmp_path / "s.json", graph=_dataset(index))  # the same config: fine
    assert describe_graph(dl) == describe_graph(_dataset(index))


def test_damaged_foreign_and_missing_checkpoints_fail_clearly(tmp_path):
    save_state({"a": 1}, tmp_path / "s.json")
    doc = json.loads((tmp_path / "s.json").read_text())
    doc["state"]["a"] = 2
    (tmp_path / "s.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="damaged"):
        load_state(tmp_path / "s.json")
    (tmp_path / "other.json").write_text('{"epoch": 1}')
    with pytest.raises(ValueError, match="not an sdsnodes checkpoint"):
        load_state(tmp_path / "other.json")
    (tmp_path / "torn.json").write_text('{"format": "sdsnodes.st')
    with pytest.raises(ValueError, match="not a JSON sdsnodes checkpoint"):
        load_state(tmp_path / "torn.json")
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "none.json")


def test_unwritable_url_fails_at_save_with_the_url_and_keeps_the_old_state(tmp_path, s3_server):
    (tmp_path / "file").write_text("a file, not a directory")
    with pytest.raises(OSError, match=r"could not save the state to '.*file/s.json'"):
        save_state({"a": 1}, tmp_path / "file" / "s.json")
    with pytest.raises(OSError, match="s3://sds-no-such-bucket-7f3a/s.json"):
        save_state({"a": 1}, "s3://sds-no-such-bucket-7f3a/s.json",
                   storage_options={**s3_server.storage_options, "config_kwargs": {"retries": {"max_attempts": 1}}})  # fmt: skip


def _checkpoint_url(where, tmp_path, request):
    """(url, storage_options) of a checkpoint on the local disk or in a new moto bucket."""
    if where == "local":
        return str(tmp_path / "ckpt" / "state.json"), {}
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/ckpt/state.json", request.getfixturevalue("s3_server").storage_options


WRITER = """
import json, sys
from sdsnodes.checkpoint import save_state
url, options, SIZE = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
for n in range(1, 10**6):
    save_state({"n": n, "payload": str(n % 10) * SIZE}, url, storage_options=options)
    print(n, flush=True)
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_writer_killed_at_random_moments_leaves_a_whole_state(where, tmp_path, request):
    url, options = _checkpoint_url(where, tmp_path, request)
    rng = random.Random(7)
    size = 4 << 20
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, url, json.dumps(options), str(size)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        first = proc.stdout.readline()  # at least one whole checkpoint written
        time.sleep(rng.uniform(0.0, 0.4))  # then killed at a random moment
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        written = [int(line) for line in (first + proc.stdout.read()).split()]
        proc.stdout.close()
        state = load_state(url, storage_options=options)
        assert state["payload"] == str(state["n"] % 10) * size  # whole, never a mix or a part
        # the newest finished one, or the next if it was moved in place before the kill
        assert max(written) <= state["n"] <= max(written) + 1


CRASHER = """
import builtins, json, os, sys
import fsspec
from sdsnodes.checkpoint import save_state
url, options = sys.argv[1], json.loads(sys.argv[2])
save_state({"n": 1, "payload": "1" * 100_000}, url, storage_options=options)

def half_then_die(data):  # the process dies with half of the bytes written
    return data[: len(data) // 2]

real_open = builtins.open
class Torn:
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
    def write(self, data): self.f.write(half_then_die(data)); self.f.flush(); os._exit(3)
    def __getattr__(self, name): return getattr(self.f, name)
builtins.open = lambda file, mode="r", *a, **k: Torn(real_open(file, mode, *a, **k)) if "w" in mode else real_open(file, mode, *a, **k)
fs = fsspec.core.url_to_fs(url, **options)[0]
real_pipe = fs.pipe_file
def torn_pipe(path, data, **kw):
    real_pipe(path, half_then_die(data), **kw); os._exit(3)
fs.pipe_file = torn_pipe
save_state({"n": 2, "payload": "2" * 100_000}, url, storage_options=options)
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_writer_dying_mid_write_leaves_the_previous_state(where, tmp_path, request):
    url, options = _checkpoint_url(where, tmp_path, request)
    proc = subprocess.run([sys.executable, "-c", CRASHER, url, json.dumps(options)], check=False)
    assert proc.returncode == 3  # it died inside the second save, half written
    assert load_state(url, storage_options=options) == {"n": 1, "payload": "1" * 100_000}
