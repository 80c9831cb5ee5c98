"""Steering on the real packaged model (Gemma-3-270M): what the notebooks' tiny models cannot check. Everything else about
glp_nb.steer, glp_nb.scoring and glp_nb.judge is tested next to its code in nbs/09_steering, nbs/scoring and nbs/judge."""
import numpy as np
import pytest

from glp_nb.core import ModelCfg
from glp_nb.models import encode, load_llm
from glp_nb.steer import generate, greedy_match, next_logits
from glp_nb.scoring import cont_nll


@pytest.fixture(scope="module")
def gemma(): return load_llm(ModelCfg())


def test_real_model_batch_equals_single(gemma):
    "Left padding on Gemma-3 (sliding + full attention, its own pad id): a batch gives each prefix its own greedy continuation."
    seqs = encode(gemma, ["I'm still", "Also last year, the government announced plans"])
    batch = generate(gemma, seqs, 4, batch_size=2)
    single = [generate(gemma, [s], 4)[0] for s in seqs]
    assert all(greedy_match(b, s1, lambda k, p=p, b=b: next_logits(gemma, p + b[:k])) for p, b, s1 in zip(seqs, batch, single))
    nll = cont_nll(gemma, seqs, batch)
    assert np.all(nll < 4)  # greedy continuations are likely under the same model
