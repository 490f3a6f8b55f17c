"""Dataset cache: key covers every shaping field, hit/miss, damage detection, locking."""

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from ptychostab.data import cache
from ptychostab.data.simulate import SIMULATOR_VERSION, load_or_build, simulate
from ptychostab.data.spec import DataConfig, ProbeConfig

# One changed value per shaping field. The coverage test below fails when a field is added to
# DataConfig or ProbeConfig without an entry here.
CHANGES = {
    "N": 32, "gridsize": 2, "size": 48, "n_lines": 13, "nimgs_train": 2, "nimgs_test": 2,
    "outer_offset_train": 10, "outer_offset_test": 24, "nphotons": 1e8, "set_phi": False,
    "seed_train": 5, "seed_test": 6, "noise_seed": 7,
    "probe.kind": "ideal_disk", "probe.path": "unused.npz", "probe.radius": 0.2,
    "probe.edge_width": 1.0, "probe.defocus_phase": 1.0, "probe.smoothing_sigma": 1.0,
    "probe.probe_scale": 2.0,
}


def _changed(spec: DataConfig, field: str, value) -> DataConfig:
    if field.startswith("probe."):
        return dataclasses.replace(spec, probe=dataclasses.replace(spec.probe,
                                                                   **{field[6:]: value}))
    return dataclasses.replace(spec, **{field: value})


def _key(spec):
    return cache.cache_key(spec, SIMULATOR_VERSION)


def test_every_field_but_name_is_covered_by_the_key_tests():
    fields = {f.name for f in dataclasses.fields(DataConfig)} - {"name", "probe"}
    fields |= {f"probe.{f.name}" for f in dataclasses.fields(ProbeConfig)}
    assert fields == set(CHANGES)


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_key_changes_with_each_shaping_field(micro, field):
    spec = micro()
    assert _key(_changed(spec, field, CHANGES[field])) != _key(spec)


def test_key_ignores_name_and_follows_simulator_version(micro):
    spec = micro()
    assert _key(dataclasses.replace(spec, name="other")) == _key(spec)
    assert cache.cache_key(spec, "grid_lines-999") != _key(spec)


def test_key_does_not_depend_on_int_or_float_spelling(micro):
    assert _key(micro(nphotons=10**9)) == _key(micro(nphotons=1e9))
    assert _key(micro(probe=ProbeConfig(probe_scale=4))) == _key(micro())


def test_key_follows_the_npz_probe_contents(micro, tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, probeGuess=np.ones((16, 16), complex))
    spec = micro(probe=ProbeConfig(kind="npz", path=str(path)))
    before = _key(spec)
    np.savez(path, probeGuess=2 * np.ones((16, 16), complex))  # same path, new content
    assert _key(spec) != before


# Fields a micro build can take (all validate at N=16, S=40) for real hit/miss round trips.
BUILD_CHANGES = {k: v for k, v in CHANGES.items() if k not in ("N", "gridsize", "probe.path")}


@pytest.mark.parametrize("field", sorted(BUILD_CHANGES))
def test_hit_and_miss_for_each_shaping_field(micro, field, tmp_path):
    base = micro()
    first = load_or_build(base, tmp_path)
    assert first.meta["cache_status"] == "built"
    assert load_or_build(dataclasses.replace(base, name="renamed"), tmp_path).meta[
        "cache_status"] == "hit"
    changed = _changed(base, field, BUILD_CHANGES[field])
    assert load_or_build(changed, tmp_path).meta["cache_status"] == "built"
    again = load_or_build(changed, tmp_path)
    assert again.meta["cache_status"] == "hit"


def test_hit_returns_the_built_bytes(micro, tmp_path):
    built = load_or_build(micro(), tmp_path)
    hit = load_or_build(micro(), tmp_path)
    assert hit.meta["cache_status"] == "hit"
    for name in ("train_amp", "test_amp", "probe", "test_truth", "test_object"):
        assert getattr(hit, name).tobytes() == getattr(built, name).tobytes()
    stored_meta = {k: v for k, v in built.meta.items() if k != "cache_status"}
    assert {k: v for k, v in hit.meta.items() if k != "cache_status"} == stored_meta
    # and they are the bytes a plain simulation gives
    assert hit.train_amp.tobytes() == simulate(micro()).train_amp.tobytes()


def test_default_cache_dir_is_env_then_cwd(micro, monkeypatch, tmp_path):
    monkeypatch.setenv("PTYCHOSTAB_CACHE", str(tmp_path / "env"))
    data = load_or_build(micro())
    assert (tmp_path / "env" / f"{data.meta['key']}.npz").exists()
    monkeypatch.delenv("PTYCHOSTAB_CACHE")
    monkeypatch.chdir(tmp_path)
    assert cache.default_cache_dir() == tmp_path / ".cache" / "datasets"


def _flip_byte(path: Path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(path: Path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _valid_zip_other_content(path: Path):  # zip CRCs fine, same size: only the sha256 tells
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["train_amp"] = arrays["train_amp"].copy()
    arrays["train_amp"][0, 0, 0, 0] += 1.0
    size = path.stat().st_size
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    assert path.stat().st_size == size


DAMAGE = {
    "valid zip, other content": lambda e: _valid_zip_other_content(e.npz),
    "flipped byte": lambda e: _flip_byte(e.npz),
    "truncated npz": lambda e: _truncate(e.npz),
    "missing sidecar": lambda e: e.sidecar.unlink(),
    "garbage sidecar": lambda e: e.sidecar.write_text("{not json"),
    "missing npz": lambda e: e.npz.unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_detected_logged_and_rebuilt(micro, tmp_path, caplog, damage):
    good = load_or_build(micro(), tmp_path)
    entry = cache.Entry(tmp_path, good.meta["key"])
    DAMAGE[damage](entry)
    with caplog.at_level(logging.WARNING, logger="ptychostab.data.cache"):
        again = load_or_build(micro(), tmp_path)
    assert again.meta["cache_status"] == "rebuilt"
    assert "damaged" in caplog.text
    assert again.train_amp.tobytes() == good.train_amp.tobytes()
    assert load_or_build(micro(), tmp_path).meta["cache_status"] == "hit"


def test_valid_file_of_another_dataset_under_this_key_is_not_used(micro, tmp_path):
    good = load_or_build(micro(), tmp_path)
    other = load_or_build(micro(noise_seed=99), tmp_path)
    mine = cache.Entry(tmp_path, good.meta["key"])
    theirs = cache.Entry(tmp_path, other.meta["key"])
    os.replace(theirs.npz, mine.npz)
    os.replace(theirs.sidecar, mine.sidecar)
    side = json.loads(mine.sidecar.read_text())
    side["key"] = good.meta["key"]
    mine.sidecar.write_text(json.dumps(side))  # checksum still matches: only the key tells
    again = load_or_build(micro(), tmp_path)
    assert again.meta["cache_status"] == "rebuilt"
    assert again.train_amp.tobytes() == good.train_amp.tobytes()


# --- concurrency (spawned processes: each imports torch, ~2 s) ------------------------------
def _child_load(spec_dict, cache_dir, queue, ready=None):
    if ready is not None:
        ready.set()  # imports are done: the next call reaches the lock at once
    data = load_or_build(spec_dict, cache_dir)
    queue.put((data.meta["cache_status"], data.train_amp.tobytes()))


def test_a_second_process_waits_for_the_lock_and_loads(micro, tmp_path):
    spec = micro()
    key = _key(spec)
    entry = cache.Entry(tmp_path, key)
    ctx = mp.get_context("spawn")
    queue, ready = ctx.Queue(), ctx.Event()
    with FileLock(str(entry.lock)):  # we are "the first builder"
        child = ctx.Process(target=_child_load,
                            args=(spec.to_dict(), str(tmp_path), queue, ready))
        child.start()
        assert ready.wait(timeout=120)
        time.sleep(0.5)
        assert child.is_alive() and queue.empty()  # blocked on our lock, not building
        data = simulate(spec)
        cache.write_entry(entry, data.to_arrays(),
                          {"simulator_version": SIMULATOR_VERSION, "spec": spec.to_dict()})
    status, train_bytes = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert status == "hit"
    assert train_bytes == data.train_amp.tobytes()


def test_two_processes_building_at_once_build_once(micro, tmp_path):
    spec = micro(size=64)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    children = [ctx.Process(target=_child_load, args=(spec.to_dict(), str(tmp_path), queue))
                for _ in range(2)]
    for c in children:
        c.start()
    results = [queue.get(timeout=120) for _ in children]
    for c in children:
        c.join(timeout=60)
        assert c.exitcode == 0
    assert sorted(r[0] for r in results) in (["built", "hit"], ["hit", "built"])
    assert results[0][1] == results[1][1]
    assert load_or_build(spec, tmp_path).meta["cache_status"] == "hit"
