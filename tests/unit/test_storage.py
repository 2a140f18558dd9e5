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


def test_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FAITHFUL_HOME", str(tmp_path))
    assert storage.runs_dir() == tmp_path / "runs"
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(tmp_path / "d"))
    assert storage.shared_data_dir() == tmp_path / "d"
