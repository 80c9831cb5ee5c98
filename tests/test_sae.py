"""TopK SAE baseline (glp_nb.sae): architecture invariants, training on a synthetic sparse store, AuxK, save/load, metrics."""
import json
import pytest
import torch
from glp_nb.core import get_profile, torch_threads
from glp_nb.sae import (TopKSAE, sae_loss, train_sae, save_sae, load_sae, sae_dir, sae_metrics, _project_grad, _renorm, _budget)


class ArrayStore:
    "In-memory stand-in with the harvest.Store interface."
    def __init__(self, x):
        self.x = x.float(); self.n, self.d = x.shape; self.mean, self.var = self.x.mean(0), self.x.var(0); self.manifest = {}
    def read(self, i, j): return self.x[i:j].clone()
    def sample(self, n, seed=0): return self.x[torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))[:n]]
    def batches(self, batch_size, seed=0, epoch=0, drop_last=True):
        p = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        for i in range(0, self.n - batch_size + 1 if drop_last else self.n, batch_size): yield self.x[p[i:i + batch_size]]


def sparse_data(n, d=32, n_feat=128, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_feat, d, generator=g); D /= D.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_feat, generator=g).topk(k, dim=1).indices
    z = torch.zeros(n, n_feat).scatter(1, idx, torch.rand(n, k, generator=g) * 4 + 1)
    scale = torch.logspace(-1, 1, d)[torch.randperm(d, generator=g)]
    return (z @ D + 0.05 * torch.randn(n, d, generator=g)) * scale + 3.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1): yield  # tiny tensors: threads cost more than they give; the previous count comes back


@pytest.fixture(scope="module")
def data():
    x = sparse_data(10240)
    return ArrayStore(x[:8192]), x[8192:]


P_T = dict(expansion=8, k=6, batch_size=256, n_acts=60_000, lr=1e-2, log_every=10, dead_after=5_000)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae")
    sae, df = train_sae(get_profile("smoke", sae=P_T), data[0], out, progress=False)
    return sae, df, out


def test_encode_is_topk_and_raw_in_raw_out():
    sae = TopKSAE(16, 64, 4, mean=torch.full((16,), 5.), std=torch.full((16,), 2.))
    x = torch.randn(20, 16) * 2 + 5
    z = sae.encode(x)
    assert z.shape == (20, 64) and ((z != 0).sum(1) <= 4).all() and (z >= 0).all()
    # raw in, raw out: decode(encode(x)) equals the standardized-space computation mapped back
    v, i = sae.topk(sae.norm(x))
    zn = torch.zeros(20, 64).scatter(1, i, v)
    torch.testing.assert_close(sae(x), (zn @ sae.W_dec + sae.b_pre) * 2 + 5)
    torch.testing.assert_close(sae.W_enc, sae.W_dec)                       # encoder init = decoder transpose
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    with pytest.raises(ValueError, match="k=65"): TopKSAE(16, 64, 65)


def test_decoder_gradient_projection_and_renorm():
    sae = TopKSAE(8, 32, 3)
    loss, aux, _ = sae_loss(sae, torch.randn(64, 8), dead=torch.ones(32, dtype=torch.bool), aux_k=4)
    (loss + aux).backward(); _project_grad(sae)
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-6, rtol=0)
    with torch.no_grad(): sae.W_dec.add_(torch.randn(32, 8))
    _renorm(sae)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


def test_training_learns_sparse_structure(trained, data):
    sae, df, out = trained
    m = sae_metrics(sae, data[1])
    assert m["fvu"] < 0.2 and m["fvu_std"] < 0.2, m
    assert m["l0"] <= 6 and 0 <= m["dead_frac"] < 0.5
    assert df.fvu.iloc[-1] < df.fvu.iloc[0] / 2
    assert list(df.columns) == ["step", "acts", "lr", "fvu", "aux_fvu", "dead_frac", "act_s"]
    assert df.lr.iloc[-1] < df.lr.iloc[0]                                     # linear decay at the end
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.n_latents), atol=1e-4, rtol=0)


def test_save_load_roundtrip(trained, data, tmp_path):
    sae, _, out = trained
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.csv", "sae.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["d"], cfg["n_latents"], cfg["k"]) == (32, 256, 6) and cfg["train"]["n_acts"] == 60_000 // 256 * 256
    sae2 = load_sae(out)
    torch.testing.assert_close(sae2(data[1][:100]), sae(data[1][:100]))
    torch.testing.assert_close(sae2.mean, sae.mean)
    with pytest.raises(FileNotFoundError, match="06_sae.ipynb"): load_sae(tmp_path / "none")


def test_auxk_revives_dead_latents(trained, data):
    sae, _, _ = trained
    def killed():
        s = TopKSAE(sae.d, sae.n_latents, sae.k); s.load_state_dict(sae.state_dict())
        with torch.no_grad(): s.W_enc[: s.n_latents // 2] *= 0.1
        return s
    kw = {**P_T, "n_acts": 20_000, "dead_after": 1024}
    on, d_on = train_sae(get_profile("smoke", sae=kw), data[0], None, sae=killed(), progress=False)
    off, d_off = train_sae(get_profile("smoke", sae={**kw, "aux_coef": 0.0}), data[0], None, sae=killed(), progress=False)
    m_on, m_off = sae_metrics(on, data[1]), sae_metrics(off, data[1])
    assert d_on.aux_fvu.max() > 0 and (d_off.aux_fvu == 0).all()
    assert m_on["dead_frac"] < m_off["dead_frac"] - 0.05 and m_on["fvu"] < m_off["fvu"]


def test_metrics_by_hand():
    sae = TopKSAE(4, 4, 1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4)); sae.W_dec.copy_(torch.eye(4))
    x = torch.tensor([[3., 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1.], [0, 0, 0, 2.]])
    m = sae_metrics(sae, x, batch_size=3)
    assert m["fvu"] == pytest.approx(0.0, abs=1e-9) and m["l0"] == 1 and m["dead_frac"] == 0.25  # latent 2 never fires


def test_budget_defaults_to_glp_budget(data):
    P = get_profile("smoke", sae=dict(n_acts=None), train=dict(n_acts=1234))
    assert _budget(P) == 1234 and _budget(P, 99) == 99
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_sae(get_profile("smoke", sae=dict(batch_size=512)), ArrayStore(torch.randn(100, 8)), None, progress=False)


def test_sae_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GLP_NB_DATA", str(tmp_path))
    assert sae_dir(get_profile("smoke")) == tmp_path / "saes" / "smoke" / "main"
