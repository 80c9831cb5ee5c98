"""OOD scoring on the real packaged model (what nbs/18_ood.ipynb cannot test with its tiny byte-level stand-in): the random-token
vocabulary of Gemma's tokenizer, token_acts against the model's own forward at every position after BOS, and score_texts end to end
on the smoke profile's GLP, SAE and train store when they exist (after `glp-reproduce --profile smoke`)."""
import numpy as np
import pytest
import torch

from glp_nb.core import get_profile
from glp_nb.harvest import assert_bf16_close
from glp_nb.ood import _vocab, token_sets, token_acts, score_texts, load_scorer, GLP_METHODS, BASE_METHODS, per_text


@pytest.fixture(scope="module")
def gemma():
    from glp_nb.models import load_llm
    return load_llm(get_profile("smoke").model)


def test_vocab_and_token_sets_on_gemma(gemma):
    from glp_nb.models import encode
    v = _vocab(gemma.tok)
    names = gemma.tok.convert_ids_to_tokens(v[:: max(1, len(v) // 2000)].tolist())
    assert not set(v.tolist()) & set(gemma.tok.all_special_ids)
    assert not any(n.startswith("<") and n.endswith(">") for n in names)
    assert len(v) > 0.5 * len(gemma.tok)                      # most of the vocabulary stays eligible
    ids = encode(gemma, ["The cat sat on the mat.", "Another, longer sentence about the weather today."], 16)
    ts = token_sets(gemma, ids, seed=0)
    assert [x[0] for x in ts["random"]] == [gemma.tok.bos_token_id] * 2
    assert [len(x) for x in ts["random"]] == [len(x) for x in ids]


def test_token_acts_match_forward_on_gemma(gemma):
    from glp_nb.models import encode, forward_to_layer
    ids = encode(gemma, ["def f(x):\n    return x + 1", "Hello there, general."], 12)
    x, lens = token_acts(gemma, ids)
    assert lens.tolist() == [len(i) - 1 for i in ids]
    for k, i in enumerate(ids):
        h = forward_to_layer(gemma, torch.tensor([i]))[0, 1:]
        got = x[int(lens[:k].sum()):int(lens[:k + 1].sum())]
        assert_bf16_close(got, h, ulps=1, max_frac=0.02, what=f"text {k}")    # bf16-rounded (padding in a batch may move the last bit), position 0 dropped


def test_score_texts_with_profile_artefacts(gemma):
    "End to end on the smoke profile's GLP, SAE and train store when they exist."
    P = get_profile("smoke", ood=dict(ts=(0.1, 0.5), n_noise=1, project_steps=2, ode_steps=3, hutch=1, max_len=16, pca_k=16))
    try: sc = load_scorer(P, ref_rows=2000, log=lambda *a: None)
    except FileNotFoundError: pytest.skip("smoke artefacts (stores, GLP, SAE) not made yet")
    texts = ["The government announced new measures on Tuesday to support small businesses.",
             "zq xv 7&& ]]] kk lorem ;; ;; \\x00 qq"]
    r = score_texts(texts, sc["glp"], gemma, sc["baselines"], P.ood)
    assert list(r["texts"].columns) == ["text", "n_tokens", *GLP_METHODS, *BASE_METHODS]
    assert np.isfinite(r["tokens"][list(GLP_METHODS + BASE_METHODS)].to_numpy()).all()
    for m in GLP_METHODS + BASE_METHODS:
        np.testing.assert_allclose(r["texts"][m].to_numpy(), per_text(r["tokens"][m], r["texts"].n_tokens))
    assert (r["texts"].mahalanobis[1] > r["texts"].mahalanobis[0]) and (r["texts"].sae[1] > r["texts"].sae[0])   # garbage is far
