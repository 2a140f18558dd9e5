"""Shared fixtures. Unit tests use ``tiny-random`` (a 2-layer random model with SmolLM2's
tokenizer); tests marked ``integration`` use the embedded SmolLM2-135M."""
import os

import pytest
from toy import toy_dataset

os.environ.setdefault("FAITHFUL_PROFILE", "smoke")


@pytest.fixture(scope="session")
def tiny_model():
    import faithful

    return faithful.load_model("tiny-random", device="cpu", seed=0)


@pytest.fixture(scope="session")
def smollm2():
    import faithful

    return faithful.load_model("smollm2-135m", device="cpu")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A scratch FAITHFUL_HOME so that a test's data/, runs/, results/ vanish with it."""
    from faithful import storage

    models = storage.models_dir()
    monkeypatch.setenv("FAITHFUL_HOME", str(tmp_path))
    monkeypatch.setenv("FAITHFUL_MODELS_DIR", str(models))
    return tmp_path


@pytest.fixture
def texts():
    """The toy training corpus (``tests/toy.py``)."""
    return toy_dataset()
