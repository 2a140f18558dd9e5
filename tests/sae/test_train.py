"""SAE training on the tiny random model: end to end, seeds, determinism, reuse, resume, bad input."""
import copy
import json

import datasets
import pytest
import torch
from safetensors.torch import load_file
from sae_lens.config import SAETrainerConfig

import faithful
from faithful import storage
from faithful.data.splits import take_part
from faithful.sae import train
from faithful.sae.runs import CURVES_FILE, SNAPSHOT_FILE
from faithful.sae.topk_step import TopKTrainer
from toy import SMALL, TEXTS
from faithful.sae.stream import ActivationStream, pack_contexts

SHARED = storage.shared_data_dir()  # read before the `home` fixture moves FAITHFUL_HOME


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path / "sae_weights.safetensors"))


def _same_weights(paths_a, paths_b) -> bool:
    """Every run folder of ``paths_a`` holds bit-for-bit the weights of its partner in ``paths_b``."""
    pairs = [(_weights(a), _weights(b)) for a, b in zip(paths_a, paths_b, strict=True)]
    return all(torch.equal(wa[n], wb[n]) for wa, wb in pairs for n in wa)


def test_end_to_end_checkpoints_metadata_and_curves(tiny_model, texts, home):
    paths = faithful.train_saes(tiny_model, texts, dataset_name="toy", seeds=(42, 49), **SMALL)
    assert [p.name for p in paths] == ["seed42", "seed49"]
    assert paths[0] == faithful.run_dir(tiny_model, "toy", "blocks.1.hook_resid_post", 42, "smoke")
    for p, seed in zip(paths, (42, 49)):
        sae = faithful.load_sae(p)
        assert sae.cfg.d_sae == 64 and sae.cfg.k == 4 and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
        assert list(sae.cfg.metadata.seqpos_slice) == [1, None]
        meta = storage.read_json(p / train.RUN_FILE)
        assert meta["seed"] == seed and meta["tokens_seen"] == 1536
        assert meta["settings"]["model"] == "tiny-random" and len(meta["settings"]["fingerprint"]) == 16
        assert 0 < meta["lm_seconds"] < meta["seconds"] and 0 < meta["sae_seconds"] < meta["seconds"]
        rows = [json.loads(x) for x in (p / CURVES_FILE).read_text().splitlines()]
        assert rows[-1]["tokens"] == 1536
        assert {"mse", "explained_variance", "explained_variance_without_sinks", "l0", "dead_latents"} <= set(rows[-1])
        assert all(r["explained_variance_without_sinks"] <= 1 for r in rows)
        assert all(r["l0"] <= 4 for r in rows)
        assert rows[-1]["mse"] < rows[0]["mse"]  # it learns
    runs = faithful.list_runs(tiny_model, "toy")
    assert sorted(r["seed"] for r in runs) == [42, 49]
    fig = faithful.plot_training_curves(paths, path=home / "curves.png")
    assert (home / "curves.png").stat().st_size > 1000 and len(fig.axes) == 5


def test_seeds_change_only_the_initialisation(tiny_model, texts, home):
    settings = train.TrainSettings(model="m", dataset="d", fingerprint="f", hook="blocks.1.hook_resid_post",
                                   d_in=64, d_sae=64, k=4, lr=1e-3, n_tokens=1, context_size=32, batch_size=1)
    a, b, a2 = (train.make_sae(settings, s).W_dec.detach() for s in (42, 49, 42))
    assert torch.equal(a, a2) and not torch.allclose(a, b)
    # same seed and data twice: identical final weights; the other seed differs
    first = faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "a", **SMALL)
    again = faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "b", **SMALL)
    w42, w49, w42b = _weights(first[0]), _weights(first[1]), _weights(again[0])
    assert all(torch.equal(w42[n], w42b[n]) for n in w42)
    assert not torch.allclose(w42["W_dec"], w49["W_dec"])


def test_reloaded_checkpoint_gives_the_trained_sae_outputs(tiny_model, texts, home, monkeypatch):
    trained = {}
    finish = train._Run._finish

    def capture(self):
        finish(self)
        trained.update(self.saes)

    monkeypatch.setattr(train._Run, "_finish", capture)
    (path,) = faithful.train_saes(tiny_model, texts, seeds=(42,), **SMALL)
    contexts, _, _ = pack_contexts(tiny_model, texts, 32, 256)
    x = ActivationStream(tiny_model, contexts, "blocks.1.hook_resid_post", block_contexts=8).next_batch(64)
    loaded = faithful.load_sae(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained[42](x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close((loaded.encode(x) > 0).float(), (trained[42].encode(x) > 0).float())
    assert faithful.load_sae(loaded) is loaded
    with pytest.raises(ValueError, match="checkpoint folder"):
        faithful.load_sae(home)


def test_activation_scale_is_folded_into_the_saved_sae(tiny_model, texts, home, monkeypatch):
    """Training sees activations scaled to mean norm √d_in (SAELens's expected_average_only_in);
    the saved SAE takes raw activations: saved(x) = trained(x · s) / s."""
    import copy
    seen = {}
    init, finish = train._Run._init_from_data, train._Run._finish

    def capture_init(self):
        init(self)
        seen["first_block"] = self.stream.peek().clone()

    def capture_finish(self):
        tr = self.trainers[42]
        seen["factor"], seen["unfolded"] = tr.activation_scaler.scaling_factor, copy.deepcopy(tr.sae)
        finish(self)
    monkeypatch.setattr(train._Run, "_init_from_data", capture_init)
    monkeypatch.setattr(train._Run, "_finish", capture_finish)
    (path,) = faithful.train_saes(tiny_model, texts, seeds=(42,), **SMALL)
    factor, x = seen["factor"], seen["first_block"][:64]
    d_in = tiny_model.cfg.d_model
    assert abs((seen["first_block"] * factor).norm(dim=-1).mean().item() - d_in ** 0.5) < 1e-3 * d_in ** 0.5
    loaded = faithful.load_sae(path)
    assert loaded.cfg.normalize_activations == "none"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), seen["unfolded"](x * factor) / factor, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(loaded(x), seen["unfolded"](x), rtol=1e-2)  # without the fold: wrong


def test_all_seeds_share_one_language_model_pass(tiny_model, texts, home, monkeypatch):
    from faithful.sae import stream as train_stream
    real, batches = train_stream.iter_activations, []

    def counting(*args, **kwargs):
        for out in real(*args, **kwargs):
            batches.append(out[0].shape[0])
            yield out
    monkeypatch.setattr(train_stream, "iter_activations", counting)
    faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "one", **SMALL)
    one = list(batches)
    batches.clear()
    faithful.train_saes(tiny_model, texts, seeds=(42, 49, 7), out_dir=home / "three", **SMALL)
    assert one and batches == one  # the same contexts through the model, once, for three seeds


def test_finished_run_is_reused_and_other_settings_refused(tiny_model, texts, home):
    (path,) = faithful.train_saes(tiny_model, texts, seeds=(42,), **SMALL)
    stamp = (path / "sae_weights.safetensors").stat().st_mtime_ns
    assert faithful.train_saes(tiny_model, texts, seeds=(42,), **SMALL) == [path]
    assert (path / "sae_weights.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match=r"\(k 4 -> 5\): pass overwrite=True"):
        faithful.train_saes(tiny_model, texts, seeds=(42,), **{**SMALL, "k": 5})


def test_geometric_median_known_answers():
    line = torch.tensor([[0.0], [1.0], [10.0]])
    torch.testing.assert_close(train.geometric_median(line), torch.tensor([1.0]), atol=1e-3, rtol=0)
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    torch.testing.assert_close(train.geometric_median(square), torch.zeros(2), atol=1e-6, rtol=0)
    # an outlier drags the mean to x = 200 but leaves the median inside the square
    median = train.geometric_median(torch.cat([square, torch.tensor([[1000.0, 0.0]])]))
    assert median.abs().max() < 1 and median[0] > 0


def test_decoder_bias_starts_at_the_median_and_spreads_the_first_topk():
    """Activations with a large common offset: from b_dec = 0 the offset decides TopK and the
    same few latents win on every token; from the geometric median the tokens' own parts do."""
    gen = torch.Generator().manual_seed(0)
    x = 10 * torch.randn(64, generator=gen) + torch.randn(512, 64, generator=gen)
    settings = train.TrainSettings(model="m", dataset="d", fingerprint="f", hook="h", d_in=64, d_sae=256,
                                   k=4, lr=1e-3, n_tokens=1, context_size=32, batch_size=1)
    sae = train.make_sae(settings, 42)
    with torch.no_grad():
        from_zero = sae.encode(x).count_nonzero(0).gt(0).sum()
        sae.b_dec.copy_(train.geometric_median(x))
        from_median = sae.encode(x).count_nonzero(0).gt(0).sum()
    assert from_zero < 40 and from_median > 150, (from_zero, from_median)


def test_training_starts_every_seed_at_the_first_blocks_median(tiny_model, texts, home, monkeypatch):
    seen = []
    init = train._Run._init_from_data

    def capture(self):
        init(self)
        factor = self.trainers[self.seeds[0]].activation_scaler.scaling_factor
        seen.append((train.geometric_median(self.stream.peek() * factor),
                     [tr.sae.b_dec.detach().clone() for tr in self.trainers.values()]))
    monkeypatch.setattr(train._Run, "_init_from_data", capture)
    faithful.train_saes(tiny_model, texts, seeds=(42, 49), **SMALL)
    faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "z", b_dec_init="zeros", **SMALL)
    (median, b_decs), (_, zeros) = seen
    assert median.norm() > 0 and all(torch.equal(b, median) for b in b_decs)
    assert not zeros[0].any()


def _interrupt_at_batch(monkeypatch, call: int) -> dict:
    """Make the activation stream raise KeyboardInterrupt on its ``call``-th batch (a count in a dict)."""
    real, calls = ActivationStream.next_batch, {"n": 0}

    def dying(self, n):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(self, n)

    monkeypatch.setattr(ActivationStream, "next_batch", dying)
    return calls


def test_interrupted_run_resumes_to_the_same_weights(tiny_model, texts, home, monkeypatch):
    whole = faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "whole", **SMALL)
    real = ActivationStream.next_batch
    _interrupt_at_batch(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "cut", checkpoint_every=3, **SMALL)
    assert not (home / "cut" / "seed42").exists()  # nothing half-written that would load
    assert storage.read_json(home / "cut" / ".seed42.resume" / "resume.json")["step"] == 6
    monkeypatch.setattr(ActivationStream, "next_batch", real)
    resumed = faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "cut", **SMALL)
    assert _same_weights(whole, resumed)
    assert not (home / "cut" / ".seed42.resume").exists()
    for a, b in zip(whole, resumed):  # the snapshots taken before the cut survive it
        sa, sb = (load_file(str(p / SNAPSHOT_FILE)) for p in (a, b))
        assert {k.split(".")[0] for k in sa} == {"tokens_128", "tokens_384", "tokens_768"}
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_snapshots_hold_the_inference_weights_saelens_would_save():
    settings = train.TrainSettings(model="m", dataset="d", fingerprint="f", hook="blocks.0.hook_resid_post",
                                   d_in=16, d_sae=32, k=4, lr=1e-3, n_tokens=256, context_size=16, batch_size=64)
    sae = train.make_sae(settings, seed=0)
    tr = TopKTrainer(cfg=SAETrainerConfig(total_training_samples=256, train_batch_size_samples=64, lr=1e-3,
                                                 lr_end=1e-3, device="cpu", autocast=False), sae=sae, data_provider=iter(()))
    tr.activation_scaler.scaling_factor = 2.5
    snap = train._inference_weights(tr, "tokens_64.")
    folded = copy.deepcopy(sae)
    folded.fold_activation_norm_scaling_factor(2.5)  # what training's end does, then save_inference_model
    expected = {k: v.detach().clone() for k, v in folded.state_dict().items()}
    folded.process_state_dict_for_saving_inference(expected)
    assert sorted(snap) == sorted(f"tokens_64.{k}" for k in expected)
    for k, w in expected.items():
        torch.testing.assert_close(snap[f"tokens_64.{k}"].float(), w, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(snap["tokens_64.W_enc"].float(), sae.W_enc.detach(), rtol=1e-3, atol=1e-3)


def test_sfr_over_training_reads_the_snapshots(tiny_model, texts, home):
    paths = faithful.train_saes(tiny_model, texts, seeds=(42, 49, 7), out_dir=home / "snap", **SMALL)
    snaps = faithful.load_snapshots(paths[0])
    assert list(snaps) == [128, 384, 768, 1536]  # 1/8, 1/4 and 1/2 of the 12 steps, and the end
    assert not torch.equal(snaps[768].W_dec, snaps[1536].W_dec)
    torch.testing.assert_close(snaps[1536].W_dec, faithful.load_sae(paths[0]).W_dec)
    curve = faithful.sfr_over_training(paths)
    assert list(curve) == [128, 384, 768, 1536] and all(len(v) == 3 for v in curve.values())
    assert curve[1536] == faithful.sfr_table({"x": paths}, chance=False).rows[0]["sfr_pairs"]
    with pytest.raises(ValueError, match="two or more"):
        faithful.sfr_over_training(paths[:1])


def test_ctrl_c_checkpoints_after_the_current_step_then_resumes_to_the_same_weights(tiny_model, texts, home,
                                                                                   monkeypatch):
    import os
    import signal

    whole = faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "whole", **SMALL)
    real, calls = TopKTrainer.step, []

    def step(tr, batch):  # Ctrl-C arrives during seed 42's 8th step, before seed 49's
        calls.append(1)
        if len(calls) == 15:
            os.kill(os.getpid(), signal.SIGINT)
        return real(tr, batch)
    monkeypatch.setattr(TopKTrainer, "step", step)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 8 of"):
        faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "cut", **SMALL)
    assert signal.getsignal(signal.SIGINT) is before  # the usual Ctrl-C again
    assert len(calls) == 16  # both seeds finished step 8, and nothing ran after it
    assert storage.read_json(home / "cut" / ".seed49.resume" / "resume.json")["step"] == 8
    monkeypatch.setattr(TopKTrainer, "step", real)
    resumed = faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "cut", **SMALL)
    assert _same_weights(whole, resumed)
    # during the last step: the finished run is saved, and the caller still stops
    calls.clear()
    monkeypatch.setattr(TopKTrainer, "step", step)
    with pytest.raises(KeyboardInterrupt, match="finished its last step and was saved"):
        faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "last", n_tokens=1024,
                            **{k: v for k, v in SMALL.items() if k != "n_tokens"})  # 8 steps: call 15 is the last
    assert (home / "last" / "seed49" / train.RUN_FILE).is_file() and len(calls) == 16


def test_ignored_sigint_stays_ignored():
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with storage.deferred_interrupt() as interrupt:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and not interrupt.requested
    finally:
        signal.signal(signal.SIGINT, previous)


_KILLED_CHILD = """
import os, signal, sys, datasets, faithful
from faithful.sae import runs, train
mode, calls = sys.argv[2], []
if mode == "after":  # right after the step-6 checkpoint of both seeds is complete
    checkpoint = train._Run._checkpoint
    def killing(self, step):
        checkpoint(self, step)
        if step == 6:
            os.kill(os.getpid(), signal.SIGKILL)
    train._Run._checkpoint = killing
else:  # while seed 49's step-6 checkpoint is half-written (seed 42's is complete)
    save = train.save_trainer_state
    def killing(trainer, path):
        calls.append(path)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        save(trainer, path)
    train.save_trainer_state = killing
m = faithful.load_model("tiny-random", device="cpu", seed=0)
faithful.train_saes(m, datasets.Dataset.from_dict({"text": TEXTS}), seeds=(42, 49),
                    out_dir=sys.argv[1], checkpoint_every=3, **SETTINGS)
"""


@pytest.mark.parametrize("mode", ["after", "during"])
def test_hard_kill_leaves_nothing_that_loads_and_training_ends_with_the_same_weights(
        tiny_model, texts, home, monkeypatch, mode):
    """SIGKILL: no exception handler runs. Killed after a checkpoint, the run resumes from it;
    killed while one seed's checkpoint is half-written, the seeds' checkpoints disagree and the
    run restarts cleanly. Either way the temporary folders go and the weights are those of an
    uninterrupted run (to float rounding)."""
    import signal
    import subprocess
    import sys

    script = home / "child.py"
    script.write_text(f"TEXTS = {TEXTS!r}\nSETTINGS = {SMALL!r}\n" + _KILLED_CHILD)
    cut = home / "cut"
    child = subprocess.run([sys.executable, str(script), str(cut), mode], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert not (cut / "seed42").exists() and not (cut / "seed49").exists()
    steps = {s: storage.read_json(cut / f".seed{s}.resume" / "resume.json")["step"] for s in (42, 49)}
    assert steps == ({42: 6, 49: 6} if mode == "after" else {42: 6, 49: 3})
    assert [p.name[:16] for p in cut.glob("*.tmp")] == ([] if mode == "after" else ["..seed49.resume."])
    calls = {"n": 0}
    real = ActivationStream.next_batch

    def counting(self, n):
        calls["n"] += 1
        return real(self, n)
    monkeypatch.setattr(ActivationStream, "next_batch", counting)
    ended = faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=cut, **SMALL)
    n_steps = SMALL["n_tokens"] // SMALL["batch_size"]
    assert calls["n"] == (n_steps - 6 if mode == "after" else n_steps)  # resumed / restarted
    assert sorted(p.name for p in cut.iterdir()) == ["seed42", "seed49"]
    whole = faithful.train_saes(tiny_model, texts, seeds=(42, 49), out_dir=home / "whole", **SMALL)
    for a, b in zip(whole, ended):
        wa, wb = _weights(a), _weights(b)
        # Another process did the first steps: bit-for-bit equality is the in-process test's
        # (test_interrupted_run_resumes_to_the_same_weights); a wrong resume is off by far more.
        for n in wa:
            torch.testing.assert_close(wb[n], wa[n], rtol=1e-5, atol=1e-6)


def test_checkpoint_of_other_settings_is_discarded_and_training_restarts(tiny_model, texts, home, monkeypatch):
    real = ActivationStream.next_batch
    _interrupt_at_batch(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "cut", checkpoint_every=3, **SMALL)
    assert (home / "cut" / ".seed42.resume").is_dir()
    monkeypatch.setattr(ActivationStream, "next_batch", real)
    other = {**SMALL, "k": 5}
    (restarted,) = faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "cut", **other)
    (fresh,) = faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "fresh", **other)
    assert _same_weights([restarted], [fresh])
    assert not (home / "cut" / ".seed42.resume").exists()


def test_default_checkpoints_follow_wall_time(tiny_model, texts, home, monkeypatch):
    """Without checkpoint_every, a checkpoint is written once CHECKPOINT_SECONDS have passed."""
    calls = _interrupt_at_batch(monkeypatch, 5)
    monkeypatch.setattr(train, "CHECKPOINT_SECONDS", 0.0)
    with pytest.raises(KeyboardInterrupt):
        faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "t", **SMALL)
    assert storage.read_json(home / "t" / ".seed42.resume" / "resume.json")["step"] == 4
    monkeypatch.setattr(train, "CHECKPOINT_SECONDS", 1e9)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        faithful.train_saes(tiny_model, texts, seeds=(49,), out_dir=home / "t", **SMALL)
    assert not (home / "t" / ".seed49.resume").exists()  # a short run writes none


def test_stream_batches_straddle_blocks_without_loss(tiny_model, texts):
    contexts, epochs, _ = pack_contexts(tiny_model, texts, 16, 600)
    assert epochs == 1 and (contexts[:, 0] == faithful.start_token_id(tiny_model)).all()
    stream = ActivationStream(tiny_model, contexts, "blocks.0.hook_resid_post", block_contexts=3)
    n_total = sum(len(stream.block_activations(b)) for b in range(stream.n_blocks))
    got = sum(len(stream.next_batch(100)) for _ in range(n_total // 100))
    assert got == (n_total // 100) * 100 and stream.block >= stream.n_blocks - 1
    more, epochs, _ = pack_contexts(tiny_model, texts, 16, 20_000)
    assert epochs > 1  # a small dataset is repeated, and says so


@pytest.mark.parametrize("bad, match", [
    (dict(layer=2), "out of range"),
    (dict(context_size=512), "n_ctx"),
    (dict(k=64), "k=64"),
    (dict(architecture="gated"), "topk"),
    (dict(b_dec_init="mean"), "b_dec_init"),
    # zeros are refused, not replaced by the preset's values
    (dict(k=0), "k=0"),
    (dict(d_sae=0), "d_sae=0"),
    (dict(lr=0), "lr=0"),
    (dict(n_tokens=0), "n_tokens"),
    (dict(batch_size=0), "batch_size"),
    (dict(context_size=0), "context_size=0"),
])
def test_bad_arguments(tiny_model, texts, home, bad, match):
    with pytest.raises(ValueError, match=match):
        faithful.train_saes(tiny_model, texts, **{**SMALL, **bad})


@pytest.mark.parametrize("bad, match", [
    (dict(seeds=42), r"seeds must be a tuple of integers, e\.g\. seeds=\(42,\)"),
    (dict(seeds=(42, "49")), "seeds must be a tuple of integers"),
    (dict(k=4.5), "k must be a whole number, got 4.5"),
    (dict(batch_size=128.0), "batch_size must be a whole number"),
])
def test_wrong_types_are_named(tiny_model, texts, home, bad, match):
    with pytest.raises(TypeError, match=match):
        faithful.train_saes(tiny_model, texts, **{**SMALL, **bad})


def test_numpy_integers_are_whole_numbers(tiny_model, texts, home):
    import numpy as np

    plain = faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "plain", **SMALL)
    numpy = faithful.train_saes(tiny_model, texts, seeds=np.array([42]), out_dir=home / "numpy",
                                **{**SMALL, "k": np.int64(SMALL["k"]), "batch_size": np.int32(SMALL["batch_size"])})
    settings = [storage.read_json(run[0] / train.RUN_FILE)["settings"] for run in (numpy, plain)]
    assert settings[0] == settings[1]


def test_bad_datasets(tiny_model, home):
    with pytest.raises(ValueError, match="sentence"):
        faithful.train_saes(tiny_model, datasets.Dataset.from_dict({"sentence": ["a b c"]}), **SMALL)
    with pytest.raises(ValueError, match="empty"):
        faithful.train_saes(tiny_model, datasets.Dataset.from_dict({"text": []}), **SMALL)
    with pytest.raises(ValueError, match="no tokens"):
        faithful.train_saes(tiny_model, datasets.Dataset.from_dict({"text": ["", ""]}), **SMALL)


@pytest.mark.skipif(SHARED is None, reason="no shared data folder")
def test_corpus_by_name_and_token_ids_rows(tiny_model, home, monkeypatch):
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(SHARED))
    (path,) = faithful.train_saes(tiny_model, "alpaca", seeds=(42,), **SMALL)
    assert path.parts[-4] == "alpaca"
    # Faithful-style rows: generated token ids are used as they are, not re-tokenised
    ids = datasets.Dataset.from_dict({"text": ["x", "y"], "token_ids": [[50, 60, 70] * 10, [80, 90] * 10]})
    contexts, _, _ = pack_contexts(tiny_model, ids, 8, 40)
    assert contexts[0].tolist() == [0, 50, 60, 70, 50, 60, 70, 50]
    assert contexts[4].tolist() == [0, 60, 70, 0, 80, 90, 80, 90]  # documents joined by the start token
    with pytest.raises(ValueError, match="special tokens only"):
        pack_contexts(tiny_model, datasets.Dataset.from_dict({"token_ids": [[1, 2, 3]]}), 8, 40)


def test_curve_points_are_saelens_log_dict_metrics():
    """The curves compute SAELens's log-dict metrics themselves (its dict costs every seed 3 ms a
    point): the same MSE, AuxK loss, explained variance, L0 and dead latents; and the sink-free
    explained variance as faithful.metrics.fidelity defines it, with a planted sink in the batch."""
    from sae_lens.config import SAETrainerConfig

    from faithful.activations import explained_variance, not_sinks

    settings = train.TrainSettings(model="m", dataset="d", fingerprint="", hook="blocks.0.hook_resid_post",
                                   d_in=16, d_sae=512, k=2, lr=1e-3, n_tokens=10 ** 4, context_size=8,
                                   batch_size=128)
    cfg = SAETrainerConfig(total_training_samples=10 ** 6, train_batch_size_samples=128, lr=1e-3, lr_end=1e-3,
                           device="cpu", autocast=False, dead_feature_window=1, feature_sampling_window=10)
    tr = TopKTrainer(cfg=cfg, sae=train.make_sae(settings, 0), data_provider=iter(()))
    tr.activation_scaler.scaling_factor = 1.0
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
    x[3] *= 60  # a sink
    for _ in range(3):
        out = tr.step(x)
        tr.n_training_steps += 1
    run = train._Run.__new__(train._Run)  # only _log's state
    run.curves, run.t_start = {0: []}, 0.0
    run._log(0, tr, out, train._BatchStats(out.sae_in))
    (row,) = run.curves[0]
    ref = tr.build_train_step_log_dict(out, tr.n_training_samples)
    assert ref["sparsity/dead_features"] > 0 and row["dead_latents"] == ref["sparsity/dead_features"]
    for key, ref_key in (("mse", "losses/mse_loss"), ("aux_loss", "losses/auxiliary_reconstruction_loss"),
                         ("explained_variance", "metrics/explained_variance"), ("l0", "metrics/l0")):
        assert row[key] == pytest.approx(ref[ref_key], rel=1e-5, abs=1e-7), key
    typical = not_sinks(out.sae_in)
    assert not typical[3] and typical.sum() == 127
    assert row["explained_variance_without_sinks"] == pytest.approx(
        explained_variance(out.sae_in[typical], out.sae_out[typical]), rel=1e-5)


def test_training_reads_only_the_training_split(tiny_model, texts, home):
    (path,) = faithful.train_saes(tiny_model, texts, seeds=(42,), out_dir=home / "split", **SMALL)
    meta = storage.read_json(path / train.RUN_FILE)
    assert meta["settings"]["documents"].startswith("train: ")
    held_out = take_part(texts, "eval")["text"]
    contexts, epochs, fingerprint = pack_contexts(tiny_model, take_part(texts, "train"), SMALL["context_size"],
                                                  SMALL["n_tokens"])
    assert held_out and meta["settings"]["fingerprint"] == fingerprint and meta["epochs"] == epochs
    _, _, everything = pack_contexts(tiny_model, texts, SMALL["context_size"], SMALL["n_tokens"])
    assert everything != fingerprint
