"""The decode cache (data/cache.py, data/decoding.py, data/cache_store.py, data/filler.py): a split
opens without decoding, images decode as they are first read (by the loader, its workers or the
filler) with the same pixels as decoding up front, a rerun on the same files reads the persistent
entry and decodes nothing, concurrent writers leave one complete entry, the folder stays under
`data.cache_max_gb`, folds share their whole split's entry, and `cvtool cache list|clear`."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.data import cache_store, decoding
from cvtool.data.images import decode
from cvtool.data.pipeline import prepare_data
from cvtool.runs.recipes import load_recipe
from cvtool.tasks import get_task

runner = CliRunner()
TASK = get_task("multiclass")


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty decode cache of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache_store.ENV, str(folder))
    return folder


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every image the decoding module decodes, in order."""
    seen: list[Path] = []

    def counting(path, *args, **kwargs):
        seen.append(Path(path))
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(decoding, "decode", counting)
    return seen


def bundle_of(recipe: Path, splits=("train", "val", "test")):
    loaded = load_recipe(recipe)
    return prepare_data(loaded.data, TASK, loaded.seed, splits, progress=False)


def up_front(paths: list[Path], size: int = 16) -> np.ndarray:
    return np.stack([decode(path, 3, size, "squash")[0] for path in paths])


def test_a_split_opens_without_decoding_and_decodes_what_is_read(synthetic, make_recipe, tmp_path: Path,
                                                                  cache_dir: Path, decodes: list[Path]) -> None:
    split = bundle_of(make_recipe(tmp_path, synthetic("multiclass", n=80)), ("train",)).splits["train"]
    assert decodes == [] and len(split) > 20
    images = split.gather(np.array([7, 3, 7]))
    assert sorted(set(decodes)) == sorted({split.paths[3], split.paths[7]})
    assert np.array_equal(images, up_front([split.paths[7], split.paths[3], split.paths[7]]))
    assert split.frames[[3]].shape == (1, 4) and len(decodes) == 2  # known once decoded: no new decode
    assert np.array_equal(split.images, up_front(split.paths))  # the rest decoded on demand, same pixels


def test_a_rerun_reads_the_entry_and_decodes_nothing(synthetic, make_recipe, tmp_path: Path, cache_dir: Path,
                                                     decodes: list[Path]) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80))
    first = bundle_of(recipe)
    for split in first.splits.values():
        split.complete()  # the whole split read once: the entry is committed
    assert len(cache_store.entries(cache_store.decoded_folder())) == 3
    decodes.clear()
    again = bundle_of(recipe)
    for name, split in again.splits.items():
        assert np.array_equal(split.images, first.splits[name].images)
        assert np.array_equal(split.sizes, first.splits[name].sizes)
    assert decodes == []
    listed = runner.invoke(app, ["cache", "list"])
    assert listed.exit_code == 0 and str(cache_dir / "decoded") in listed.output and "3 entries" in listed.output
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 3 entries" in cleared.output
    assert cache_store.entries(cache_store.decoded_folder()) == []


def history(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_fresh_cached_memory_and_worker_decoded_runs_train_alike(synthetic, make_recipe, tmp_path: Path,
                                                                  cache_dir: Path) -> None:
    data = synthetic("multiclass", n=80)
    affine = [{"RandomHorizontalFlip": {"p": 0.5}}, {"RandomAffine": {"degrees": 10}}]
    runs = {}
    for name, extra in (("fresh", {}), ("cached", {}), ("memory", {"cache": "memory"}),
                        ("workers", {"cache": "memory", "num_workers": 2})):
        recipe = make_recipe(tmp_path, data, name=name, data=extra, augment=affine, train={"epochs": 2})
        result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / name), "--quiet", "--no-plots"])
        assert result.exit_code == 0, result.output
        runs[name] = history(tmp_path / name)
    assert len(runs["fresh"]) == 2 and all(rows == runs["fresh"] for rows in runs.values())
    assert len(cache_store.entries(cache_store.decoded_folder())) == 3  # train, val, test of the first run


def test_two_writers_of_one_entry_leave_one_complete_entry(tmp_path: Path) -> None:
    shape = (3, 2, 2, 1)
    writers = [cache_store.Writer(tmp_path, "k", shape) for _ in range(2)]
    for writer in writers:
        writer.images[:] = 7
    writers[0].commit(np.ones((3, 2), np.int64), np.ones(3, bool), [], {"split": "train"})
    loaded = cache_store.load(tmp_path, "k", shape)  # readable while the other writer still writes
    writers[1].commit(np.ones((3, 2), np.int64), np.ones(3, bool), [], {"split": "train"})
    assert loaded is not None and (loaded.images == 7).all()
    assert [e.key for e in cache_store.entries(tmp_path)] == ["k"] and not list(tmp_path.glob("*.tmp"))
    assert cache_store.load(tmp_path, "k", (4, 2, 2, 1)) is None  # another shape: not this entry


def entry(folder: Path, key: str, nbytes: int, age: float) -> None:
    writer = cache_store.Writer(folder, key, (nbytes, 1, 1, 1))
    writer.commit(np.zeros((nbytes, 2), np.int64), np.ones(nbytes, bool), [], {})
    os.utime(folder / f"{key}.npy", (1e9 - age, 1e9 - age))


def test_the_folder_stays_under_the_bound_least_recently_used_first(tmp_path: Path) -> None:
    for key, age in (("old", 30), ("mid", 20), ("new", 10)):
        entry(tmp_path, key, 50_000, age)
    size = cache_store.Entry(tmp_path, "new").nbytes
    writer = cache_store.reserve(tmp_path, "next", (50_000, 1, 1, 1), max_bytes=3 * size, required=False)
    assert writer is not None
    assert sorted(e.key for e in cache_store.entries(tmp_path)) == ["mid", "new"]
    assert cache_store.reserve(tmp_path, "huge", (10**7, 1, 1, 1), max_bytes=3 * size, required=False) is None
    assert cache_store.reserve(tmp_path, "huge", (10**7, 1, 1, 1), max_bytes=3 * size, required=True) is not None
    assert [e.key for e in cache_store.entries(tmp_path)] == []  # `disk` keeps its own, evicts the rest


def test_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    abandoned = tmp_path / f"k.{dead}.abcd1234.{socket.gethostname()}.tmp"
    abandoned.write_bytes(b"x")
    alive = cache_store.Writer(tmp_path, "k", (1, 1, 1, 1))
    cache_store.evict(tmp_path, float("inf"))
    assert not abandoned.exists() and alive.temp.exists()


def test_fold_runs_share_the_whole_training_splits_entry(synthetic, make_recipe, tmp_path: Path, cache_dir: Path,
                                                         decodes: list[Path]) -> None:
    data = synthetic("multiclass", n=80)
    keys = []
    for fold in (0, 1):
        recipe = make_recipe(tmp_path, data, name=f"f{fold}", data={"folds": {"k": 3}, "fold": fold})
        bundle = bundle_of(recipe, ("train", "val"))
        train, val = bundle.splits["train"], bundle.splits["val"]
        assert train.decoded is val.decoded and not set(train.paths) & set(val.paths)
        if fold == 0:
            train.complete()
            val.complete()
            assert len(decodes) == len(train) + len(val)
            first = {path: image for split in (train, val) for path, image in zip(split.paths, split.images,
                                                                                   strict=True)}
        else:
            assert all(np.array_equal(first[path], image) for path, image in zip(val.paths, val.images, strict=True))
        keys.append(train.decoded.key)
    assert keys[0] == keys[1] and len(decodes) == len(first)  # fold 1 decoded nothing


def test_an_unwritable_cache_folder_is_memory_under_auto_and_one_line_under_disk(
        synthetic, make_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cache_store.ENV, str(blocker / "cache"))
    data = synthetic("multiclass", n=80)
    split = bundle_of(make_recipe(tmp_path, data), ("train",)).splits["train"]
    assert np.array_equal(split.images, up_front(split.paths))
    result = runner.invoke(app, ["train", str(make_recipe(tmp_path, data, data={"cache": "disk"})), "--out",
                                 str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2 and "data.cache: disk: cannot write the cache entry" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_stops_the_run_in_one_line(workers: int, synthetic, make_recipe, tmp_path: Path,
                                                       cache_dir: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic("multiclass", n=80)["root"], root)
    bad = sorted((root / "train").rglob("*.png"))[5]
    bad.write_bytes(b"not a PNG")
    recipe = make_recipe(tmp_path, root, data={"num_workers": workers})
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "unreadable image" in lines[0], result.output
