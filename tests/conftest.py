"""Shared fixtures. Unit tests use ``tiny-random`` (a 2-layer random model with SmolLM2's
tokenizer); tests marked ``integration`` use the embedded SmolLM2-135M."""
import os

import pytest

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
def portable_build(monkeypatch):
    """Call it to switch faithful.native, for this test, to its kernels compiled without AVX-512
    (their portable loops, as on Arm or older x86); skips where that flag is not x86's."""
    import platform

    from faithful import native

    def switch():
        if platform.machine().lower() not in ("x86_64", "amd64"):
            pytest.skip("-mno-avx512f is an x86 flag: the native build is the portable one here")
        monkeypatch.setattr(native, "FLAGS", native.FLAGS + ("-mno-avx512f",))
        monkeypatch.setattr(native, "_lib", None)
        if native.library() is None:
            pytest.fail("faithful.native could not be compiled without AVX-512")
    return switch


@pytest.fixture(params=["native", "portable", "torch"])
def kernels(request, monkeypatch):
    """Run a test with faithful.native's compiled kernels; with them compiled without AVX-512
    (``portable_build``); then with their torch equivalents (as on a GPU, with FAITHFUL_NATIVE=0,
    or without a C compiler)."""
    from faithful import native

    if request.param == "torch":
        monkeypatch.setattr(native, "_lib", False)
    elif request.param == "portable":
        request.getfixturevalue("portable_build")()
    elif native.library() is None:
        pytest.fail("faithful.native could not be compiled: the fast path is untested")
    return request.param
