"""Run folders: names, listing and curves."""
import faithful
from faithful.sae import runs
from faithful.data.corpora import dataset_label
from faithful.sae.runs import read_curves, write_curves


def test_dataset_label_keeps_decimal_settings(tmp_path):
    a = tmp_path / "faithful-smollm2-135m-bos-t1.5-p0.9-len256-s42"
    b = tmp_path / "faithful-smollm2-135m-bos-t1.2-p0.9-len256-s42"
    a.mkdir(), b.mkdir()
    assert dataset_label(a) == a.name and dataset_label(a) != dataset_label(b)
    f = tmp_path / "wiki.v2.jsonl.gz"
    f.write_bytes(b"")
    assert dataset_label(f) == "wiki.v2"
    assert dataset_label("wikipedia_en_sample") == "wikipedia_en_sample"


def test_curves_round_trip_and_missing_file(tmp_path):
    rows = [{"step": 1, "tokens": 256, "mse": 2.5}, {"step": 2, "tokens": 512, "mse": 1.25}]
    write_curves(tmp_path, rows)
    assert read_curves(tmp_path) == rows
    assert read_curves(tmp_path / "absent") == []


def test_run_dir_layout_and_public_names(home):
    path = faithful.run_dir("smollm2-135m", "wiki", "blocks.22.hook_resid_post", 49, "cpu")
    assert path.parts[-5:] == ("smollm2-135m", "wiki", "blocks.22.hook_resid_post", "cpu", "seed49")
    assert path.is_relative_to(home)
    assert faithful.list_runs is runs.list_runs and faithful.list_runs("nothing-here") == []
