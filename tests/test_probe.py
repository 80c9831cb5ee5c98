"""1-D probing (glp_nb.probe): split equivalence with SAE-Probes, the vectorised protocol against sklearn on real
Gemma features, the one-pass two-hook reader against models, caching, CIs, and probe_texts' input checks."""
import ast, importlib.util, os, tempfile, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from glp_nb.core import get_profile, temp_env
from glp_nb import probe
from glp_nb.probe import (split, balanced_rows, load_dataset, binary_datasets, probe_1d, sklearn_1d, one_d, auc_cols,
                          last_token_acts, task_acts, cache_path, bootstrap_ci, probe_texts, check_labelled, left_truncate)


@pytest.fixture(scope="module")
def original_split():
    "SAE-Probes' own get_train_test_indices, read from the installed wheel's source (the package itself is never imported)."
    f = Path(importlib.util.find_spec("sae_probes").submodule_search_locations[0]) / "utils_data.py"
    tree = ast.parse(f.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_train_test_indices")
    ns = {"np": np}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(f), "exec"), ns)
    return ns["get_train_test_indices"]


@pytest.mark.parametrize("name", ["5_hist_fig_ismale", "41_truthqa_tf", "95_toxic_is", "122_us_timezone_Los_Angeles"])
def test_train_rows_match_sae_probes(original_split, name):
    y = load_dataset(name).y.values
    n_train = min(len(y) - 100, 1024)
    tr_o, te_o = original_split(y, n_train, len(y) - n_train - 1, pos_ratio=0.5, seed=42)
    tr, te = split(y, 42)
    assert sorted(tr) == sorted(tr_o)                # same train rows
    assert set(te_o) <= set(te) and len(te) == len(te_o) + 1   # test: the rest (theirs leaves one row out)


def test_capped_rows_split(original_split):
    y = load_dataset("92_glue_sst2").y.values
    rows = balanced_rows(y, 500, 42)
    assert len(rows) == 500 and y[rows].sum() == 250
    tr, te = split(y[rows], 42)
    assert (len(tr), len(te)) == (400, 100)
    tr_o, _ = original_split(y[rows], 400, 99, seed=42)
    assert sorted(tr) == sorted(tr_o)


def test_every_task_loads_and_is_binary():
    names = binary_datasets()
    assert len(names) == 113 and len(set(names)) == 113
    for n in ("161_agnews_0", "131_temp_cat_Typical Time", "159_code_Python"):
        df = load_dataset(n)
        assert set(df.y.unique()) == {0, 1} and len(df) >= 728


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
        t0 = time.perf_counter(); a = task_acts(gemma, "92_glue_sst2", cfg); t_first = time.perf_counter() - t0
        t0 = time.perf_counter(); b = task_acts(gemma, "92_glue_sst2", cfg); t_again = time.perf_counter() - t0
        f = cache_path(gemma, "92_glue_sst2", cfg)
        # a cache whose prompt digest does not match is recomputed, not reused
        with np.load(f) as z: kw = {k: z[k] for k in z.files}
        kw["digest"] = np.array("stale")
        with open(f, "wb") as fh: np.savez(fh, **kw)
        c = task_acts(gemma, "92_glue_sst2", cfg)
    return a, b, c, t_first, t_again, cfg


def test_cache(sst2_acts):
    a, b, c, t_first, t_again, _ = sst2_acts
    assert (a["cached"], b["cached"], c["cached"]) == (False, True, False)
    np.testing.assert_array_equal(a["resid"], b["resid"])          # read back from the cache file: exact
    np.testing.assert_allclose(a["resid"], c["resid"], rtol=1e-5, atol=1e-4)
    assert t_again < t_first


@pytest.mark.parametrize("kind", ["resid", "mlp"])
def test_vectorised_protocol_matches_sklearn_on_gemma(sst2_acts, kind):
    a, _, _, _, _, cfg = sst2_acts
    x, y = a[kind], a["y"]
    tr, te = split(y, cfg.seed)
    top = probe.prefilter(x[tr], y[tr], 12)
    fast = probe_1d(x[tr][:, top], y[tr], x[te][:, top], y[te], cfg.Cs)
    ref = sklearn_1d(x[tr][:, top], y[tr], x[te][:, top], y[te], cfg.Cs)
    np.testing.assert_allclose(fast["val_auc"], ref["val_auc"], atol=1e-9)
    np.testing.assert_allclose(fast["test_auc"], ref["test_auc"], atol=1e-9)
    np.testing.assert_array_equal(fast["C"], ref["C"])


def test_one_d_picks_first_best_feature(sst2_acts):
    a, _, _, _, _, cfg = sst2_acts
    tr, te = split(a["y"], cfg.seed)
    r = one_d(a["mlp"], a["y"], tr, te, cfg)
    assert r["feature"] == r["top"][int(np.argmax(r["val_aucs"]))]
    assert 0.5 < r["val_auc"] <= 1 and 0 <= r["test_auc"] <= 1
    assert len(r["top"]) == cfg.top_k


def test_auc_cols_ties_and_orientation():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = np.c_[np.round(rng.normal(size=300) + y), -y + rng.normal(size=300), np.zeros(300)]
    np.testing.assert_allclose(auc_cols(x, y), [roc_auc_score(y, x[:, j]) for j in range(3)], atol=1e-12)


def test_bootstrap_matches_scipy():
    from scipy.stats import bootstrap
    v = np.random.default_rng(3).uniform(0.5, 1.0, 40)
    m, lo, hi = bootstrap_ci(v, 20_000, 0)
    ref = bootstrap((v,), np.mean, confidence_level=0.95, n_resamples=20_000, method="percentile", random_state=0).confidence_interval
    assert abs(m - v.mean()) < 1e-12 and abs(lo - ref.low) < 0.005 and abs(hi - ref.high) < 0.005


def test_probe_texts_input_errors():
    df = pd.DataFrame(dict(text=[f"t{i}" for i in range(130)], label=[0, 1] * 65))
    with pytest.raises(KeyError, match="column 'label' not found"): probe_texts(df.rename(columns={"label": "y"}))
    with pytest.raises(KeyError, match="column 'body' not found"): probe_texts(df, text_col="body")
    with pytest.raises(ValueError, match="found 3"): probe_texts(df.assign(label=np.arange(130) % 3))
    with pytest.raises(ValueError, match="need at least 120"): probe_texts(df.head(60))
    with pytest.raises(ValueError, match="label 1 has only 3"): probe_texts(df.assign(label=[0] * 127 + [1] * 3))
    with pytest.raises(ValueError, match="missing value"): probe_texts(df.assign(label=[None] + [0, 1] * 64 + [1]))
    texts, y, classes = check_labelled(df.assign(label=["spam", "ham"] * 65))
    assert classes == ["ham", "spam"] and y[0] == 1


def test_probe_texts_with_profile_artefacts(gemma):
    "End to end on the smoke profile's GLP and SAE when they exist (after `glp-reproduce --profile smoke`)."
    P = get_profile("smoke")
    try: probe.final_glp_path(P); from glp_nb.sae import sae_dir; assert (sae_dir(P) / "config.json").exists()
    except (FileNotFoundError, AssertionError): pytest.skip("smoke GLP/SAE not trained yet")
    pos = ["I loved this film, wonderful acting.", "A delightful, moving story.", "Great fun and beautifully shot."]
    neg = ["I hated this film, awful acting.", "A boring, tedious story.", "Dull and badly shot."]
    texts = [s + f" ({i})" for i in range(22) for s in pos + neg]
    df = pd.DataFrame(dict(text=texts, label=(["pos"] * 3 + ["neg"] * 3) * 22))
    out = probe_texts(df, P=P, llm=gemma)
    assert list(out.index) == ["glp", "sae", "raw", "mlp", "dense"]
    assert out.test_auc.between(0, 1).all() and out.loc["glp", "block"] is not None
