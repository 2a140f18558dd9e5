"""Every profile's budgets fit together: equal passes, held-out text, seeds for intervals."""
import pytest

from faithful.config import PROFILES
from faithful.data.splits import EVAL_FRACTION


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_budgets_give_one_pass_and_intervals(name):
    p = PROFILES[name]
    # the Faithful dataset's training split holds the training budget with room for the split's
    # randomness, so the Faithful SAE sees each token once, like every other
    assert p.faithful_tokens * (1 - EVAL_FRACTION) >= 1.05 * p.train_tokens
    # notebook 04's §5.4 runs train a quarter budget on the start variants, sampled to stats_tokens
    assert p.stats_tokens * (1 - EVAL_FRACTION) >= 1.05 * (p.train_tokens // 4)
    assert p.stats_tokens <= p.faithful_tokens
    assert len(set(p.seeds)) >= 3 and p.fake_draws >= 2 or name == "paper"
    assert p.corpora[0] == "faithful" and "faithful" in p.eval_sets
