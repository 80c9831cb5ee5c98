"""glp_nb.steer: steering hook and batched generation, scores, data, matched fluency, and the optional LLM judge (stub server)."""
import http.server, json, os, tempfile, threading
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from glp_nb.core import GLPCfg, HarvestCfg, SteerCfg
from glp_nb.models import tiny_llm, encode, edit_layer, forward_to_layer
from glp_nb.glp import make_glp
from glp_nb import steer as st


@pytest.fixture(scope="module")
def tg(): return tiny_llm("gemma3", layers=6)


@pytest.fixture(scope="module")
def tl(): return tiny_llm("llama")


# ---------------------------------------------------------------- generation and the steering hook
@pytest.mark.parametrize("arch", ["tl", "tg"])
def test_left_padded_batch_equals_single(arch, request):
    m = request.getfixturevalue(arch)
    seqs = encode(m, ["one", "a somewhat longer prefix, with more bytes", "mid length"])
    batch = st.generate(m, seqs, 10, batch_size=3)
    single = [st.generate(m, [s], 10)[0] for s in seqs]
    # a left-padded batch and one sequence alone are different layouts: equal up to argmax flips at fp32 near-ties
    assert all(st.greedy_match(b, s1, lambda k, p=p, b=b: st.next_logits(m, p + b[:k])) for p, b, s1 in zip(seqs, batch, single))
    assert all(len(c) == 10 for c in batch)


def _reference(m, seq0, n, delta, post):
    "No KV cache: re-run the whole sequence each step, editing every position from the last prompt one on; (tokens, logits per step)."
    seq, start, lgs = list(seq0), len(seq0) - 1, []
    def fn(h):
        h = h.clone(); h[:, start:] = post(h[0, start:] + delta)[None]; return h
    for _ in range(n):
        lgs.append(st.next_logits(m, seq, fn)); seq.append(int(lgs[-1].argmax()))
    return seq[len(seq0):], lgs


@pytest.mark.parametrize("arch", ["tl", "tg"])
def test_cached_steering_equals_full_recompute(arch, request):
    m = request.getfixturevalue(arch)
    torch.manual_seed(3); w = torch.randn(m.d) * 2
    post = lambda x: torch.tanh(x) * 2
    seqs = encode(m, ["steer me", "another, longer prompt here"])
    got = st.generate(m, seqs, 8, delta=torch.stack([w, -w]), post=post)
    # KV cache + left padding vs full recompute: another layout, so equal up to argmax flips at fp32 near-ties
    for g, s, dw in zip(got, seqs, (w, -w)):
        ref, lgs = _reference(m, s, 8, dw, post)
        assert st.greedy_match(g, ref, lambda k: lgs[k]), (g, ref)


def test_hook_edits_only_last_position_and_counts_calls(tg):
    seen = []
    class Post:
        def __call__(self, x): seen.append(tuple(x.shape)); return x
    seqs = encode(tg, ["abc", "abcdef"])
    stats = {}
    st.generate(tg, seqs, 5, delta=torch.zeros(2, tg.d), post=Post(), stats=stats)
    assert seen == [(2, tg.d)] * 5           # one [b, d] edit per forward: the prompt pass + 4 decode steps
    assert stats["tokens"] == 10 and stats["steps"] == 5 and stats["post_s"] > 0


def test_generate_rejects_bad_delta(tg):
    with pytest.raises(ValueError, match="delta must have shape"):
        st.generate(tg, encode(tg, ["a", "b"]), 3, delta=torch.zeros(3, tg.d))
    with pytest.raises(ValueError, match="empty"):
        st.generate(tg, [[]], 3)


def test_glp_post_is_seeded(tg):
    glp = make_glp(tg.d, GLPCfg(depth=1, d_model=32, d_mlp=64), torch.zeros(tg.d), torch.ones(tg.d)).eval()
    post = st.GLPPost(glp, t_start=0.5, steps=3, seed=7)
    x = torch.randn(4, tg.d)
    a = post(x); post.reset(); b = post(x)
    assert torch.equal(a, b)   # same noise, inputs and process: exact
    seq = encode(tg, ["reproducible"])
    d = torch.randn(1, tg.d) * 3
    assert st.generate(tg, seq, 6, delta=d, post=post) == st.generate(tg, seq, 6, delta=d, post=post)


# ---------------------------------------------------------------- scores
def test_cont_nll_matches_direct(tg):
    pre = encode(tg, ["x", "a longer prefix"]); conts = [[70, 71, 72, 73], [80, 81]]
    got = st.cont_nll(tg, pre, conts, batch_size=2)
    for p, c, g in zip(pre, conts, got):
        with torch.no_grad(): lg = tg.model(input_ids=torch.tensor([p + c])).logits[0]
        ref = -torch.log_softmax(lg, -1)[len(p) - 1:-1].gather(-1, torch.tensor(c)[:, None]).mean()
        assert abs(g - float(ref)) < 1e-4


def test_text_scores():
    assert st.distinct_n([1, 1, 2, 3], 1) == 0.75 and st.seq_rep([5] * 8, 4) == 1 - 1 / 5
    v = st.vader(["I love this wonderful film", "awful, hateful mess", "the train leaves at noon"])
    assert v[0] > 0.5 and v[1] < -0.5 and v[2] == 0
    assert st.cut_eos([3, 4, 1, 5], 1) == [3, 4, 1]
    s = st.steer_score([1.0, 0.0], [2.0, 3.0], [2.0, 2.0])
    assert s[0] == 1.0 and abs(s[1] - (0.5 + np.exp(-1)) / 2) < 1e-12


def test_massive_dims_and_norm():
    mean, var = torch.zeros(64), torch.ones(64); mean[5] = 500.0
    big = st.massive_dims(mean, var, 30)
    assert big.tolist() == [5]
    x = torch.zeros(3, 64); x[:, 5] = 500.0; x[:, 0] = 2.0
    assert st.act_norm(x) > 400 and abs(st.act_norm(x, exclude=big) - 2.0) < 1e-6
    w = st.drop_dims(torch.ones(64), big)
    assert w[5] == 0 and abs(float(w.norm()) - 1) < 1e-6


# ---------------------------------------------------------------- data
def test_sentiment_splits_are_disjoint():
    tr, te = st.sentiment_splits(SteerCfg(heldout_n=300, seed=1))
    key = lambda s: set(s.str.strip().str.lower())
    assert not key(tr.prompt) & key(te.prompt)
    assert set(te.set) == set(st.SENTIMENT_SETS) and set(tr.target) == {0, 1}
    with pytest.raises(FileNotFoundError, match="no_such_set"):
        st.probe_set("no_such_set")


def test_neutral_prefixes():
    a = st.neutral_prefixes(30, seed=3)
    assert a == st.neutral_prefixes(30, seed=3) and len(set(a)) == 30
    assert all((st.vader(a) == 0)) and all(3 <= len(p.split()) <= 6 for p in a)
    assert st.found_in(a[:2], [f"xx {a[0].upper()} yy"]) == {a[0]}


def test_diffmean_and_auroc():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g); y = np.arange(400) % 2; x[y == 1, 3] += 2
    w = st.diffmean(x, y)
    assert w.argmax() == 3 and st.auroc((x @ w).numpy(), y) > 0.8


def test_store_tokens_align_with_a_tiny_harvest(tg):
    from glp_nb.harvest import harvest
    docs = [(f"d{i}", t) for i, t in enumerate(["alpha beta", "z", "a third little document", "and a fourth"])]
    with tempfile.TemporaryDirectory() as d:
        s = harvest(tg, iter(docs), Path(d) / "s", HarvestCfg(max_len=16, batch_tokens=64, block_docs=2, shard_acts=8), 10_000, verbose=False)
        tk = st.store_tokens(tg, iter(docs), s.manifest["docs"], 16)
        assert len(tk) == s.n
        x = s.read(0, s.n)
        for r in range(0, s.n, 7):
            ids = encode(tg, [docs[int(tk.doc[r])][1]], 16)[0]
            h = forward_to_layer(tg, torch.tensor([ids]))[0, int(tk.pos[r])]
            assert torch.allclose(h, x[r], atol=0.05 * float(x[r].abs().max()))


# ---------------------------------------------------------------- matched fluency and bootstrap
def test_matched_gain_recovers_offset():
    rng = np.random.default_rng(1)
    nb = np.linspace(1, 4, 5)[:, None] + 0.05 * rng.standard_normal((5, 30))
    ng = np.linspace(1.5, 5, 5)[:, None] + 0.05 * rng.standard_normal((5, 30))
    mg = st.matched_gain(dict(nll=nb, concept=nb / 4), dict(nll=ng, concept=ng / 4 + 0.1), st.boot_idx(30, 200))
    assert mg["overlap"] and abs(mg["gain"] - 0.1) < 0.01 and mg["lo"] > 0.05
    assert not st.matched_gain(dict(nll=nb, concept=nb), dict(nll=nb + 100, concept=nb), st.boot_idx(30, 5))["overlap"]


def test_summarize_and_examples():
    df = pd.DataFrame(dict(method=["baseline"] * 4 + ["glp"] * 4, r=[0.0, 0.0, 1.0, 1.0] * 2, unit=[0, 1] * 4,
                           nll=[1, 1, 3, 3.5, 1.2, 1.1, 3.1, 3.4], c=[0, 0, 0.2, 0.3, 0, 0, 0.5, 0.6], text=list("abcdefgh")))
    s = st.summarize(df, ["method", "r"], ["nll", "c"], st.boot_idx(2, 100))
    assert list(s.nll) == [1.0, 3.25, 1.15, 3.25]
    m = st.matched_examples(df, ["p0", "p1"], "c", k=2)
    assert (m["r_baseline"], m["r_glp"]) == (1.0, 1.0) and len(m["examples"]) == 2
    assert "| p" in st.examples_md(m, "c")


# ---------------------------------------------------------------- the optional LLM judge, against a stub server
class _Stub(http.server.BaseHTTPRequestHandler):
    seen = []
    mode = "ok"
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.seen.append(dict(path=self.path, auth=self.headers.get("Authorization"), body=body))
        if _Stub.mode == "error":
            self.send_response(500); self.end_headers(); self.wfile.write(b"boom"); return
        msg = body["messages"][0]["content"]
        reply = "no score here" if _Stub.mode == "garbage" else (
            "It is clearly positive. Rating: [[2]]" if "Concept:" in msg else "Mostly fluent. Rating: [[1]]")
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(out)
    def log_message(self, *a): pass


@pytest.fixture()
def stub():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Stub)
    th = threading.Thread(target=srv.serve_forever, daemon=True); th.start()
    _Stub.seen.clear(); _Stub.mode = "ok"
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown(); srv.server_close()


def test_judge_round_trip(stub, monkeypatch):
    monkeypatch.setenv("GLP_NB_JUDGE_KEY", "sk-test")
    df = st.judge(stub, "gpt-4o-mini", "positive sentiment", ["The day", "A man"], ["was lovely.", "walked home."])
    assert df.to_dict("records") == [dict(concept=2.0, fluency=1.0)] * 2
    assert len(_Stub.seen) == 4
    r = _Stub.seen[0]
    assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test"
    assert r["body"]["model"] == "gpt-4o-mini" and r["body"]["temperature"] == 0
    assert "positive sentiment" in r["body"]["messages"][0]["content"] and "Rating: [[score]]" in r["body"]["messages"][0]["content"]


def test_judge_unparsable_and_errors(stub, monkeypatch):
    monkeypatch.delenv("GLP_NB_JUDGE_KEY", raising=False); monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _Stub.mode = "garbage"
    df = st.judge(stub + "/v1", "m", "c", ["p"], ["t"])
    assert df.isna().all().all() and _Stub.seen[0]["auth"] is None
    _Stub.mode = "error"
    with pytest.raises(RuntimeError, match="HTTP 500"):
        st.chat(stub, "m", "hi")
    with pytest.raises(RuntimeError, match="unreachable"):
        st.chat("http://127.0.0.1:9", "m", "hi", timeout=2)


def test_parse_rating():
    assert st.parse_rating("Rating: [[0]]") == 0.0 and st.parse_rating("Rating: [[1.5]]") == 1.5
    assert st.parse_rating("Rating: [[3]]") is None and st.parse_rating("") is None


def test_config_defaults():
    c = SteerCfg()
    assert c.judge_url is None and c.judge_model == "gpt-4o-mini"
    assert c.t_start == 0.5 and c.steps == 20 and min(c.rs) == 0.2 and max(c.rs) == 2.0


# ---------------------------------------------------------------- the real packaged model: left padding on Gemma-3
@pytest.fixture(scope="module")
def gemma():
    from glp_nb.core import ModelCfg
    from glp_nb.models import load_llm
    return load_llm(ModelCfg())


def test_real_model_batch_equals_single(gemma):
    seqs = encode(gemma, ["I'm still", "Also last year, the government announced plans"])
    batch = st.generate(gemma, seqs, 4, batch_size=2)
    single = [st.generate(gemma, [s], 4)[0] for s in seqs]
    assert all(st.greedy_match(b, s1, lambda k, p=p, b=b: st.next_logits(gemma, p + b[:k])) for p, b, s1 in zip(seqs, batch, single))
    nll = st.cont_nll(gemma, seqs, batch)
    assert np.all(nll < 4)  # greedy continuations are likely under the same model


def test_feature_stats_and_choice(tg):
    from glp_nb.sae import TopKSAE
    sae = TopKSAE(tg.d, 48, 4, seed=1)
    x = torch.randn(300, tg.d)
    freq, mean_on = st.code_stats(sae, x, batch_size=64)
    with torch.no_grad(): z = sae.encode(x)
    assert torch.allclose(freq, (z > 0).float().mean(0)) and abs(float(freq.sum()) - 4) < 1e-5  # k = 4 latents per row
    f = st.pick_features(freq, 3, 1e-6, 1.0, seed=2)
    assert f == st.pick_features(freq, 3, 1e-6, 1.0, seed=2) and len(set(f)) == 3 and (freq[f] > 0).all()
    assert torch.allclose(st.sae_codes(sae, x, f, batch_size=50), z[:, f])
    with pytest.raises(ValueError, match="feature_freq"):
        st.pick_features(freq, 3, 2.0, 3.0)
    feats = [0, 5]
    pre = encode(tg, ["p", "q r"]); conts = [[70, 71], [72]]
    got = st.feature_acts(tg, sae, pre, conts, feats)
    for p, c, j, g in zip(pre, conts, feats, got):
        h = forward_to_layer(tg, torch.tensor([p + c]))[0, len(p):]
        with torch.no_grad(): assert abs(g - float(sae.encode(h)[:, j].mean())) < 1e-4
