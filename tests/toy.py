"""The training tests' toy corpus and settings (CPU and GPU tests share them)."""
import datasets

TEXTS = [f"The {w} sat on the mat number {i}, and then it ran to the {v} garden." for i, (w, v) in
         enumerate(zip(["cat", "dog", "bird", "fox", "cow"] * 8, ["red", "big", "old", "new"] * 10))]
SMALL = dict(n_tokens=1536, batch_size=128, d_sae=64, k=4, context_size=32, progress=False, profile="smoke")


def toy_dataset() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": TEXTS})
