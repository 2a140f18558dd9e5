import nbformat
import pytest

from faithful.__main__ import main


def test_help_lists_the_steps(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for step in ("convert", "generate", "train", "stats", "sfr", "ffr", "fidelity", "probe", "report", "all",
                 "notebooks"):
        assert step in out


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        main(["train", "--profile", "huge"])


def test_notebooks_step_executes_and_keeps_a_copy(home, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 6 * 7\nx")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    main(["notebooks", str(path)])
    done = nbformat.read(home / "results" / "notebooks" / "n.ipynb", as_version=4)
    assert done.cells[0].outputs[0]["data"]["text/plain"] == "42"
    assert not nbformat.read(path, as_version=4).cells[0].outputs  # the source stays clean


def test_generate_prints_the_dataset_it_made(home, tiny_model, monkeypatch, capsys):
    import faithful
    import faithful.__main__ as cli
    from faithful.data import generate

    monkeypatch.setattr(faithful, "load_model", lambda name: tiny_model)
    small = dict(n_tokens=40, max_length=8, batch_size=4, progress=False)
    monkeypatch.setattr(cli, "faithful_dataset_for",
                        lambda model, profile: generate.generate_faithful_dataset(model, **small))
    main(["generate", "--profile", "smoke"])
    folder = capsys.readouterr().out.strip()
    assert len(faithful.load_faithful_dataset(folder)) > 0
