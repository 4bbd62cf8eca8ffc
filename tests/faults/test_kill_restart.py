"""Kill and restart: SIGKILL a DataLoader worker or the whole job, then restart from the last
saved checkpoint (issue 10, suite item 2).

A *job* is this file run as a script (``python test_kill_restart.py CONFIG.json``): a
training-like loop over ``StatefulDataLoader(StreamingDataset(build_image_graph(...)),
num_workers=2)`` that, after every batch, appends the batch's keys and pixel digests to a log
and atomically replaces a JSON checkpoint holding ``state_dict()`` and every key delivered up
to it. The test starts the job in its own process group, kills it at a random moment (seeded
from ``SEED``): the whole group, mid-download or mid-ledger-write, or one DataLoader worker
(the job then dies of the worker's death, as a training job does). After each kill:

- the next start of the cache (a ``Cache`` opened here, alone on the directory) repairs the
  ledger: no pin and no reservation of a dead process, no ``.tmp`` file, SQLite integrity ok,
  and every ready file byte-identical to its source;
- the job restarts from its last checkpoint.

At the end of the epoch (the long run kills through several epochs, one cache directory): the
keys of the last checkpoints before each kill plus those after the last restart are the epoch
exactly, as a multiset (nothing lost, nothing repeated), and every image ever delivered (also
those delivered after a checkpoint and re-delivered after the restart) has the pixels of its
source: no torn file was ever decoded.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE_SIZE = 24  # output pixels (H == W) of the graph
BATCH_SIZE = 4


# ------------------------------------------------------------------------------------- the job
def _digest(image) -> str:
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()[:16]


def _save_atomically(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_job(config_path: str) -> int:
    """The training-like loop: resume from the checkpoint if any, checkpoint after each batch."""
    import functools
    import warnings

    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import (
        CacheOptions,
        FetchOptions,
        StreamingDataset,
        build_image_graph,
        error_stats,
    )

    cfg = json.loads(Path(config_path).read_text())
    ckpt, done = Path(cfg["checkpoint"]), Path(cfg["done"])
    make = functools.partial(
        build_image_graph, cfg["src"], size=IMAGE_SIZE, batch_size=BATCH_SIZE,
        cache=CacheOptions(cfg["cache_dir"], max_bytes=cfg["max_bytes"]),
        fetch=FetchOptions(cfg["storage_options"], max_in_flight=cfg["download_threads"]),
        seed=cfg["seed"], num_threads=2,
        prefetch_factor=1,
    )  # fmt: skip
    dl = StatefulDataLoader(StreamingDataset(make), batch_size=None, num_workers=cfg["num_workers"])
    keys: list[str] = []
    errors: dict = {}
    if ckpt.exists():
        saved = json.loads(ckpt.read_text())
        keys, errors = saved["keys"], saved["errors"]
        dl.load_state_dict(saved["state"])
    with open(cfg["log"], "a") as log:
        log.write(json.dumps({"start": os.getpid(), "resumed_at": len(keys)}) + "\n")
        log.flush()
        if len(keys) < cfg["epoch_len"]:
            for batch in dl:
                batch_keys = list(batch["__key__"])
                digests = [_digest(img) for img in batch["image"]]
                log.write(json.dumps({"keys": batch_keys, "digests": digests}) + "\n")
                log.flush()
                keys += batch_keys
                state = dl.state_dict()
                errors = error_stats(state)
                _save_atomically(ckpt, {"state": state, "keys": keys, "errors": errors})
                if len(keys) >= cfg["epoch_len"]:
                    break
    _save_atomically(done, {"keys": keys, "errors": errors})
    return 0


if __name__ == "__main__":
    sys.exit(run_job(sys.argv[1]))


# ----------------------------------------------------------------------------------- the test
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from _faults import SEED, scaled  # noqa: E402

from sdsnodes._synthetic import write_image  # noqa: E402
from sdsnodes.cache import Cache  # noqa: E402
from sdsnodes.cache.paths import key_for, parse_tmp  # noqa: E402
from sdsnodes.codecs import ImageTensor  # noqa: E402

NUM_IMAGES = 32
JOB_TIMEOUT_S = 180  # hang guard for one run of the job


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """32 JPEGs of 0.3-1.5 MB (trailing random bytes, so bodies take several writes) and the digest of each one's decoded pixels, as the graph decodes them."""
    root = tmp_path_factory.mktemp("kill-sources")
    rng = random.Random(SEED)
    files, digests = [], {}
    codec = ImageTensor(size=(IMAGE_SIZE, IMAGE_SIZE))
    for i in range(NUM_IMAGES):
        path = root / f"img {i:03d}.jpg"  # a space: URLs are quoted
        write_image(path, width=160 + 4 * i, height=120, seed=i)
        path.write_bytes(path.read_bytes() + rng.randbytes(rng.randrange(300_000, 1_500_000)))
        files.append(path)
        digests[path.name] = _digest(codec(str(path)))
    return files, digests


def _ledger(cache_dir: Path) -> dict:
    """What the ledger holds: reservations, pins (pid, pid_start), ready files, integrity."""
    conn = sqlite3.connect(cache_dir / "ledger.sqlite", timeout=30)
    try:
        return {
            "reserved": conn.execute(
                "SELECT count(*) FROM files WHERE state != 'ready'"
            ).fetchone()[0],
            "pins": conn.execute("SELECT DISTINCT pid, pid_start FROM pins").fetchall(),
            "ready": conn.execute("SELECT key, size FROM files WHERE state = 'ready'").fetchall(),
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
        }
    finally:
        conn.close()


def _tmp_files(cache_dir: Path) -> list[Path]:
    """The ``.tmp`` files (downloads in progress) in the cache's ``<2 hex>/`` folders."""
    found = []
    try:
        with os.scandir(cache_dir) as top:
            subs = [e.path for e in top if len(e.name) == 2 and e.is_dir()]
    except FileNotFoundError:
        return []
    for sub in subs:
        try:
            with os.scandir(sub) as entries:
                found += [Path(e.path) for e in entries if e.name.endswith(".tmp")]
        except FileNotFoundError:
            continue
    return found


def _lock_holders(cache_dir: Path) -> list[int]:
    """Pids with ``.locks/users.lock`` open (every process that has the cache open)."""
    target = str(cache_dir / ".locks" / "users.lock")
    pids = []
    for proc in psutil.process_iter():
        try:
            if any(f.path == target for f in proc.open_files()):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _check_cache_after_restart(
    cache_dir: Path, by_key: dict[str, bytes], max_bytes: int
) -> tuple[dict, list[str], int]:
    """Open the cache (the next start after a kill, alone on the directory: a cold start) and
    check it was repaired.

    Returns:
        tuple: what the kill had left behind before the repair (counts), what is still wrong
        after it (messages), and how many cached files differ from their source (torn).
    """
    left = {"tmp": len(_tmp_files(cache_dir))}
    if (cache_dir / "ledger.sqlite").exists():
        try:
            before = _ledger(cache_dir)
            left.update(reserved=before["reserved"], pins=len(before["pins"]))
        except sqlite3.DatabaseError:
            left["unfinished_ledger"] = 1  # killed while the ledger was being created
    with Cache(cache_dir, max_bytes=max_bytes):
        after = _ledger(cache_dir)
    holders = _lock_holders(cache_dir)
    wrong = []
    if after["integrity"] != "ok":
        wrong.append(f"integrity check: {after['integrity']}")
    if after["reserved"]:
        wrong.append(f"{after['reserved']} reservations of dead processes survive the restart")
    if after["pins"]:
        wrong.append(f"pins of dead processes survive the restart: {after['pins']}")
    if _tmp_files(cache_dir):
        wrong.append(f"half-written downloads survive the restart: {_tmp_files(cache_dir)}")
    torn = 0
    for key, size in after["ready"]:
        found = list((cache_dir / key[:2]).glob(key + "*"))
        if len(found) != 1:
            wrong.append(
                f"ready row {key[:12]}… has {len(found)} files after a cold start (users lock "
                f"held by {holders}); the kill had left {left}"
            )
            continue
        data = found[0].read_bytes()
        torn += len(data) != size or data != by_key[key]
    return left, wrong, torn


def _start(config: Path, output: Path) -> subprocess.Popen:
    """The job in its own process group (its DataLoader workers join it), its output to a
    file (a pipe nobody reads while waiting for the moment to kill could fill and stall it)."""
    with open(output, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(HERE / "test_kill_restart.py"), str(config)],
            cwd=HERE, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _batches_after(log: Path, offset: int) -> int:
    if not log.exists():
        return 0
    with open(log) as f:
        f.seek(offset)
        return sum(1 for line in f if line.startswith('{"keys"'))


def _wait_for_tmp(job: subprocess.Popen, cache_dir: Path) -> Path | None:
    """The first ``.tmp`` file seen in ``cache_dir`` (a download in progress)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job.poll() is None and time.monotonic() < deadline:
        found = next(iter(_tmp_files(cache_dir)), None)
        if found is not None:
            return found
        time.sleep(0.001)
    return None


def _wait_for_ledger_write(job: subprocess.Popen, cache_dir: Path) -> bool:
    """Whether some process was seen inside a ledger write transaction (our ``BEGIN
    IMMEDIATE`` probe found the write lock taken)."""
    ledger = cache_dir / "ledger.sqlite"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job.poll() is None and not ledger.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    if not ledger.exists():
        return False
    conn = sqlite3.connect(ledger, timeout=0, isolation_level=None)
    try:
        while job.poll() is None and time.monotonic() < deadline:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):
                    return True
                raise
            conn.execute("ROLLBACK")
            time.sleep(0.0005)
    finally:
        conn.close()
    return False


def _kill_once(
    job: subprocess.Popen, mode: str, target: str, rng: random.Random, cache_dir: Path, log: Path
) -> str | None:
    """Wait for the moment ``mode`` names, then SIGKILL ``target``; returns what was killed
    (``"job"``, ``"worker"``) or None when the job ended first.

    Modes: ``"delay"`` a random delay (a quarter of them before the first batch: imports, the
    cache's cold start, the forks); ``"download"`` as soon as a ``.tmp`` file appears (its
    writer, for a worker target); ``"ledger"`` as soon as a process holds the ledger's write
    lock. The last two first wait for 0 to 4 batches of this run.
    """
    victim = None
    offset = log.stat().st_size if log.exists() else 0
    if mode == "delay":
        if rng.random() < 0.75:
            while job.poll() is None and _batches_after(log, offset) == 0:
                time.sleep(0.01)
        deadline = time.monotonic() + rng.uniform(0.0, 2.0)
        while job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    else:  # not always before the first batch: from a later checkpoint too
        batches = rng.choice([0, 0, 1, 2, 4])
        while job.poll() is None and _batches_after(log, offset) < batches:
            time.sleep(0.005)
    if mode == "download":
        tmp = _wait_for_tmp(job, cache_dir)
        if tmp is not None:
            victim = parse_tmp(tmp.name)[1]  # its writer's pid
    elif mode == "ledger":
        _wait_for_ledger_write(job, cache_dir)
    if job.poll() is not None:
        return None
    if target == "worker":
        try:
            workers = psutil.Process(job.pid).children()
        except psutil.NoSuchProcess:
            return None
        if not workers:
            target = "job"  # still starting: no workers yet
        else:
            chosen = [w for w in workers if w.pid == victim] or [rng.choice(workers)]
            chosen[0].send_signal(signal.SIGKILL)
            return target
    _kill_group(job)
    return target


def _wait_group_gone(job: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Wait until no live process of the job's process group remains, so that the next start
    of the cache is a cold start. A zombie counts as gone only once its other threads have
    exited too: a killed multi-threaded process shows its leader as a zombie while the other
    threads still tear down, holding the process's descriptors (and the cache's users lock)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for proc in psutil.process_iter(["status"]):
            try:
                if os.getpgid(proc.pid) != job.pid:
                    continue
                if proc.info["status"] != psutil.STATUS_ZOMBIE or _threads_left(proc.pid) > 1:
                    alive.append(proc.pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        if not alive:
            return
        assert time.monotonic() < deadline, f"killed processes still alive: {alive}"
        time.sleep(0.01)


def _threads_left(pid: int) -> int:
    """How many threads of ``pid`` have not exited (0 once it is reaped)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def _kill_group(job: subprocess.Popen) -> None:
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_TALLY: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _summary():
    """Print the figure of every kill of the module, both stores together."""
    yield
    if _TALLY["kills"]:
        t = _TALLY
        print(
            f"\nFIGURE kills: {t['kills']}, {t['torn']} torn ({t['job']} of the job, "
            f"{t['worker']} of a worker; {t['lost']} lost, {t['repeated']} repeated, "
            f"{t['unrepaired']} restarts left the ledger wrong; {t['completed']} of 2 stores "
            "completed)"
        )


@pytest.mark.parametrize("store", ["http", "s3"])
def test_kill_and_restart_loses_nothing_and_decodes_nothing_torn(store, sources, tmp_path, request):
    files, digests = sources
    rng = random.Random(f"{SEED}-{store}")
    if store == "http":
        served = request.getfixturevalue("http_dir")
        server = request.getfixturevalue("http_server")
        for path in files:
            (served.path / path.name).write_bytes(path.read_bytes())
        urls = [served.url_for(p.name) for p in files]
        server.faults(delay_s=0.25)  # every GET waits: kills land while downloads are in flight
        storage_options: dict = {}
        kills_wanted = scaled(3, 30)
    else:
        bucket = request.getfixturevalue("s3_bucket")
        s3 = request.getfixturevalue("s3_server")
        fs = s3.fs()
        urls = []
        for path in files:
            fs.put_file(str(path), f"{bucket}/imgs/{path.name}")
            urls.append(f"{bucket}/imgs/{path.name}")
        storage_options = s3.storage_options
        kills_wanted = scaled(1, 15)
    names = [p.name for p in files]
    sizes = [p.stat().st_size for p in files]
    by_key = {key_for(u): p.read_bytes() for u, p in zip(urls, files)}
    index = tmp_path / "index.parquet"
    columns = {"image": urls, "caption": names}
    if store == "s3":
        columns["size"] = sizes  # s3 with the size column, http without
    pq.write_table(pa.table(columns), index)
    expected = {str(i): digests[name] for i, name in enumerate(names)}  # __key__ is the row

    cache_dir = tmp_path / "cache"  # kept across rounds: later epochs start warm
    max_bytes = sum(sizes) // 2  # evictions and reservations happen
    kills = collections.Counter()
    unrepaired: list[str] = []
    torn: list = []
    lost: list = []
    repeated: list = []
    torn_cached = runs = batches = epochs = 0
    left_behind = collections.Counter()
    errors = {}
    # one epoch per round, killed again and again; the long run needs several epochs
    for round_ in range(scaled(1, 20)):
        if sum(kills.values()) >= kills_wanted:
            break
        here = tmp_path / f"round{round_}"
        here.mkdir()
        config, log, done_path = here / "job.json", here / "log.jsonl", here / "done.json"
        config.write_text(json.dumps({
            "src": str(index), "cache_dir": str(cache_dir), "max_bytes": max_bytes,
            "storage_options": storage_options, "seed": SEED % 1000 + round_,
            "num_workers": 2, "download_threads": 2, "epoch_len": NUM_IMAGES,
            "checkpoint": str(here / "ckpt.json"), "done": str(done_path), "log": str(log),
        }))  # fmt: skip
        runs_before = runs
        while not done_path.exists():
            runs += 1
            assert runs - runs_before <= 3 * kills_wanted + 5, "no progress between kills"
            started = time.monotonic()
            output = here / f"run{runs}.log"
            job = _start(config, output)
            target = mode = None
            if sum(kills.values()) < kills_wanted:
                mode = rng.choice(["delay", "download", "ledger"])
                target = rng.choice(["job", "worker"])
                target = _kill_once(job, mode, target, rng, cache_dir, log)
            try:
                job.wait(timeout=JOB_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(job)
                job.wait()
                pytest.fail(
                    f"the job hung (> {JOB_TIMEOUT_S} s) after {target=}:\n"
                    + output.read_text(errors="replace")[-3000:]
                )
            _kill_group(job)  # what a dying job left of its group (a worker) goes too
            _wait_group_gone(job)
            text = output.read_text(errors="replace")
            if target == "worker" and job.returncode != 0:
                assert "exited unexpectedly" in text or "killed by signal" in text, text[-3000:]
            elif target != "job":
                assert job.returncode == 0, f"the job failed unprompted:\n{text[-3000:]}"
            if target is not None and not done_path.exists():
                kills[mode, target] += 1  # (a job killed after it wrote its result: no kill)
                _TALLY.update(["kills", target])
            left, wrong, torn_files = _check_cache_after_restart(cache_dir, by_key, max_bytes)
            unrepaired += wrong
            torn_cached += torn_files
            _TALLY.update(unrepaired=int(bool(wrong)), torn=torn_files)
            left_behind.update({k: int(v > 0) for k, v in left.items()})
            print(
                f"  round {round_} run {runs}: {mode} {target} after "
                f"{time.monotonic() - started:.1f} s, left {left}"
            )

        done = json.loads(done_path.read_text())
        delivered = [
            json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"keys"')
        ]
        batches += len(delivered)
        torn += [
            (k, d)
            for rec in delivered
            for k, d in zip(rec["keys"], rec["digests"])
            if expected[k] != d
        ]
        got = collections.Counter(done["keys"])
        lost += sorted(set(expected) - set(got), key=int)
        repeated += sorted((k for k, n in got.items() if n > 1), key=int)
        errors.update(done["errors"])
        epochs += 1
    n_kills = sum(kills.values())
    of = {t: sum(n for (_, t2), n in kills.items() if t2 == t) for t in ("job", "worker")}
    at = {
        m: sum(n for (m2, _), n in kills.items() if m2 == m)
        for m in ("delay", "download", "ledger")
    }
    print(
        f"FIGURE kills-{store}: {n_kills} ({of['job']} job, {of['worker']} worker; "
        f"{at['download']} on a download, {at['ledger']} on a ledger write, {at['delay']} random; "
        f"{left_behind['tmp']} left a .tmp, {left_behind['reserved']} a reservation, "
        f"{left_behind['pins']} pins), {len(torn)} torn ({torn_cached} torn cached files), "
        f"{len(lost)} lost, {len(repeated)} repeated, {len(unrepaired)} faults left after a restart"
    )
    print(f"  {epochs} epochs, {runs} runs, {batches} batches delivered, errors {errors}")
    _TALLY.update(torn=len(torn), lost=len(lost), repeated=len(repeated), completed=1)
    assert torn == [] and torn_cached == 0, f"torn images decoded: {torn[:5]}, {torn_cached=}"
    assert lost == [] and repeated == [], f"{lost=} {repeated=}"
    assert errors == {}, errors
    assert n_kills >= kills_wanted // 2, f"too few kills landed: {kills}"
    assert unrepaired == [], "the cache was not repaired after a kill:\n" + "\n".join(unrepaired)


def test_a_cold_start_never_adopts_the_file_of_a_reservation_it_reclaims(tmp_path):
    """The state a kill between a download's rename into place and the ledger's ``finish``
    leaves (seen in the test above): a ``reserved`` row pinned by a dead process, its file whole
    under its final name. The cold start reclaims the reservation and removes the file; it must
    not then adopt the file it scanned before as a ``ready`` row whose file is gone."""
    url = "https://example.invalid/a.bin"  # never fetched: the file is written below
    cache_dir = tmp_path / "cache"
    with Cache(cache_dir) as cache:
        path = cache.get(url, lambda tmp: tmp.write_bytes(b"x" * 1000))
        cache.unpin(url)
    conn = sqlite3.connect(cache_dir / "ledger.sqlite", isolation_level=None)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    conn.execute("UPDATE files SET state = 'reserved'")
    conn.execute("INSERT INTO pins VALUES (?, ?, 1, 1)", (key_for(url), int(dead.stdout)))
    conn.close()
    with Cache(cache_dir):
        after = _ledger(cache_dir)
    assert after["pins"] == [] and after["reserved"] == 0
    rows = {key: size for key, size in after["ready"]}
    assert path.exists() == (key_for(url) in rows), (
        f"ready rows {rows}, file {'present' if path.exists() else 'gone'}: the ledger counts "
        "a file that is not on disk"
    )
