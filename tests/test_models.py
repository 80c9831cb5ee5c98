"Tests of glp_nb.models on the real packaged Gemma-3-270M (converted and cached on first use)."
import pytest, torch
from glp_nb.core import ModelCfg
from glp_nb.models import load_llm, encode, pad, forward_to_layer, mlp_neurons, edit_layer, get_layers

TEXTS = ["The river rose after three days of rain, and the village moved its sheep to the hills.",
         "Parliament met on Tuesday."]

@pytest.fixture(scope="module")
def llm():
    torch.manual_seed(0)
    return load_llm(ModelCfg())

@pytest.fixture(scope="module")
def batch(llm):
    seqs = encode(llm, TEXTS, max_len=64)
    assert len(seqs[0]) > len(seqs[1])  # a genuinely padded batch
    ids, mask = pad(llm, seqs)
    return seqs, ids, mask

def test_loaded(llm):
    assert (llm.name, llm.layer, llm.n_layers, llm.d, llm.d_mlp, llm.bos) == ("gemma3-270m", 8, 18, 640, 2048, True)
    assert next(llm.model.parameters()).dtype == torch.float32 and not llm.model.training

def test_encode_bos_and_truncation(llm):
    e = encode(llm, TEXTS, max_len=5)
    assert all(x[0] == llm.tok.bos_token_id for x in e)
    assert len(e[0]) == 5

def test_forward_to_layer_matches_hidden_states(llm, batch):
    seqs, ids, mask = batch
    h = forward_to_layer(llm, ids, mask)
    with torch.no_grad():
        hs = llm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(hs) == llm.n_layers + 1
    real = mask.bool()
    torch.testing.assert_close(h[real], hs[llm.layer + 1][real], rtol=1e-5, atol=1e-3)
    # the short row of the padded batch equals that sentence run alone
    n = len(seqs[1])
    alone = forward_to_layer(llm, ids[1:, :n])
    torch.testing.assert_close(h[1, :n], alone[0], rtol=1e-4, atol=1e-2)

def test_forward_to_layer_other_layer(llm, batch):
    _, ids, mask = batch
    import dataclasses
    l3 = dataclasses.replace(llm, layer=3)
    with torch.no_grad():
        hs = llm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    torch.testing.assert_close(forward_to_layer(l3, ids, mask)[mask.bool()], hs[4][mask.bool()], rtol=1e-5, atol=1e-3)

def test_mlp_neurons(llm, batch):
    _, ids, mask = batch
    z = mlp_neurons(llm, ids, mask)
    assert z.shape == (2, ids.shape[1], llm.d_mlp)
    mlp = get_layers(llm.model)[llm.layer].mlp
    got = {}
    h = mlp.register_forward_hook(lambda m, a, o: got.__setitem__("o", o))
    try:
        with torch.no_grad(): llm.model(input_ids=ids, attention_mask=mask)
    finally: h.remove()
    with torch.no_grad(): out = mlp.down_proj(z)
    torch.testing.assert_close(out[mask.bool()], got["o"][mask.bool()], rtol=1e-4, atol=1e-3)

def test_edit_layer(llm, batch):
    _, ids, mask = batch
    with torch.no_grad():
        base = llm.model(input_ids=ids, attention_mask=mask).logits
        with edit_layer(llm, lambda h: h): same = llm.model(input_ids=ids, attention_mask=mask).logits
        with edit_layer(llm, torch.zeros_like): zeroed = llm.model(input_ids=ids, attention_mask=mask).logits
        after = llm.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(same, base)
    torch.testing.assert_close(after, base)  # the hook is gone afterwards
    assert (zeroed - base).abs().max() > 1.0
