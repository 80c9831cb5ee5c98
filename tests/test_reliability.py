"""Reliability (issue 11): a changed corpus or store is never silently reused, corrupt / non-finite data and losses stop
training before anything is written, one writer per folder, nothing the user made is deleted unasked, damaged checkpoints
and half-written SAEs do not block a resume, and a full disk names the file. Small synthetic stores and tiny models."""
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from glp_nb.core import HarvestCfg, get_profile, load_json, save_json, torch_threads, writer_lock
from glp_nb.models import tiny_llm
from glp_nb.harvest import Store, array_store, harvest, harvest_profile, verify_store
from glp_nb.artefacts import store_dir, list_ckpts
from glp_nb.train import train_glp
from glp_nb.sae import sae_ready, train_sae

HCFG = HarvestCfg(max_len=48, block_docs=4, shard_acts=150, batch_tokens=256)
TP = dict(glp=dict(depth=1, d_model=32, d_mlp=64),
          train=dict(lr=3e-3, batch_size=128, n_acts=128 * 24, n_ckpts=3, eval_every=6, eval_acts=256),
          sae=dict(expansion=2, k=4, batch_size=128, n_acts=128 * 8, log_every=4))
QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1): yield


def rand_acts(n, d=16, seed=0):
    g, h = torch.Generator().manual_seed(1234), torch.Generator().manual_seed(seed)
    A, mu = torch.randn(4, d, generator=g), 2 * torch.randn(d, generator=g)
    return torch.randn(n, 4, generator=h) @ A + 0.1 * torch.randn(n, d, generator=h) + mu


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return array_store(rand_acts(2000), root / "train"), array_store(rand_acts(500, seed=1), root / "val")


def P(**kw): return get_profile("smoke", **{**TP, **kw})


def _docs(n=24, seed=0):
    r = np.random.default_rng(seed)
    words = "the a of activation model layer token store shard block flow noise data".split()
    return [(f"d{i:03d}", " ".join(r.choice(words, r.integers(3, 30)))) for i in range(n)]


# ---------------------------------------------------------------- 1. a changed corpus / store is never silently reused

def test_corpus_change_is_not_reused(user_dirs):
    "Harvest corpus A, then ask for corpus B in the same profile: refused, naming the corpus keys; A again is reused."
    _, data, _ = user_dirs
    llm = tiny_llm()
    corpora = {}
    for name, word in (("A", "apples"), ("B", "bananas")):
        d = data / f"corpus{name}"; d.mkdir(parents=True)
        for k in range(10): (d / f"{k}.txt").write_text(f"Document {k} about {word}. " * 12)
        corpora[name] = str(d)
    prof = lambda c: get_profile("smoke", model=dict(name=llm.name, layer=llm.layer), corpus=dict(source=corpora[c], val_frac=0.3),
                                 harvest=dict(max_len=48, train_acts=200, val_acts=50, block_docs=4, shard_acts=150, batch_tokens=256))
    tr, va = harvest_profile(prof("A"), llm, verbose=False)
    assert tr.manifest["corpus"]["source"] == corpora["A"] and tr.manifest["corpus"]["fingerprint"].startswith("sha256:")
    with pytest.raises(ValueError) as e: harvest_profile(prof("B"), llm, verbose=False)
    msg = str(e.value)
    assert "corpus.source: stored" in msg and "corpus.fingerprint: stored" in msg and f"rm -r {tr.path}" in msg, msg
    tr2, _ = harvest_profile(prof("A"), llm, verbose=False)                      # the same corpus: reused, not re-harvested
    assert tr2.run is None and tr2.fingerprint == tr.fingerprint
    for f in Path(corpora["A"]).glob("*.txt"): f.write_text(f.read_text().replace("apples", "melons"))  # same source and sizes, other text
    with pytest.raises(ValueError, match="corpus.fingerprint: stored"): harvest_profile(prof("A"), llm, verbose=False)


def test_new_store_does_not_reuse_glp_or_sae(stores, tmp_path):
    "A GLP / SAE records its store's fingerprint: a re-harvested store (same shape, one value changed) does not resume or reuse them."
    tr, va = stores
    train_glp(P(), tr, va, tmp_path / "glp", **QUIET)
    sae_out = tmp_path / "sae"; train_sae(P(), tr, sae_out, **QUIET)
    assert sae_ready(sae_out, P(), tr) is not None
    X = rand_acts(2000); X[0, 0] += 1.0
    tr2 = array_store(X, tmp_path / "train2")
    assert (tr2.n, tr2.d) == (tr.n, tr.d) and tr2.fingerprint != tr.fingerprint
    with pytest.raises(ValueError, match=r"another run; differing:\n  data.train: stored"): train_glp(P(), tr2, va, tmp_path / "glp", **QUIET)
    msgs = []
    assert sae_ready(sae_out, P(), tr2, log=msgs.append) is None and "store: stored" in msgs[0]


# ---------------------------------------------------------------- 2. corrupt / non-finite data and losses stop before training

def _copy(store, dst):
    import shutil; shutil.copytree(store.path, dst); (dst / "verified.json").unlink(missing_ok=True); return dst


def test_flipped_byte_stops_training(stores, tmp_path):
    tr, va = stores
    p = _copy(tr, tmp_path / "flip")
    with open(p / "shard_00001.npy", "r+b") as f: f.seek(900); b = f.read(1); f.seek(900); f.write(bytes([b[0] ^ 1]))
    s = Store(p)                                                                    # sizes are fine: opening passes
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"store {p}: shard shard_00001.npy is corrupt \(SHA-256"): train_glp(P(), s, va, out, **QUIET)
    with pytest.raises(ValueError, match="shard_00001.npy is corrupt"): train_sae(P(), s, tmp_path / "sae", **QUIET)
    assert not list(out.glob("ckpt_*")) and not (out / "model.safetensors").exists()


def test_nonfinite_rows_stop_training(stores, tmp_path):
    tr, va = stores
    X = rand_acts(2000); X[1234, 5] = float("nan")
    s = array_store(X, tmp_path / "nan")                                            # checksums agree: only the scan sees it
    with pytest.raises(ValueError, match=r"shard shard_00001.npy holds 1 non-finite values \(NaN/inf\), the first in row 234"):
        train_glp(P(), s, va, tmp_path / "run", **QUIET)
    with pytest.raises(ValueError, match="non-finite values"): train_sae(P(), s, tmp_path / "sae", **QUIET)


def test_verification_is_cached(stores, monkeypatch, tmp_path):
    tr, _ = stores
    s = Store(_copy(tr, tmp_path / "v"))
    r = verify_store(s, log=lambda *a: None)
    assert (s.path / "verified.json").exists() and r["rows"] == s.n
    import glp_nb.harvest as H
    monkeypatch.setattr(H, "_scan", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read again")))
    assert verify_store(Store(s.path)) == r                                         # second use: no shard is read
    os.utime(s.path / "shard_00000.npy")                                            # a shard rewritten since: checked again
    with pytest.raises(AssertionError, match="read again"): verify_store(Store(s.path))


def test_nonfinite_loss_stops_glp_and_writes_nothing(stores, tmp_path):
    tr, va = stores
    from glp_nb.glp import make_glp
    Pr = P(); torch.manual_seed(0); g = make_glp(16, Pr.glp, tr.mean, tr.var)
    with torch.no_grad(): next(g.denoiser.parameters()).view(-1)[3] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 1 of 24"): train_glp(Pr, tr, va, tmp_path / "r", glp=g, **QUIET)
    assert sorted(os.listdir(tmp_path / "r")) == []
    big = P(train={**TP["train"], "n_acts": 128 * 12, "lr": 1e38})                 # diverges on the way
    with pytest.raises(FloatingPointError, match="non-finite training loss at step"): train_glp(big, tr, va, tmp_path / "big", **QUIET)
    for c in list_ckpts(tmp_path / "big"):                                          # whatever was written is finite
        sd = __import__("glp_nb.glp", fromlist=["load_glp"]).load_glp(c).state_dict()
        assert all(torch.isfinite(v).all() for v in sd.values()), c


def test_nonfinite_loss_stops_sae(tmp_path):
    class NaNStore:
        n, d, mean, var = 512, 8, torch.zeros(8), torch.ones(8)
        def batches(self, bs, seed=0, epoch=0, drop_last=True):
            for i in range(self.n // bs):
                x = torch.randn(bs, self.d)
                if i == 1: x[3, 2] = float("nan")
                yield x
    with pytest.raises(FloatingPointError, match="non-finite SAE loss at step 2 of 8"): train_sae(P(), NaNStore(), tmp_path / "s", **QUIET)
    assert os.listdir(tmp_path / "s") == []


def test_incomplete_store_needs_a_flag(tmp_path, stores):
    _, va = stores
    s = array_store(rand_acts(1000), tmp_path / "part", complete=False)
    with pytest.raises(ValueError, match=r"is incomplete .*pass allow_incomplete=True"): train_glp(P(), s, va, tmp_path / "r", **QUIET)
    with pytest.raises(ValueError, match="allow_incomplete=True"): train_sae(P(), s, None, **QUIET)
    train_glp(P(train={**TP["train"], "n_acts": 256}), s, va, tmp_path / "r", allow_incomplete=True, **QUIET)


# ---------------------------------------------------------------- 3. one writer per folder

HOLD = textwrap.dedent("""
    import sys, time, numpy as np, torch
    torch.set_num_threads(1)
    from glp_nb.core import HarvestCfg
    from glp_nb.models import tiny_llm
    from glp_nb.harvest import harvest
    def docs():
        r = np.random.default_rng(0)
        for i in range(10**6):
            if i == 8: time.sleep(120)                       # hold the store's lock, mid-harvest
            yield f"d{i:03d}", " ".join(r.choice("a b c d e f".split(), 20))
    harvest(tiny_llm(), docs(), sys.argv[1], HarvestCfg(max_len=48, block_docs=4, shard_acts=150, batch_tokens=256), 10**6, verbose=False)
""")


def _wait_lock(p, proc, secs=600):   # the subprocess imports torch + transformers: slow on a busy machine
    t = time.time()
    while time.time() - t < secs:
        if (p / ".lock").exists() and (p / ".lock").read_text().strip() == str(proc.pid): return
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    raise TimeoutError("the other harvest never took the lock")


def test_second_harvest_gets_the_holders_pid(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_lock(out, proc)
        with pytest.raises(RuntimeError, match=rf"{out} is being written by another process \(PID {proc.pid}"):
            harvest(tiny_llm(), _docs(), out, HCFG, 10**6, verbose=False)
    finally:
        proc.kill(); proc.wait()
    assert (out / ".lock").exists()                                                 # SIGKILL left the file, the kernel dropped the lock
    with pytest.raises(ValueError, match="harvest.block_docs"):                     # the lock is free: we get as far as the settings check
        harvest(tiny_llm(), _docs(), out, HarvestCfg(max_len=48, block_docs=8, shard_acts=150, batch_tokens=256), 10**6, verbose=False)


def test_training_refuses_a_folder_in_use(stores, tmp_path):
    tr, va = stores
    out = tmp_path / "run"
    code = f"from glp_nb.core import writer_lock\nimport time\nwith writer_lock({str(out)!r}): time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_lock(out, proc)
        with pytest.raises(RuntimeError, match=rf"PID {proc.pid}"): train_glp(P(), tr, va, out, **QUIET)
        with pytest.raises(RuntimeError, match=rf"PID {proc.pid}"): train_sae(P(), tr, out, **QUIET)
    finally:
        proc.kill(); proc.wait()


# ---------------------------------------------------------------- 4. nothing the user made is deleted unasked

def test_lost_manifest_is_refused_not_deleted(tmp_path):
    out = tmp_path / "s"
    harvest(tiny_llm(), _docs(), out, HCFG, 10**6, verbose=False)
    (out / "manifest.json").unlink()
    before = sorted(os.listdir(out))
    with pytest.raises(FileExistsError, match=rf"no manifest.json.*rm {out}/shard_\*.npy"):
        harvest(tiny_llm(), _docs(), out, HCFG, 10**6, verbose=False)
    assert sorted(os.listdir(out)) == before and any(n.startswith("shard_") for n in before)


# ---------------------------------------------------------------- 5. damaged states do not block a resume

def test_truncated_checkpoint_falls_back(stores, tmp_path):
    tr, va = stores
    _, ref = train_glp(P(), tr, va, tmp_path / "ref", **QUIET)
    out = tmp_path / "r"
    train_glp(P(), tr, va, out, stop_step=14, **QUIET)                             # checkpoints at steps 6 and 12
    c6, c12 = list_ckpts(out)
    with open(c12 / "state.pt", "r+b") as f: f.truncate(500)
    (out / ".metrics.csv.x1y2.tmp").write_text("half")                              # a temporary of an interrupted write
    logs = []
    _, m = train_glp(P(), tr, va, out, progress=False, log=logs.append)
    assert any(f"checkpoint {c12} is damaged" in l and f"damaged-{c12.name}" in l for l in logs), logs
    assert (out / f"damaged-{c12.name}" / "state.pt").exists() and not (out / ".metrics.csv.x1y2.tmp").exists()
    cols = ["step", "acts", "train_loss", "val_loss"]
    np.testing.assert_allclose(m[cols].fillna(0).values, ref[cols].fillna(0).values, rtol=1e-5, atol=1e-7)


def test_sae_without_metrics_is_retrained(stores, tmp_path):
    tr, _ = stores
    out = tmp_path / "sae"
    train_sae(P(), tr, out, **QUIET)
    (out / "metrics.csv").unlink()                                                  # killed after the weights, before metrics.csv
    msgs = []
    assert sae_ready(out, P(), tr, log=msgs.append) is None and "metrics.csv missing" in msgs[0]
    (out / ".sae.safetensors.abc.tmp").write_bytes(b"half")
    train_sae(P(), tr, out, **QUIET)
    sae, df = sae_ready(out, P(), tr)
    assert len(df) == 2 and sorted(os.listdir(out)) == ["config.json", "metrics.csv", "sae.safetensors"]


# ---------------------------------------------------------------- 6. a full disk names the file

FULL = textwrap.dedent("""
    import resource, signal, sys, numpy as np, torch
    from glp_nb.core import save_json
    from glp_nb.harvest import write_shard
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)                  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    what = sys.argv[2]
    if what == "shard": write_shard(sys.argv[1], np.zeros((1000, 64), np.uint16))
    else: save_json({"x": list(range(20_000))}, sys.argv[1])
""")


@pytest.mark.parametrize("what", ["shard", "json"])
def test_full_disk_names_the_file(tmp_path, what):
    dst = tmp_path / ("shard_00000.npy" if what == "shard" else "manifest.json")
    r = subprocess.run([sys.executable, "-c", FULL, str(dst), what], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("OSError") and "disk full (or file size limit)" in last and str(dst) in last, last
    assert os.listdir(tmp_path) == []                                               # the temporary is gone, no half file
