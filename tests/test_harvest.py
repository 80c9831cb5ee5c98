"""Tests of glp_nb.harvest that a notebook cannot run: the real packaged model, and SIGKILL + resume byte-identity
(damaged stores, settings mismatches and non-finite activations are tested in nbs/03_harvest.ipynb)."""
import os, sys, signal, subprocess, textwrap
from pathlib import Path
import pytest
import torch
from glp_nb.core import HarvestCfg, ModelCfg, load_json, torch_threads
from glp_nb.models import load_llm, encode
from glp_nb.harvest import harvest, to_bits, assert_bf16_close, block_acts

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Activation stores hold the residual stream of one layer for every token of every document, except the first one, "
    "which is a massive outlier at middle layers. " * 4,  # longer than max_len below: checks truncation
    "A",
    "Diffusion models learn a distribution by reversing a noising process; here the data are LLM activations.",
]
CFG = HarvestCfg(max_len=48, block_docs=2, shard_acts=40, batch_tokens=128)


def _docs(texts):
    return [(f"doc{i}", t) for i, t in enumerate(texts)]


# ---------------------------------------------------------------- (1) the real packaged model

@pytest.fixture(scope="module")
def gemma():
    with torch_threads(max(1, min(2, os.cpu_count() or 1))):   # the module's thread count; the previous one comes back after it
        yield load_llm(ModelCfg())


def test_real_model_rows_match_single_forward(gemma, tmp_path):
    llm = gemma
    s = harvest(llm, _docs(TEXTS), tmp_path / "g", CFG, n_acts=10**6, split="val", corpus={"source": "test"}, verbose=False)
    ids = encode(llm, TEXTS, CFG.max_len)
    assert max(map(len, ids)) == CFG.max_len  # the long text was truncated
    assert s.n == sum(len(x) - 1 for x in ids) and s.d == llm.d
    assert s.manifest["complete"] and s.manifest["stop"] == "docs_exhausted"
    assert len(s.shards) >= 2  # shards of whole blocks
    x = s.read(0, s.n)
    start = 0
    with torch.inference_mode():
        for t in ids:
            ref = llm.model(torch.tensor([t]), output_hidden_states=True).hidden_states[llm.layer + 1][0, 1:].float()
            got = x[start:start + len(t) - 1]
            start += len(t) - 1
            # bf16 keeps 8 significant bits: |err| <= 2^-8 |x| from rounding, plus batched-vs-single fp32 noise
            torch.testing.assert_close(got, ref, rtol=2**-7, atol=1e-2 * float(ref.abs().median()) + 1e-4)
    assert torch.isfinite(s.mean).all() and (s.var > 0).all()
    # all documents in one batch (another batch shape than the store's buckets): the fp32 sums run in another order, so a value
    # next to a bf16 rounding boundary may round the other way; equal up to 1 bf16 ulp on a small fraction of the values
    assert_bf16_close(to_bits(x), block_acts(llm, ids, 10**6), ulps=1, max_frac=0.01)


# ---------------------------------------------------------------- (2) SIGKILL at many points, resume, byte-identical

SCRIPT = textwrap.dedent("""
    import os, sys, signal
    import numpy as np, torch
    torch.set_num_threads(1)
    from glp_nb.core import HarvestCfg
    from glp_nb.models import tiny_llm
    import glp_nb.harvest as H

    mode, _, k = os.environ.get("GLP_TEST_KILL", "").partition(":")
    k = int(k or 0)
    def die(): os.kill(os.getpid(), signal.SIGKILL)

    def docs():
        r = np.random.default_rng(0)
        words = "the a of activation model layer token store shard block flow noise data".split()
        for i in range(400):
            if mode == "iter" and i == k: die()   # mid-shard, inside the document iterator
            yield f"d{i:03d}", " ".join(r.choice(words, r.integers(1, 30)))

    # kill right after the k-th call of a write step: sha256 runs inside the shard's atomic write (temp file on disk,
    # not yet renamed), _write_shard / _write_stats / _write_manifest are the three steps of a commit
    if mode in ("sha256", "_write_shard", "_write_stats", "_write_manifest"):
        orig, n = getattr(H, mode), [0]
        def wrapped(*a, **kw):
            r = orig(*a, **kw); n[0] += 1
            if n[0] == k: die()
            return r
        setattr(H, mode, wrapped)

    cfg = HarvestCfg(max_len=128, block_docs=4, shard_acts=400, batch_tokens=512)
    H.harvest(tiny_llm(), docs(), sys.argv[1], cfg, n_acts=8000, split="train", corpus={"source": "synthetic"}, verbose=False)
""")


def _run(script, out, kill=""):
    env = dict(os.environ, GLP_TEST_KILL=kill, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=300)


def _files(p):
    return {q.name: q.read_bytes() for q in sorted(Path(p).iterdir())}


def test_sigkill_resume_is_byte_identical(tmp_path):
    script = tmp_path / "h.py"; script.write_text(SCRIPT)
    r = _run(script, tmp_path / "ref")
    assert r.returncode == 0, r.stderr[-3000:]
    ref = _files(tmp_path / "ref")
    assert len([n for n in ref if n.startswith("shard_")]) >= 8
    out = tmp_path / "killed"
    for kill in ["iter:25", "sha256:2", "_write_stats:2", "_write_shard:1", "_write_manifest:2", "iter:60"]:
        r = _run(script, out, kill)
        assert r.returncode == -signal.SIGKILL, (kill, r.returncode, r.stderr[-3000:])
        m = load_json(out / "manifest.json")
        assert not m["complete"], kill
    r = _run(script, out)
    assert r.returncode == 0, r.stderr[-3000:]
    got = _files(out)
    assert sorted(got) == sorted(ref)
    for name in ref: assert got[name] == ref[name], f"{name} differs after kill + resume"
