"""Faithful generation on the embedded SmolLM2-135M: the KV-cache steppers agree with a full
forward pass, and a short generation reads as English."""
import re

import pytest
import torch

import faithful
from faithful.data import sampling
from faithful.data.generate import generate_faithful_dataset, load_faithful_dataset, read_meta

pytestmark = pytest.mark.integration

COMMON = {"the", "and", "of", "to", "a", "in", "is", "that", "for", "it", "with", "as", "was",
          "on", "are", "this", "be", "by", "you", "or", "i", "we", "can", "an", "from", "at"}


@pytest.mark.parametrize("backend", ["hf", "hooked"])
def test_cached_steps_match_a_full_forward_pass(smollm2, backend):
    text = " The quick brown fox jumps over the lazy dog and runs away"
    ids = [faithful.start_token_id(smollm2)] + smollm2.tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([ids, ids])
    with torch.inference_mode():
        full = smollm2(tokens)[:, :-1].float()
    stepper = (sampling.HFStepper(sampling.hf_source(smollm2), "cpu", torch.float32) if backend == "hf"
               else sampling.HookedStepper(smollm2, torch.float32))
    with torch.inference_mode():
        stepper.reset(2)
        steps = [stepper.step(tokens[:, :1])]
        for t in range(1, 6):
            steps.append(stepper.step(tokens[:, t:t + 1]))
        stepper.keep(torch.tensor([False, True]))  # drop row 0: row 1 must go on unchanged
        for t in range(6, len(ids) - 1):
            steps.append(torch.cat([steps[-1][:1] * 0, stepper.step(tokens[1:, t:t + 1])]))
    got = torch.stack(steps, dim=1)
    assert torch.allclose(got[1], full[1], atol=2e-3), (got[1] - full[1]).abs().max()
    assert torch.allclose(got[0, :6], full[0, :6], atol=2e-3)


def test_short_generation_reads_as_english(smollm2, home):
    path = generate_faithful_dataset(smollm2, 400, max_length=48, batch_size=8, progress=False)
    meta = read_meta(path)
    assert meta["settings"]["backend"] == "hf" and meta["start"] == "bos"
    ds = load_faithful_dataset(path)
    assert meta["tokens"] == sum(ds["tokens"]) >= 400
    text = " ".join(ds["text"])
    ascii_share = sum(c.isascii() for c in text) / len(text)
    words = re.findall(r"[a-z]+", text.lower())
    common_share = sum(w in COMMON for w in words) / len(words)
    assert ascii_share > 0.9, text[:500]
    assert common_share > 0.12, text[:500]      # English prose: ~25–40 % of words are these
    assert len(set(words) & COMMON) >= 8, text[:500]
