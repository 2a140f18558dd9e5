"""The precision policy: bf16 only where it measured faster, one setting and the keywords override
it, bad values are refused, and with fp32 chosen no path runs a bf16 operation."""
import warnings

import datasets
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import faithful
from faithful import precision, storage
from faithful.data.generate import read_meta
from faithful.precision import ProductTiming
from known_saes import identity_sae

SHARED = storage.shared_data_dir()  # read before the `home` fixture moves FAITHFUL_HOME
SLOW = ProductTiming("cpu", 250.0, 0.4, False, "a test CPU whose bf16 is emulated")
FAST = ProductTiming("cpu", 250.0, 1200.0, True, "a test CPU with AMX")


@pytest.fixture
def timing(monkeypatch):
    """Call with SLOW or FAST: the probe measures that (no environment setting in the way)."""
    monkeypatch.delenv(precision.ENV, raising=False)
    monkeypatch.setattr(precision, "_warned", set())

    def use(t):
        monkeypatch.setattr(precision, "product_timing", lambda device="cpu": t)
    return use


def test_auto_follows_the_measured_products(timing):
    timing(SLOW)
    assert precision.choose("cpu") == "fp32"
    timing(FAST)
    assert precision.choose("cpu") == "bf16"


def test_setting_and_keyword_override_the_measurement(timing, monkeypatch):
    timing(FAST)
    monkeypatch.setenv(precision.ENV, "fp32")
    assert precision.choose("cpu") == "fp32"
    assert precision.choose("cpu", True) == "bf16"      # autocast=True beats the setting
    monkeypatch.setenv(precision.ENV, " BF16 ")
    assert precision.choose("cpu") == "bf16"
    assert precision.choose("cpu", False) == "fp32"     # autocast=False too
    monkeypatch.setenv(precision.ENV, "auto")
    assert precision.choose("cpu") == "bf16"


def test_unknown_setting_lists_the_accepted_values(timing, monkeypatch):
    monkeypatch.setenv(precision.ENV, "fp16")
    with pytest.raises(ValueError, match=r"FAITHFUL_PRECISION='fp16'.*auto, fp32, bf16"):
        precision.choose("cpu")
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision.choose("cpu", "half")


def test_asking_for_slow_bf16_works_with_one_warning(timing):
    timing(SLOW)
    with pytest.warns(RuntimeWarning, match=r"0\.4 GFLOP/s against 250 in fp32 \(625x slower"):
        assert precision.choose("cpu", "bf16") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.choose("cpu", True) == "bf16"  # once per device and process
    timing(FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.choose("cpu", "bf16") == "bf16"


def test_bf16_just_faster_is_not_enough_for_auto(timing):
    timing(ProductTiming("cpu", 250.0, 275.0, False, "a test CPU near parity"))
    assert precision.choose("cpu") == "fp32"
    with pytest.warns(RuntimeWarning, match=r"only 1\.1x as fast; auto asks 1\.25x"):
        assert precision.choose("cpu", "bf16") == "bf16"


def test_the_real_probe_measures_both_or_says_why_not():
    t = precision.product_timing("cpu")
    assert t.fp32_gflops > 0
    if precision.cpu_bf16_flags():
        assert t.bf16_gflops > 0 and t.bf16_fast == (t.bf16_gflops >= precision.BF16_MARGIN * t.fp32_gflops)
    else:
        assert t.bf16_gflops is None and not t.bf16_fast and "without bf16" in t.reason
    assert precision.choose("cpu", "auto") == ("bf16" if t.bf16_fast else "fp32")


class Bf16Ops(TorchDispatchMode):
    """Records every operation that receives a bf16 tensor."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in leaves):
            self.seen.append(str(func))
        return func(*args, **kwargs)


TEXTS = [f"The {w} sat on the mat number {i}, and then it ran to the garden." for i, w in
         enumerate(["cat", "dog", "bird", "fox"] * 10)]


def every_path(model, home):
    """Sampling, the training stream and the SAE step, metrics, probing, FFR and the browser's examples."""
    out = {}
    folder = faithful.generate_faithful_dataset(model, 40, out_dir=home / "gen", batch_size=4, max_length=8)
    out["sampling"] = read_meta(folder)["settings"]["dtype"]
    paths = faithful.train_saes(model, datasets.Dataset.from_dict({"text": TEXTS}), dataset_name="toy",
                                seeds=(1,), n_tokens=256, batch_size=64, d_sae=32, k=4, context_size=16,
                                progress=False)
    out["training"] = storage.read_json(paths[0] / "faithful_run.json")["settings"]["precision"]
    sae = identity_sae(model.cfg.d_model)
    out["metrics"] = faithful.reconstruction_metrics(model, sae, TEXTS, n_tokens=60, context_size=16,
                                                     progress=False).precision
    out["probing"] = faithful.probe(model, sae, "sst2", n_train=8, n_test=4, context_size=16,
                                    progress=False).precision
    out["ffr"] = faithful.fake_feature_ratio(model, sae, n_tokens=60, seq_len=16).precision
    faithful.feature_examples(model, sae, TEXTS[:4], context_size=16, progress=False)
    return out


def test_with_fp32_chosen_no_path_runs_a_bf16_operation(tiny_model, home, timing, monkeypatch):
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(SHARED))
    timing(SLOW)
    with Bf16Ops() as ops:
        chosen = every_path(tiny_model, home)
    assert ops.seen == []
    assert chosen == {"sampling": "float32", "training": "fp32", "metrics": "fp32", "probing": "fp32",
                      "ffr": "fp32"}


def test_with_bf16_chosen_every_path_runs_bf16(tiny_model, home, timing, monkeypatch):
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(SHARED))
    timing(FAST)
    with Bf16Ops() as ops:
        chosen = every_path(tiny_model, home)
    assert any("mm" in op for op in ops.seen)  # the recorder sees bf16 products when there are some
    assert chosen == {"sampling": "bfloat16", "training": "bf16", "metrics": "bf16", "probing": "bf16",
                      "ffr": "bf16"}
