import json

import pytest

from faithful import storage


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path):
    p = storage.write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1}
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]


def test_write_json_failure_keeps_old_file(tmp_path):
    p = storage.write_json(tmp_path / "r.json", {"x": 1})
    with pytest.raises(TypeError):
        storage.write_json(p, {"x": object()})
    assert json.loads(p.read_text()) == {"x": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]


def test_atomic_dir_all_or_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with storage.atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with storage.atomic_dir(target) as tmp:
        (tmp / "done").write_text("ok")
    assert (target / "done").read_text() == "ok"
    with pytest.raises(FileExistsError):
        with storage.atomic_dir(target):
            pass


def test_recover_tidies_what_a_killed_write_left(tmp_path):
    """What SIGKILL leaves (no handler ran): temporary siblings, and between atomic_dir's two
    renames the previous version under .NAME.old with NAME missing, which is put back."""
    target, other = tmp_path / "run", tmp_path / "other"
    other.mkdir()
    (tmp_path / ".run.x1.tmp").mkdir()                    # atomic_dir killed while filling
    (tmp_path / ".run.resume.x2.tmp").mkdir()             # ... a sibling's of the same run
    (tmp_path / ".run.json.x3.tmp").write_text("{")       # write_json killed before its rename
    (tmp_path / ".run.old").mkdir()
    (tmp_path / ".run.old" / "done").write_text("v1")     # killed between the renames
    storage.recover(target)
    assert (target / "done").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "run"]
    (tmp_path / ".run.old").mkdir()                       # killed after the second rename
    storage.recover(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "run"]
    storage.recover(tmp_path / "never")                   # nothing to do


def test_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FAITHFUL_HOME", str(tmp_path))
    assert storage.runs_dir() == tmp_path / "runs"
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(tmp_path / "d"))
    assert storage.shared_data_dir() == tmp_path / "d"


def test_deferred_interrupt_flags_the_first_ctrl_c_raises_the_second_and_restores_the_handler():
    import os
    import signal
    import threading

    before = signal.getsignal(signal.SIGINT)
    with storage.deferred_interrupt() as interrupt:
        assert not interrupt.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested  # flagged, not raised
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # the handler runs between bytecodes
                pass
    assert signal.getsignal(signal.SIGINT) is before
    seen = []
    thread = threading.Thread(target=lambda: seen.append(storage.deferred_interrupt().__enter__().requested))
    thread.start()
    thread.join()
    assert seen == [False] and signal.getsignal(signal.SIGINT) is before  # off the main thread: untouched


def test_slug_and_result_dir(home):
    assert storage.slug("faithful (bos, T=1)") == "faithful-bos-t-1"
    assert storage.slug("meta-llama/Llama-3.2-1B") == "meta-llama-llama-3.2-1b"
    assert storage.result_dir("meta-llama/Llama-3.2-1B", "sfr") == home / "results" / "meta-llama-llama-3.2-1b" / "sfr"


def test_every_result_follows_one_protocol(tmp_path):
    import dataclasses

    import matplotlib.figure
    import numpy as np

    import faithful

    results = [v for k, v in vars(faithful).items() if isinstance(v, type) and dataclasses.is_dataclass(v)
               and k.endswith(("Result", "Table", "Matrix", "Stats"))]
    assert len(results) == 9
    for cls in results:
        assert issubclass(cls, storage.Result) and "name" in {f.name for f in dataclasses.fields(cls)}, cls
        assert "save" not in vars(cls) and "plot" not in vars(cls), f"{cls.__name__} has its own save/plot"
    sims = np.array([0.9, 0.2], dtype=np.float32)
    r = faithful.SFRResult(0.5, 0.5, 0.5, 0.5, 0.7, np.array([[0, 1], [1, 0]]), sims, 2, 2, name="a pair (T=1)")
    assert isinstance(r.figure(), matplotlib.figure.Figure)
    path = r.save(tmp_path)
    assert path == tmp_path / "a-pair-t-1.json" and path.with_suffix(".png").stat().st_size > 1000
