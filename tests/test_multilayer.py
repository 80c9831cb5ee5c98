"""Tests of glp_nb.multilayer that a notebook cannot run: the one truncated forward on the real packaged Gemma-3-270M, and a
multi-layer GLP training run killed with SIGKILL (at a checkpoint write and between checkpoints) that resumes to the
same weights as an uninterrupted run."""
import os, sys, signal, subprocess, textwrap
from dataclasses import replace
from pathlib import Path
import pytest, torch
from glp_nb.core import ModelCfg, get_profile, temp_env, torch_threads
from glp_nb.models import load_llm, encode, pad, forward_to_layer, get_layers
from glp_nb.multilayer import forward_layers, train_multi, load_multi

TEXTS = ["The river rose after three days of rain, and the village moved its sheep to the hills.", "Parliament met on Tuesday."]
LAYERS = (2, 5, 8, 11)


def test_forward_layers_gemma():
    llm = load_llm(ModelCfg())
    seqs = encode(llm, TEXTS, max_len=64)
    ids, mask = pad(llm, seqs)
    later = []
    hk = get_layers(llm.model)[max(LAYERS) + 1].register_forward_hook(lambda *a: later.append(1))
    try: h = forward_layers(llm, ids, mask, LAYERS)
    finally: hk.remove()
    assert h.shape == (2, ids.shape[1], len(LAYERS), llm.d) and not later        # the blocks after the deepest never ran
    with torch.no_grad(): hs = llm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    real = mask.bool()
    for j, l in enumerate(LAYERS):
        torch.testing.assert_close(h[:, :, j][real], hs[l + 1][real], rtol=1e-5, atol=1e-3)
        assert torch.equal(h[:, :, j], forward_to_layer(replace(llm, layer=l), ids, mask))   # the same computation: the same bits


SCRIPT = textwrap.dedent("""
    import os, sys, signal
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import glp_nb.multilayer as ml
    from glp_nb.harvest import Store
    from test_multilayer import profile
    out, when = Path(sys.argv[1]), sys.argv[2]
    calls, orig = [], ml.save_ckpt
    def save(*a, **k):                      # 'after': killed right after the 2nd checkpoint; 'before': killed instead of writing it
        calls.append(1)
        if when == "before" and len(calls) == 2: os.kill(os.getpid(), signal.SIGKILL)
        orig(*a, **k)
        if when == "after" and len(calls) == 2: os.kill(os.getpid(), signal.SIGKILL)
    ml.save_ckpt = save
    tr, va = (Store(out / s) for s in ("train", "val"))
    for s in (tr, va): s.manifest.update(layers=[1, 3], n_layers=4, layer_d=8)
    ml.train_multi(profile(), tr, va, out / "glp", progress=False, n_ckpts=4)
""")


def profile():
    return get_profile("smoke", multi=dict(layers=(1, 3), n_acts=4096, d_model=32, d_mlp=64, depth=1, lr=3e-3, batch_size=64),
                       train=dict(eval_every=16, eval_acts=128))


def _stores(root: Path):
    from glp_nb.harvest import array_store
    out = []
    for split, n, seed in (("train", 2000, 0), ("val", 300, 1)):
        g = torch.Generator().manual_seed(seed)
        s = array_store(torch.randn(n, 16, generator=g) * torch.linspace(0.5, 3, 16) + 1, root / split, shard=400)
        s.manifest.update(layers=[1, 3], n_layers=4, layer_d=8)
        out.append(s)
    return out


@pytest.mark.parametrize("when", ["after", "before"])
def test_train_multi_sigkill_resume(tmp_path, when):
    with torch_threads(1):
        tr, va = _stores(tmp_path / "ref")
        ref, _ = train_multi(profile(), tr, va, tmp_path / "ref" / "glp", progress=False, n_ckpts=4, log=lambda *a: None)
        tr, va = _stores(tmp_path / "cut")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cut"), when], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
        assert not (tmp_path / "cut" / "glp" / "model.safetensors").exists()
        got, df = train_multi(profile(), tr, va, tmp_path / "cut" / "glp", progress=False, n_ckpts=4, log=lambda *a: None)
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in got.state_dict().items())
        assert df.step.is_monotonic_increasing and df.step.is_unique
        assert load_multi(tmp_path / "cut" / "glp").layers == (1, 3)
