"""Generation-quality metrics (glp_nb.evaluate): Fréchet distance closed forms, PCA, ΔLM splicing and bootstrap."""
import numpy as np
import pytest
import torch
from glp_nb.core import GLPCfg, get_profile
from glp_nb.evaluate import (FDRef, gauss_stats, frechet_from_stats, frechet_distance, trace_sqrt_product, PCA, splice,
                             delta_lm, delta_table, boot_ratio, final_glp, ladder_runs)
from glp_nb.models import tiny_llm, encode, pad


@pytest.fixture(scope="module")
def gauss():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    B = torch.randn(4000, 16, generator=g) * 3 - 1
    return A, B


def test_fd_identical_is_zero(gauss):
    A, _ = gauss
    assert frechet_distance(A, A) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(A, A.clone(), method="sqrtm") == pytest.approx(0.0, abs=1e-6)


def test_fd_shift_is_squared_mean_shift(gauss):
    A, _ = gauss
    A, m = A.double(), torch.linspace(-1, 2, 16, dtype=torch.float64)
    assert frechet_distance(A, A + m) == pytest.approx(float((m ** 2).sum()), rel=1e-9)


def test_fd_closed_form_diagonal():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([9.0, 1.0, 9.0])
    # ||dmu||^2 + sum (sigma1 - sigma2)^2
    assert frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(5 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0, rel=1e-12)


def test_fd_symmetric_and_methods_agree(gauss):
    A, B = gauss
    ab, ba = frechet_distance(A, B), frechet_distance(B, A)
    assert ab == pytest.approx(ba, rel=1e-10) and ab > 1
    assert ab == pytest.approx(frechet_distance(A, B, method="sqrtm"), rel=1e-6)
    mu, s = gauss_stats(A)
    np.testing.assert_allclose(s.numpy(), np.cov(A.double().numpy().T), rtol=1e-10)
    assert trace_sqrt_product(s, s) == pytest.approx(np.trace(s), rel=1e-9)


def test_fd_requires_equal_counts(gauss):
    A, B = gauss
    with pytest.raises(ValueError, match="unequal sample counts"): frechet_distance(A, B[:100])


def test_pca_fvu_curve_and_match():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(1200, 10, generator=g) @ torch.randn(10, 10, generator=g) * torch.logspace(0, 1, 10) - 3
    tr, te = X[:900], X[900:]
    pca = PCA(tr, tr.mean(0), tr.std(0))
    fvu = lambda a, b: float(((a - b) ** 2).sum() / ((a - a.mean(0)) ** 2).sum())
    z = lambda a: (a - tr.mean(0)) / tr.std(0)
    raw, std = pca.fvu_curve(te, "raw"), pca.fvu_curve(te)
    for k in (0, 3, 7, 10):
        assert raw[k] == pytest.approx(fvu(te, pca.recon(te, k)), rel=1e-5, abs=1e-7)
        assert std[k] == pytest.approx(fvu(z(te), z(pca.recon(te, k))), rel=1e-5, abs=1e-7)
    assert (np.diff(std) <= 1e-12).all()                              # more components never hurt in the fitted space
    assert pca.match_fvu(te, std[4]) == 4 and pca.k == 4
    assert pca.match_fvu(te, raw[6] + 1e-12, space="raw") <= 6


def test_fdref_matches_frechet_distance(gauss):
    A, B = gauss
    m, s = B.mean(0), B.std(0)
    ref = FDRef(B, m, s, massive_norm=float(B.norm(dim=1).median()))
    r = ref(A)
    assert r["raw"] == pytest.approx(frechet_distance(A, B), rel=1e-9)
    assert r["std"] == pytest.approx(frechet_distance((A - m) / s, (B - m) / s), rel=1e-6)  # float32 vs float64 standardization
    assert ref(B)["massive_frac"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="equal counts"): ref(A[:10])


@pytest.fixture(scope="module")
def tiny():
    llm = tiny_llm("llama", layers=4, d=64)
    seqs = encode(llm, ["a first document about cats", "second", "the third one is a bit longer than the others"], max_len=32)
    return llm, seqs


def test_identity_edit_is_exactly_zero(tiny):
    llm, seqs = tiny
    df = delta_lm(llm, seqs, {"id": lambda x: x, "noise": lambda x: x + 3 * torch.randn_like(x)}, batch_size=2, progress=False)
    assert (df["id"] == df["base"]).all()
    tab = delta_table(df, n_boot=100)
    assert tab["id"] == dict(mean=0.0, lo=0.0, hi=0.0)
    assert tab["noise"]["mean"] != 0
    assert df["n"].tolist() == [len(s) - 1 for s in seqs]


def test_splice_keeps_first_position_and_pads(tiny):
    llm, seqs = tiny
    ids, mask = pad(llm, seqs)
    h = torch.randn(*ids.shape, 64)
    seen = []
    e = splice(lambda x: seen.append(len(x)) or torch.zeros_like(x), mask)(h)
    assert seen == [int(mask.sum()) - len(seqs)]                   # one flat call over real tokens at positions >= 1
    torch.testing.assert_close(e[:, 0], h[:, 0])
    torch.testing.assert_close(e[~mask.bool()], h[~mask.bool()])


def test_glp_projection_edit_runs(tiny):
    from glp_nb.glp import make_glp
    llm, seqs = tiny
    glp = make_glp(64, GLPCfg(depth=1, d_model=32, d_mlp=64), torch.zeros(64), torch.ones(64))
    g = torch.Generator().manual_seed(0)
    df = delta_lm(llm, seqs, {"GLP": lambda x: glp.project(x, t_start=0.5, steps=2, generator=g)}, progress=False)
    assert np.isfinite(df["GLP"]).all() and (df["GLP"] != df["base"]).any()


def test_bootstrap_ci_contains_mean():
    r = np.random.default_rng(3)
    num, den = r.normal(0.1, 0.5, 300) * 50, np.full(300, 50.0)
    ci = boot_ratio(num, den, n_boot=1000, seed=0)
    assert ci["lo"] < ci["mean"] < ci["hi"]
    assert ci["mean"] == pytest.approx(num.sum() / den.sum())
    assert ci["lo"] < 0.1 < ci["hi"]                                  # covers the true mean here
    assert boot_ratio(num, den, 200, seed=1) == boot_ratio(num, den, 200, seed=1)   # seeded


def test_missing_glp_names_the_notebook(monkeypatch, tmp_path):
    monkeypatch.setenv("GLP_NB_DATA", str(tmp_path))
    P = get_profile("smoke")
    with pytest.raises(FileNotFoundError, match="05_train.ipynb"): final_glp(P)
    with pytest.raises(FileNotFoundError, match="07_scaling.ipynb"): final_glp(P, "ladder_0")
    assert ladder_runs(P) == []
    for i in (10, 2):
        d = tmp_path / "glps" / "smoke" / f"ladder_{i}"; d.mkdir(parents=True); (d / "model.safetensors").write_bytes(b"")
    (tmp_path / "glps" / "smoke" / "ladder_5").mkdir()                # unfinished rung: skipped
    assert ladder_runs(P) == ["ladder_2", "ladder_10"]
