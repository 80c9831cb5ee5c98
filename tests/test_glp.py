"Tests for glp_nb.glp: paper parameter counts, authors' checkpoint layout, sampler convention, errors."
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file, load_file

from glp_nb.core import GLPCfg
from glp_nb.glp import (GLP, Normalizer, TransformerMLPDenoiser, flow_loss, load_authors_glp, load_glp, make_glp,
                        meta_params, n_params, preset, save_authors_layout, save_glp, time_grid, timestep_embedding)

# ---------------------------------------------------------------------------------------------- sizes (docs/paper_notes.md, section 3)
LADDER = [(2048, 3, 453_117_952), (2048, 6, 855_881_728), (2048, 12, 1_661_409_280),
          (2048, 24, 3_272_464_384), (4096, 6, 3_423_039_488)]


@pytest.mark.parametrize("d,depth,want", LADDER)
def test_paper_param_counts(d, depth, want):
    kw = preset(d, depth)
    assert kw == dict(d_input=d, d_model=2 * d, d_mlp=4 * d, depth=depth)
    assert meta_params(**kw) == want          # built on the meta device: nothing allocated
    assert n_params(**kw) == want


def test_meta_neuron_counts_and_multi():
    assert preset(2048, 24)["depth"] * preset(2048, 24)["d_mlp"] == 196_608
    assert meta_params(**preset(2048, 12), multi_layer=16) == n_params(**preset(2048, 12), multi_layer=16) == 1_694_971_904


def test_explicit_widths_override():
    assert preset(640, 3, GLPCfg(depth=3, d_model=640, d_mlp=1280)) == dict(d_input=640, d_model=640, d_mlp=1280, depth=3)
    assert preset(100, 2, GLPCfg(depth=2, d_model_mult=1.5, d_mlp_mult=3)) == dict(d_input=100, d_model=150, d_mlp=300, depth=2)


# ---------------------------------------------------------------------------------------------- authors' layout
def write_authors_checkpoint(folder, d=10, d_model=12, d_mlp=20, depth=2, multi=0, prefix="model.", name="final", seed=0):
    "Tiny checkpoint in the released layout, key names spelled by hand as in the authors' glp/denoiser.py."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    sd = {"in_proj.weight": r(d_model, d), "in_proj.bias": r(d_model),
          "out_proj.weight": r(d, d_model), "out_proj.bias": r(d),
          "ln.weight": 1 + r(d_model), "ln.bias": r(d_model),
          "time_embed.0.weight": r(d_model, d_model), "time_embed.0.bias": r(d_model),
          "time_embed.2.weight": r(d_model, d_model), "time_embed.2.bias": r(d_model)}
    if multi:
        sd.update({"layer_embed.0.weight": r(d_model, d_model), "layer_embed.0.bias": r(d_model),
                   "layer_embed.2.weight": r(d_model, d_model), "layer_embed.2.bias": r(d_model)})
    for i in range(depth):
        for n in ("up_proj", "gate_proj", "time_proj"):
            sd[f"layers.{i}.{n}.weight"], sd[f"layers.{i}.{n}.bias"] = r(d_mlp, d_model), r(d_mlp)
        sd[f"layers.{i}.down_proj.weight"], sd[f"layers.{i}.down_proj.bias"] = r(d_model, d_mlp), r(d_model)
        sd[f"layers.{i}.ln.weight"], sd[f"layers.{i}.ln.bias"] = 1 + r(d_model), r(d_model)
    folder = Path(folder)
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v for k, v in sd.items()}, str(folder / f"{name}.safetensors"))
    shape = (multi, d) if multi else (d,)
    torch.save({"mean": r(*shape), "var": torch.rand(*shape, generator=g) + 0.5}, folder / "rep_statistics.pt")
    conf = {"model_name": "meta-llama/Llama-3.2-1B", "glp_kwargs": {
        "normalizer_config": {"rep_statistic": "/data/llama1b/layer_07/rep_statistics.pt"},
        "denoiser_config": {"d_input": d, "d_model": d_model, "d_mlp": d_mlp, "n_layers": depth,
                            "multi_layer_n_layers": multi or None},
        "tracedict_config": {"layer_prefix": "model.layers", "layers": [7], "retain": "output"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(conf))
    return sd


def reference_velocity(sd, z, t, layer_idx=None, n_llm=None):
    "The paper's §4.1 equations, applied functionally to the authors' named tensors."
    lin = lambda n, x: x @ sd[n + ".weight"].T + sd[n + ".bias"]
    ln = lambda n, x: F.layer_norm(x, x.shape[-1:], sd[n + ".weight"], sd[n + ".bias"])
    dm = sd["in_proj.weight"].shape[0]
    half = dm // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    sinus = lambda s: torch.cat([torch.cos(s[:, None] * freqs), torch.sin(s[:, None] * freqs)], -1)
    emb = lin("time_embed.2", F.silu(lin("time_embed.0", sinus(1000 * t))))
    if layer_idx is not None:
        emb = emb + lin("layer_embed.2", F.silu(lin("layer_embed.0", sinus(layer_idx.float() / (n_llm - 1)))))
    h, i = lin("in_proj", z), 0
    while f"layers.{i}.ln.weight" in sd:
        u = ln(f"layers.{i}.ln", h)
        m = F.silu(lin(f"layers.{i}.gate_proj", u) * lin(f"layers.{i}.time_proj", emb)) * lin(f"layers.{i}.up_proj", u)
        h, i = h + lin(f"layers.{i}.down_proj", m), i + 1
    return lin("out_proj", ln("ln", h))


@pytest.mark.parametrize("prefix", ["model.", "denoiser.model."])
def test_authors_loader_matches_reference(tmp_path, prefix):
    sd = write_authors_checkpoint(tmp_path, prefix=prefix)
    glp = load_authors_glp(tmp_path)
    z, t = torch.randn(7, 10), torch.rand(7)
    torch.testing.assert_close(glp.denoiser(z, t), reference_velocity(sd, z, t), atol=1e-5, rtol=1e-5)
    st = torch.load(tmp_path / "rep_statistics.pt", weights_only=True)
    torch.testing.assert_close(glp.normalizer.mean, st["mean"])
    torch.testing.assert_close(glp.normalizer.var, st["var"])
    assert glp.info["tracedict"]["layers"] == [7] and glp.info["model_name"] == "meta-llama/Llama-3.2-1B"
    # meta-neurons = input of each block's down_proj, in the reference computation too
    x = torch.randn(3, 10)
    assert glp.meta_neurons(x).shape == (3, 2 * 20)


def test_authors_intermediate_checkpoint_and_multilayer(tmp_path):
    sd = write_authors_checkpoint(tmp_path, multi=16, name="checkpoints/epoch_0032")
    glp = load_authors_glp(tmp_path, checkpoint="checkpoints/epoch_0032")
    z, t, li = torch.randn(5, 10), torch.rand(5), torch.randint(0, 16, (5,))
    torch.testing.assert_close(glp.denoiser(z, t, li), reference_velocity(sd, z, t, li, 16), atol=1e-5, rtol=1e-5)
    assert glp.normalizer.mean.shape == (16, 10) and glp.denoiser.n_llm_layers == 16


def test_authors_round_trip(tmp_path):
    g = make_glp(10, GLPCfg(depth=2, d_model=12, d_mlp=20), torch.randn(10), torch.rand(10) + 0.1)
    save_authors_layout(g, tmp_path)
    keys = set(load_file(str(tmp_path / "final.safetensors")))
    assert "model.layers.1.gate_proj.weight" in keys and "model.time_embed.2.bias" in keys and "model.ln.weight" in keys
    g2 = load_authors_glp(tmp_path)
    for k, v in g.state_dict().items(): torch.testing.assert_close(g2.state_dict()[k], v, atol=0, rtol=0)


def test_our_save_load_round_trip(tmp_path):
    g = make_glp(10, GLPCfg(depth=2, d_model=12, d_mlp=20), torch.randn(10), torch.rand(10) + 0.1)
    save_glp(g, tmp_path / "ck", acts=4096)
    g2 = load_glp(tmp_path / "ck")
    x = torch.randn(9, 10)
    gen = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(g.project(x, generator=gen()), g2.project(x, generator=gen()))
    assert torch.equal(g.meta_neurons(x), g2.meta_neurons(x))
    assert g2.info["meta"] == {"acts": 4096} and g2.cfg == g.cfg


# ---------------------------------------------------------------------------------------------- sampler convention
class ExactGaussVelocity(nn.Module):
    "v*(z,t) = E[eps - x | z_t = z] for x ~ N(mu, s^2), z_t = (1-t) x + t eps."
    def __init__(self, mu, s):
        super().__init__(); self.mu, self.s = mu, s
    def forward(self, z, t, layer_idx=None):
        t = t[:, None]; a = 1 - t
        return (t - a * self.s ** 2) / (a ** 2 * self.s ** 2 + t ** 2) * (z - a * self.mu) - self.mu


@pytest.mark.parametrize("grid", ["ours", "authors"])
def test_sampler_reaches_gaussian(grid):
    mu, s = torch.tensor([1.5, -2.0]), torch.tensor([0.3, 2.0])
    g = GLP(Normalizer(torch.zeros(2), torch.ones(2)), ExactGaussVelocity(mu, s))
    x = g.sample(30000, steps=300, generator=torch.Generator().manual_seed(0), grid=grid)
    torch.testing.assert_close(x.mean(0), mu, atol=0.04, rtol=0)
    torch.testing.assert_close(x.std(0), s, atol=0.04, rtol=0)


def test_convention_t0_data_t1_noise():
    # a perfect denoiser's training target: at t, z = (1-t) x + t eps and the target is eps - x
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    class Oracle(nn.Module):
        def forward(self, z, t, layer_idx=None): return eps - x0
    assert flow_loss(Oracle(), x0, t=0.7, noise=eps).item() == 0.0
    # zero model in normalized space: E||eps - x||^2 / d = 2
    den = TransformerMLPDenoiser(8, 16, 16, 1)
    nn.init.zeros_(den.out_proj.weight); nn.init.zeros_(den.out_proj.bias)
    gen = torch.Generator().manual_seed(0)
    assert abs(flow_loss(den, torch.randn(8192, 8, generator=gen), generator=gen).item() - 2.0) < 0.05


def test_grids_and_projection():
    assert time_grid(20, 0.5) == torch.linspace(0.5, 0, 21, dtype=torch.float64).tolist()
    a = time_grid(20, 0.5, "authors")
    assert len(a) == 11 and abs(a[0] - (1 - 10 * 0.999 / 19)) < 1e-12 and a[-1] == 0.0
    counter = {"n": 0}
    class Count(nn.Module):
        def forward(self, z, t, layer_idx=None): counter["n"] += 1; return torch.zeros_like(z)
    g = GLP(Normalizer(torch.full((4,), 3.0), torch.full((4,), 2.0)), Count())
    x = torch.randn(6, 4)
    torch.testing.assert_close(g.project(x, t_start=0.0), x, atol=1e-5, rtol=0)       # identity
    counter["n"] = 0; g.project(x, 0.5, 20); assert counter["n"] == 20
    counter["n"] = 0; g.project(x, 0.5, 20, grid="authors"); assert counter["n"] == 10
    counter["n"] = 0; g.sample(3, steps=7, grid="authors"); assert counter["n"] == 7
    assert torch.allclose(timestep_embedding(torch.tensor([0.0]), 6), torch.tensor([[1., 1, 1, 0, 0, 0]]))


def test_chunked_large_input():
    g = make_glp(8, GLPCfg(depth=1, d_model=8, d_mlp=8), torch.zeros(8), torch.ones(8))
    x = torch.randn(5000, 8)
    assert g.project(x, steps=2, chunk=777).shape == (5000, 8)
    assert g.meta_neurons(x, chunk=999).shape == (5000, 8)
    assert g.sample(2500, steps=1, chunk=1000).shape == (2500, 8)


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs(tmp_path):
    g = make_glp(8, GLPCfg(depth=1, d_model=8, d_mlp=8), torch.zeros(8), torch.ones(8))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\]"): g.project(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="t_start"): g.project(torch.zeros(2, 8), t_start=1.5)
    with pytest.raises(ValueError, match="grid"): g.sample(2, grid="ddpm")
    with pytest.raises(ValueError, match="steps"): g.sample(2, steps=0)
    with pytest.raises(ValueError, match="not multi-layer"): g.denoiser(torch.zeros(2, 8), 0.5, layer_idx=1)
    with pytest.raises(ValueError, match="stats have width"): make_glp(9, GLPCfg(depth=1), torch.zeros(8), torch.ones(8))
    with pytest.raises(ValueError, match="var shape"): Normalizer(torch.zeros(3), torch.ones(2))
    with pytest.raises(FileNotFoundError, match="no GLP folder"): load_glp(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no folder"): load_authors_glp(tmp_path / "absent")


@pytest.mark.parametrize("breakage,match", [
    ("no_config", "config.yaml"),
    ("no_stats", "rep_statistics.pt"),
    ("no_weights", "final.safetensors"),
    ("bad_key", "d_model"),
    ("shape", "denoiser.blocks.0.up_proj.weight"),
    ("missing_weight", "model.layers.0.down_proj.weight"),
    ("stats_width", "d_input=10"),
    ("pickle", "weights-only"),
])
def test_authors_errors(tmp_path, breakage, match):
    write_authors_checkpoint(tmp_path)
    conf = yaml.safe_load((tmp_path / "config.yaml").read_text())
    if breakage == "no_config": (tmp_path / "config.yaml").unlink()
    if breakage == "no_stats": (tmp_path / "rep_statistics.pt").unlink()
    if breakage == "no_weights": (tmp_path / "final.safetensors").unlink()
    if breakage == "bad_key": del conf["glp_kwargs"]["denoiser_config"]["d_model"]
    if breakage == "shape": conf["glp_kwargs"]["denoiser_config"]["d_mlp"] = 24
    if breakage == "missing_weight":
        w = load_file(str(tmp_path / "final.safetensors")); del w["model.layers.0.down_proj.weight"]
        save_file(w, str(tmp_path / "final.safetensors"))
    if breakage == "stats_width": torch.save({"mean": torch.zeros(11), "var": torch.ones(11)}, tmp_path / "rep_statistics.pt")
    if breakage == "pickle":
        torch.save({"mean": torch.zeros(10), "var": torch.ones(10), "obj": Path(".")}, tmp_path / "rep_statistics.pt")
    if breakage in ("bad_key", "shape"): (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises((FileNotFoundError, KeyError, ValueError), match=match):
        load_authors_glp(tmp_path)
