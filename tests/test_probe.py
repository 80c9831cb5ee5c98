"""1-D probing on the real packaged model (what the notebooks cannot test with their tiny stand-ins): the one-pass two-hook
reader against models on Gemma, the vectorised protocol against sklearn on real Gemma features, and probe_texts end to end
on the smoke profile's trained GLP and SAE. Splits, caching, input checks and the protocol on synthetic features are tested
in nbs/probesets.ipynb and nbs/10_probing.ipynb."""
import tempfile
import numpy as np
import pandas as pd
import pytest
import torch

from glp_nb.core import get_profile, temp_env
from glp_nb.probesets import split, task_acts, last_token_acts, left_truncate
from glp_nb.probe import prefilter, probe_1d, sklearn_1d, probe_texts


@pytest.fixture(scope="module")
def gemma():
    from glp_nb.models import load_llm
    return load_llm(get_profile("smoke").model)


def test_two_hook_pass_matches_models_on_gemma(gemma):
    from glp_nb.models import encode, forward_to_layer, mlp_neurons
    texts = ["The capital of France is", "def f(x):\n    return x + 1  # a longer prompt that gets truncated on the left side"]
    r, z = last_token_acts(gemma, texts, max_len=12, batch_tokens=64)
    for i, t in enumerate(texts):
        ids = torch.tensor([left_truncate(encode(gemma, t)[0], 12, gemma.bos)])
        assert ids[0, 0].item() == gemma.tok.bos_token_id
        np.testing.assert_allclose(r[i], forward_to_layer(gemma, ids)[0, -1].numpy(), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(z[i], mlp_neurons(gemma, ids)[0, -1].numpy(), rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module")
def sst2_acts(gemma):
    with tempfile.TemporaryDirectory() as d, temp_env(GLP_NB_DATA=d):   # the user's GLP_NB_DATA comes back afterwards
        cfg = get_profile("smoke", probe={"max_rows": 160, "max_len": 24}).probe
        return task_acts(gemma, "92_glue_sst2", cfg), cfg


@pytest.mark.parametrize("kind", ["resid", "mlp"])
def test_vectorised_protocol_matches_sklearn_on_gemma(sst2_acts, kind):
    a, cfg = sst2_acts
    x, y = a[kind], a["y"]
    tr, te = split(y, cfg.seed)
    top = prefilter(x[tr], y[tr], 12)
    fast = probe_1d(x[tr][:, top], y[tr], x[te][:, top], y[te], cfg.Cs)
    ref = sklearn_1d(x[tr][:, top], y[tr], x[te][:, top], y[te], cfg.Cs)
    np.testing.assert_allclose(fast["val_auc"], ref["val_auc"], atol=1e-9)
    np.testing.assert_allclose(fast["test_auc"], ref["test_auc"], atol=1e-9)
    np.testing.assert_array_equal(fast["C"], ref["C"])


def test_probe_texts_with_profile_artefacts(gemma):
    "End to end on the smoke profile's GLP and SAE when they exist (after `glp-reproduce --profile smoke`)."
    from glp_nb.artefacts import main_glp_dir, sae_dir
    P = get_profile("smoke")
    try: main_glp_dir(P); assert (sae_dir(P) / "sae.safetensors").exists()
    except (FileNotFoundError, AssertionError): pytest.skip("smoke GLP/SAE not trained yet")
    pos = ["I loved this film, wonderful acting.", "A delightful, moving story.", "Great fun and beautifully shot."]
    neg = ["I hated this film, awful acting.", "A boring, tedious story.", "Dull and badly shot."]
    texts = [s + f" ({i})" for i in range(22) for s in pos + neg]
    df = pd.DataFrame(dict(text=texts, label=(["pos"] * 3 + ["neg"] * 3) * 22))
    out = probe_texts(df, P=P, llm=gemma)
    assert list(out.index) == ["glp", "sae", "raw", "mlp", "dense"]
    assert out.test_auc.between(0, 1).all() and out.loc["glp", "block"] is not None
