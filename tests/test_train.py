"Tests of glp_nb.train: lr schedule, learning on random data, resume equality, 2-process DDP equality (CPU, gloo)."
import json, os, subprocess
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch

from glp_nb.core import get_profile, save_json, torch_threads
from glp_nb.glp import load_glp, make_glp
from glp_nb.harvest import FORMAT, Store, save_stats, shard_moments, to_bits, write_shard
from stores import array_store
from glp_nb.train import (batch_loss, ckpt_name, ckpt_steps, launch_cmd, list_ckpts, load_state, lr_factor,
                          make_scheduler, train_glp)

COLS = ["step", "acts", "epoch", "lr", "train_loss", "val_loss"]
TINY = dict(glp=dict(depth=2, d_model=64, d_mlp=128))


def rand_acts(n, d=16, seed=0, rank=4):
    "Gaussian rows near a fixed `rank`-dim subspace with a fixed non-zero mean; `seed` draws the rows."
    g, h = torch.Generator().manual_seed(1234), torch.Generator().manual_seed(seed)
    A, mu = torch.randn(rank, d, generator=g), 2 * torch.randn(d, generator=g)
    return torch.randn(n, rank, generator=h) @ A + 0.1 * torch.randn(n, d, generator=h) + mu


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "Tiny models: one intra-op thread is as fast and far less sensitive to other jobs on the cores."
    with torch_threads(1): yield


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return root, array_store(rand_acts(4000), root / "train"), array_store(rand_acts(1000, seed=1), root / "val")


def profile(**train):
    return get_profile("smoke", **TINY, train=dict(dict(lr=3e-3, batch_size=128, n_acts=128 * 60, n_ckpts=3, eval_every=20,
                                                         eval_acts=512), **train))


@pytest.fixture(scope="module")
def full_run(stores, tmp_path_factory):
    _, tr, va = stores
    out = tmp_path_factory.mktemp("full")
    glp, m = train_glp(profile(), tr, va, out, progress=False)
    return out, glp, m


def test_lr_schedule():
    T = 2000
    f = np.array([lr_factor(s, T, 0.01, 0.01, 0.1) for s in range(T)])
    assert f[0] == pytest.approx(0.01) and f[20] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert np.all(np.diff(f[:21]) > 0) and np.all(np.diff(f[20:]) <= 1e-12)
    np.testing.assert_allclose(np.diff(f[:21]), 0.99 / 20)                 # linear warmup
    mid = 20 + (T - 1 - 20) // 2
    assert f[mid] == pytest.approx(0.55, abs=2e-3)                          # cosine midpoint
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-5)
    sch = make_scheduler(opt, T, get_profile("cpu").train)
    lrs = []
    for _ in range(T): lrs.append(opt.param_groups[0]["lr"]); opt.step(); sch.step()
    np.testing.assert_allclose(lrs, 5e-5 * f, rtol=1e-9)
    assert ckpt_steps(1000, 4) == [125, 250, 500, 1000]


def test_learns_below_constant(full_run):
    out, _, m = full_run
    const = m.const_loss.iloc[-1]
    assert 1.8 < const < 2.2                                                 # ~ var(noise) + var(normalized data)
    assert m.val_loss.iloc[0] > const                                        # untrained
    assert m.val_loss.iloc[-1] < 0.7 * const, m[COLS]
    assert m.step.tolist() == [0, 15, 20, 30, 40, 60]
    assert [p.name for p in list_ckpts(out)] == [ckpt_name(a) for a in (1920, 3840, 7680)]
    saved = pd.read_csv(out / "metrics.csv")
    np.testing.assert_allclose(saved.val_loss, m.val_loss, rtol=1e-6)
    st = load_state(list_ckpts(out)[-1])                                     # weights_only load of optimizer/scheduler state
    assert st["step"] == 60 and "optimizer" in st and "scheduler" in st


def test_resume_equals_uninterrupted(stores, full_run, tmp_path):
    _, tr, va = stores
    _, g1, m1 = full_run
    train_glp(profile(), tr, va, tmp_path, stop_step=22, progress=False)     # "killed" after step 22, last ckpt at 15
    assert len(list_ckpts(tmp_path)) == 1
    g2, m2 = train_glp(profile(), tr, va, tmp_path, progress=False)          # resumes from step 15, crosses an epoch
    np.testing.assert_allclose(m2[COLS].fillna(0).values, m1[COLS].fillna(0).values, rtol=1e-5, atol=1e-7)
    for (k, a), b in zip(g1.state_dict().items(), g2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="another run"):
        train_glp(profile(batch_size=64), tr, va, tmp_path, progress=False)


DDP_SCRIPT = """
import sys, json, torch
from pathlib import Path
from glp_nb.core import get_profile
from glp_nb.harvest import Store
from glp_nb.glp import make_glp
from glp_nb.train import train_glp, batch_loss, _accelerator
root, out, prof = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
torch.set_num_threads(1)
acc = _accelerator()
assert acc.num_processes == 2, acc.num_processes
P = get_profile("smoke", **prof)
tr, va = Store(root / "train"), Store(root / "val")
torch.manual_seed(0); glp = make_glp(tr.d, P.glp, tr.mean, tr.var)
model = acc.prepare_model(glp.denoiser)
r, w = acc.process_index, acc.num_processes; b = P.train.batch_size // w   # each process: its half of the global batch
loss = batch_loss(model, glp.normalizer, tr.read(r * b, (r + 1) * b), step=5, seed=1, rank=r, world=w)
acc.backward(loss)
if acc.is_main_process: torch.save([p.grad for p in glp.denoiser.parameters()], out / "grads.pt")
train_glp(P, tr, va, out / "run", accelerator=acc, progress=False, log=lambda *a: None)
"""


def test_ddp_two_processes_match_single(stores, tmp_path):
    root, tr, va = stores
    prof = dict(TINY, train=dict(lr=3e-3, batch_size=128, n_acts=128 * 12, n_ckpts=2, eval_every=4, eval_acts=256))
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    r = subprocess.run(launch_cmd(tmp_path / "ddp.py", 2, root, tmp_path, json.dumps(prof)), capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    # the DDP-averaged gradient on a fixed global batch equals the single-process gradient on the same batch
    P = get_profile("smoke", **prof)
    torch.manual_seed(0); glp = make_glp(tr.d, P.glp, tr.mean, tr.var)
    batch_loss(glp.denoiser, glp.normalizer, tr.read(0, P.train.batch_size), step=5, seed=1).backward()
    for a, b in zip([p.grad for p in glp.denoiser.parameters()], torch.load(tmp_path / "grads.pt", weights_only=True)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    # and a short 2-process training run equals the single-process run
    g1, m1 = train_glp(P, tr, va, tmp_path / "single", progress=False)
    m2 = pd.read_csv(tmp_path / "run" / "metrics.csv")
    np.testing.assert_allclose(m2[COLS].fillna(0).values, m1[COLS].fillna(0).values, rtol=1e-4, atol=1e-6)
    for (k, a), b in zip(g1.state_dict().items(), load_glp(tmp_path / "run").state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
