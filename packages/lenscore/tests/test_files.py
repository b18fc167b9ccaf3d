"""Atomic writes, locks and the clean-up of killed writers, checked with real processes."""

import os
import subprocess
import sys
import textwrap

import pytest

from lenscore.files import (
    ExclusiveLock,
    hidden_sibling,
    open_hdf5,
    remove_stale_temporaries,
    temporary_path,
    write_text,
    written,
)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.txt"
    write_text(path, "first\n")
    with pytest.raises(RuntimeError), written(path) as tmp:
        tmp.write_text("half of the sec")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "first\n" and list(tmp_path.iterdir()) == [path]
    with written(path) as tmp:
        assert tmp == temporary_path(path) and tmp.name == f".table.txt.{os.getpid()}.tmp"
        tmp.write_text("second\n")
    assert path.read_text() == "second\n" and list(tmp_path.iterdir()) == [path]


def test_only_the_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    stale = tmp_path / f".a.h5.{dead}.tmp"
    mine = tmp_path / f".a.h5.{os.getpid()}.tmp"
    parent = tmp_path / f".b.h5.{os.getppid()}.tmp"  # a live process's
    other = tmp_path / f".b.h5.{dead}.tmp"
    for f in (stale, mine, parent, other):
        f.write_text("x")
    assert remove_stale_temporaries(tmp_path, "a.h5") == [stale]
    assert mine.exists() and parent.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path) == [other] and parent.exists()


def test_a_second_process_is_refused_the_lock_at_once(tmp_path):
    lockfile = tmp_path / ".out.lock"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from lenscore.files import ExclusiveLock
        with ExclusiveLock({str(lockfile)!r}, lambda: ValueError("busy")):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="busy"), ExclusiveLock(lockfile, lambda: ValueError("busy")):
            pass
    finally:
        proc.communicate("\n", timeout=30)
    with ExclusiveLock(lockfile, lambda: ValueError("busy")):  # free again once the holder is gone
        assert lockfile.exists()
    assert not lockfile.exists()


def test_hdf5_files_open_or_fail_in_one_line(tmp_path):
    import h5py

    with pytest.raises(KeyError, match="no such file"):
        open_hdf5(tmp_path / "missing.h5", KeyError)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="text.h5: not a readable HDF5 file"):
        open_hdf5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "ok.h5", "w") as f:
        f["x"] = [1, 2, 3]
    with open_hdf5(tmp_path / "ok.h5") as f:
        assert list(f["x"][()]) == [1, 2, 3]


def test_helper_files_of_a_legal_250_byte_name_stay_legal_names(tmp_path):
    path = tmp_path / ("n" * 247 + ".h5")  # 250 bytes: legal, but ".NAME.lock" would not be
    with written(path) as tmp:
        assert len(tmp.name.encode()) <= 255
        tmp.write_text("data")
    assert path.read_text() == "data"
    lock = hidden_sibling(path, "lock")
    assert len(lock.name.encode()) <= 255 and lock != hidden_sibling(tmp_path / ("n" * 248 + ".h5"), "lock")
    with ExclusiveLock(lock, lambda: RuntimeError("taken")):
        assert lock.exists()
    short = tmp_path / "a.h5"
    assert hidden_sibling(short, "lock").name == ".a.h5.lock"  # short names unchanged
    # a dead writer's temporary of the long name is still found and removed
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    stale = temporary_path(path).with_name(temporary_path(path).name.replace(str(os.getpid()), str(dead)))
    stale.write_text("x")
    assert remove_stale_temporaries(tmp_path, path.name) == [stale]


def test_a_job_keeps_the_thread_count_of_its_first_call(tmp_path, monkeypatch):
    from lenscore import cpu
    from lenscore.config import SettingError

    monkeypatch.setattr(cpu, "idle_cores", lambda window=0.5: 1)
    stored = tmp_path / "job" / "threads.txt"
    assert cpu.choose_threads(None, stored) == (1, True) and stored.read_text() == "1\n"
    assert cpu.choose_threads(None, stored) == (1, False)  # read back, not measured again
    assert cpu.choose_threads(2, stored) == (2, False) and stored.read_text() == "1\n"  # asked for, not stored
    stored.write_text("4096\n")  # a file from a larger machine
    assert cpu.choose_threads(None, stored)[0] == cpu.max_threads()
    with pytest.raises(SettingError, match="usable cores: at most") as e:
        cpu.choose_threads(cpu.max_threads() + 1, stored)
    assert e.value.param == "threads"


def test_an_output_that_is_or_lies_inside_an_input_is_refused_naming_the_output(tmp_path):
    from lenscore.config import SettingError
    from lenscore.files import refuse_overwriting

    (tmp_path / "run").mkdir()
    (tmp_path / "data.h5").write_bytes(b"x")
    (tmp_path / "link.h5").symlink_to(tmp_path / "data.h5")
    refuse_overwriting({"output": tmp_path / "out.h5"}, {"data": tmp_path / "data.h5", "kappa": "sie", "x": None})
    for out, where in ((tmp_path / "link.h5", "is the input data"), (tmp_path / "run" / "o.h5", "lies inside")):
        with pytest.raises(SettingError, match=where) as e:
            refuse_overwriting({"output": out}, {"data": tmp_path / "data.h5", "rim": tmp_path / "run"})
        assert e.value.param == "output"


def test_a_failed_job_removes_what_it_created_unless_it_is_worth_resuming(tmp_path):
    from lenscore.files import hidden_sibling, removed_on_failure

    made, kept, old = tmp_path / "made", tmp_path / "kept", tmp_path / "old"
    old.mkdir()
    for path, extra in ((made, None), (kept, "checkpoint.pt"), (old, None)):
        with pytest.raises(RuntimeError), removed_on_failure(path):
            path.mkdir(exist_ok=True)
            (path / "config.json").write_text("{}")
            hidden_sibling(path, "blocks").mkdir(exist_ok=True)
            if extra:
                (path / extra).write_bytes(b"w")
            raise RuntimeError("refused")
    assert not made.exists() and not hidden_sibling(made, "blocks").exists()
    assert (kept / "checkpoint.pt").is_file() and (old / "config.json").is_file()  # work, and what was there
    with removed_on_failure(tmp_path / "fine"):
        (tmp_path / "fine").mkdir()
    assert (tmp_path / "fine").is_dir()
