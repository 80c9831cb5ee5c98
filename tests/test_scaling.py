"""glp_nb.scaling: the size ladder, C = 6ND, the power-law fit and its uncertainties, the ladder runner (on tiny stores)."""
import json, math
import numpy as np, pandas as pd, pytest, torch
from glp_nb.core import get_profile, save_json
from glp_nb.glp import n_params, make_glp
from glp_nb.train import ckpt_steps
from glp_nb import scaling as S


def synth(E, A, alpha, lo, hi, n=30, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    C = np.logspace(lo, hi, n)
    return C, S.power_law(C, E, A, alpha) * np.exp(noise * rng.standard_normal(n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_paper_law(seed):
    C, L = synth(**S.PAPER_FIT, lo=15, hi=19.3, seed=seed)
    f = S.fit_power_law(C, L, n_boot=100, seed=seed)
    assert abs(f["alpha"] - 0.169) < 0.04 and abs(f["E"] - 0.52) < 0.1
    assert f["r2"] > 0.95 and f["n_points"] == 30 and f["n_boot"] > 80


def test_fit_recovers_steep_law_within_errors():
    C, L = synth(0.8, 40.0, 0.3, lo=9, hi=12.5, noise=0.005, seed=3)
    f = S.fit_power_law(C, L, n_boot=300, seed=0)
    for k, true in (("E", 0.8), ("alpha", 0.3)):
        assert abs(f[k] - true) < 4 * f[k + "_se"], (k, f[k], f[k + "_se"])
        lo, hi = f[k + "_ci"]
        assert lo <= f[k] <= hi and hi - lo < true
    assert abs(math.log(f["A"] / 40)) < 1
    assert f["halving"] == pytest.approx(2 ** (1 / f["alpha"]))
    json.dumps(f)  # JSON-ready


def test_fit_exact_points_and_bounds():
    C = np.logspace(10, 14, 12)
    f = S.fit_power_law(C, S.power_law(C, 1.0, 100.0, 0.25), n_boot=10)
    assert f["E"] == pytest.approx(1.0, rel=1e-4) and f["alpha"] == pytest.approx(0.25, rel=1e-4)
    assert f["r2"] == pytest.approx(1.0)
    # the floor is bounded below the smallest observed loss and alpha stays in (0, 2)
    L = 1 + 0.02 * np.random.default_rng(0).standard_normal(12)
    g = S.fit_power_law(C, L, n_boot=10)
    assert 0 <= g["E"] < L.min() and 0 < g["alpha"] <= 2


def test_flops():
    assert S.flops(453_117_952, 1.024e9) == pytest.approx(2.78e18, rel=0.01)  # paper §4.5, d3 final
    assert S.flops(10, 7) == 420.0
    np.testing.assert_allclose(S.flops([1, 2, 3], [1e3, 1e3, 2e3]), [6e3, 12e3, 36e3])


def test_r2():
    assert S.r2([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert S.r2([1, 2, 3], [2, 2, 2]) == 0.0
    y, yh = np.array([1.0, 2.0, 4.0]), np.array([1.5, 2.0, 3.5])
    assert S.r2(y, yh) == pytest.approx(1 - 0.5 / (((y - y.mean()) ** 2).sum()))
    with pytest.raises(ValueError, match="undefined"): S.r2([2, 2], [1, 3])


def test_too_few_or_bad_points():
    with pytest.raises(ValueError, match="at least 4"): S.fit_power_law([1e9, 1e10, 1e11], [2, 1.5, 1.2])
    with pytest.raises(ValueError, match="at least 4"): S.fit_power_law([], [])
    with pytest.raises(ValueError, match="finite and > 0"): S.fit_power_law([1e9, 1e10, 0, 1e12], [2, 1.5, 1.2, 1.1])
    with pytest.raises(ValueError, match="finite and > 0"): S.fit_power_law([1e9, 1e10, 1e11, 1e12], [2, np.nan, 1.2, 1.1])
    with pytest.raises(ValueError, match="differ in length"): S.fit_power_law([1e9, 1e10], [2])
    with pytest.raises(ValueError, match="3 distinct"): S.fit_power_law([1e9] * 3 + [1e10] * 3, [2, 2, 2, 1, 1, 1])


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_ladder_span(name):
    P = get_profile(name)
    ns = S.check_ladder(P, 640)  # Gemma-3-270M width
    assert len(ns) >= 4 and S.ladder_span(ns) >= 1.5
    assert ns == sorted(ns)
    assert ns == [n_params(640, *w) for w in P.scaling.widths]


def test_ladder_params_match_a_real_build():
    P = get_profile("smoke")
    R = S.rung_profile(P, 0)
    g = make_glp(64, R.glp, torch.zeros(64), torch.ones(64))
    assert S.ladder_params(P, 64)[0] == sum(p.numel() for p in g.denoiser.parameters())


def test_ladder_checks_fail_clearly():
    with pytest.raises(ValueError, match="rungs"): S.check_ladder(get_profile("cpu", scaling=dict(widths=((64, 128, 1),))), 640)
    with pytest.raises(ValueError, match="orders of magnitude"):
        S.check_ladder(get_profile("cpu", scaling=dict(widths=((64, 128, 1), (64, 128, 2), (96, 192, 1), (96, 192, 2)))), 640)
    assert S.ladder_span([10, 10_000]) == pytest.approx(3.0)


def test_rung_profile():
    P = get_profile("cpu")
    R = S.rung_profile(P, 2)
    assert (R.glp.d_model, R.glp.d_mlp, R.glp.depth) == P.scaling.widths[2]
    assert (R.train.n_acts, R.train.batch_size, R.train.n_ckpts) == (P.scaling.n_acts, P.scaling.batch_size, P.scaling.n_ckpts)
    assert R.train.lr == (P.scaling.lr or P.train.lr) and R.train.seed == P.train.seed
    assert R.train.eval_ts == P.train.eval_ts and R.train.eval_acts == P.train.eval_acts  # same held-out set as the main run
    assert get_profile("cpu", scaling=dict(lr=None)).train.lr == S.rung_profile(get_profile("cpu", scaling=dict(lr=None)), 0).train.lr
    with pytest.raises(IndexError, match="rung 9"): S.rung_profile(P, 9)


def _metrics(P, i, loss):
    R = S.rung_profile(P, i); B = R.train.batch_size
    steps = [0] + ckpt_steps(math.ceil(R.train.n_acts / B), R.train.n_ckpts)
    return pd.DataFrame(dict(step=steps, acts=[s * B for s in steps], epoch=0, lr=1e-3, train_loss=np.nan,
                             val_loss=[loss(s * B) for s in steps], act_s=[np.nan] + [5000.0] * (len(steps) - 1)))


def test_points_from_synthetic_metrics_on_disk_and_fit(tmp_path, monkeypatch):
    """A synthetic ladder whose metrics.csv follow L = E + A C^-alpha exactly: the points read back and the fit recovers the law."""
    monkeypatch.setenv("GLP_NB_DATA", str(tmp_path))
    P = get_profile("cpu")
    ns = S.ladder_params(P, 640)
    E, A, alpha = 0.9, 30.0, 0.2
    rows = []
    for i, n in enumerate(ns):
        d = S.rung_dir(P, i); d.mkdir(parents=True)
        _metrics(P, i, lambda acts, n=n: S.power_law(6.0 * n * acts, E, A, alpha) if acts else 2.0).to_csv(d / "metrics.csv", index=False)
        pts = S.rung_points(P, i, n)
        assert len(pts) == P.scaling.n_ckpts and (pts.acts > 0).all() and pts.act_s.eq(5000).all()
        assert d.parts[-3:] == ("glps", "cpu", f"ladder_{i}")
        rows.append(pts)
    df = pd.concat(rows, ignore_index=True)
    np.testing.assert_allclose(df.flops, 6.0 * df.params * df.acts)
    f = S.fit_power_law(df.flops, df.val_loss, n_boot=50)
    assert f["alpha"] == pytest.approx(alpha, rel=1e-3) and f["E"] == pytest.approx(E, rel=1e-3) and f["r2"] > 0.999
    rep = S.scaling_report(df, f)
    assert len(rep["points"]) == len(df) and set(rep["points"][0]) == {"rung", "d_model", "d_mlp", "depth", "params", "acts", "flops", "val_loss"}
    json.dumps(rep, default=float)
    assert "paper 0.169" in S.fit_summary(f)
    import matplotlib; matplotlib.use("Agg")
    fig = S.plot_scaling(df, f)
    assert len(fig.axes[0].get_lines()) == len(ns) + 1 and "fit: L" in fig.axes[0].get_legend().get_texts()[-1].get_text()


def test_points_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("GLP_NB_DATA", str(tmp_path))
    P = get_profile("smoke")
    with pytest.raises(FileNotFoundError, match="ladder_0"): S.rung_points(P, 0, 100)
    m = _metrics(P, 0, lambda a: 1.0)
    with pytest.raises(ValueError, match="checkpoint step"): S.rung_points(P, 0, 100, m.iloc[:-1])
    with pytest.raises(KeyError, match="val_loss"): S.rung_points(P, 0, 100, m.drop(columns="val_loss"))


class Mem:
    "In-memory store with the Store interface."
    def __init__(self, X): self.X = X; self.n, self.d = X.shape; self.mean, self.var = X.mean(0), X.var(0)
    def read(self, i, j): return self.X[i:j].clone()
    def sample(self, n, seed=0): return self.X[torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))[:n]]
    def batches(self, batch_size, seed=0, epoch=0, drop_last=True):
        p = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for a in range(0, self.n - batch_size + 1, batch_size): yield self.X[p[a:a + batch_size]]


@pytest.fixture(scope="module")
def stores():
    g = torch.Generator().manual_seed(0); d = 16
    M = torch.randn(d, d, generator=g) / d ** 0.5
    return Mem(torch.randn(3072, d, generator=g) @ M + 1), Mem(torch.randn(512, d, generator=g) @ M + 1)


def _tiny(**kw):
    sc = {**dict(widths=((8, 16, 1), (16, 32, 1), (32, 64, 2)), n_acts=8192, batch_size=256, n_ckpts=4, lr=2e-3), **kw}
    return get_profile("smoke", scaling=sc, train=dict(eval_acts=256))


def test_run_ladder_trains_skips_and_refuses_changes(stores, tmp_path, monkeypatch):
    monkeypatch.setenv("GLP_NB_DATA", str(tmp_path))
    P, (tr, va) = _tiny(), stores
    df = S.run_ladder(P, tr, va, progress=False, log=lambda *a: None)
    assert len(df) == 3 * 4 and sorted(df.rung.unique()) == [0, 1, 2]
    assert list(df.columns[:9]) == ["rung", "d_model", "d_mlp", "depth", "params", "step", "acts", "flops", "val_loss"]
    last = df.groupby("rung").val_loss.last()
    first = df.groupby("rung").val_loss.first()
    assert (last < first).all()  # every rung learns
    for i in range(3):
        j = json.loads((S.rung_dir(P, i) / "rung.json").read_text())
        assert j["params"] == S.ladder_params(P, 16)[i] and j["act_s"] > 0 and (S.rung_dir(P, i) / "model.safetensors").exists()
    logs = []
    df2 = S.run_ladder(P, tr, va, progress=False, log=logs.append)
    assert len(logs) == 3 and all("skipped" in l for l in logs)
    pd.testing.assert_frame_equal(df, df2)
    # a changed profile retrains the rungs it changes (the old folder is removed)
    logs = []
    df3 = S.run_ladder(_tiny(n_acts=4096), tr, va, progress=False, log=logs.append)
    assert sum("retraining" in l for l in logs) == 3 and df3.acts.max() == 4096
    assert json.loads((S.rung_dir(P, 0) / "rung.json").read_text())["spec"]["n_acts"] == 4096
    # unfinished checkpoints of another configuration (no rung.json yet) are replaced too
    (S.rung_dir(P, 1) / "rung.json").unlink()
    logs = []
    S.run_ladder(_tiny(n_acts=8192), tr, va, progress=False, log=logs.append)
    assert sum("another configuration" in l for l in logs) == 1 and sum("was trained as" in l for l in logs) == 2
    with pytest.raises(ValueError, match="d=16 but validation store has d=8"):
        S.run_ladder(P, tr, Mem(torch.randn(64, 8)), progress=False, log=lambda *a: None)
    f = S.fit_power_law(df.flops, df.val_loss, n_boot=20)
    assert np.isfinite(f["r2"])
