"""Packed forward vs HF's padded forward (float64, independent reference), pooling, sizes."""
import dataclasses

import pytest
import torch
from esm2ae.model import (
    CLS_ID,
    EOS_ID,
    ESM2_SIZES,
    MASK_ID,
    PAD_ID,
    AutoEncoder,
    Esm2AE,
    PackedEsm,
    count_params,
    esm2_config,
    pack_sequences,
    pool,
)
from transformers import EsmForMaskedLM


def _batch(lengths, seed=0, masks=((0, 2), (1, 3), (1, 5))):
    g = torch.Generator().manual_seed(seed)
    seqs = [[CLS_ID] + torch.randint(4, 24, (n - 2,), generator=g).tolist() + [EOS_ID] for n in lengths]
    for i, j in masks:
        if i < len(seqs):
            seqs[i][j] = MASK_ID
    L = max(lengths)
    ids = torch.full((len(seqs), L), PAD_ID)
    am = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        am[i, : len(s)] = 1
    return seqs, ids, am


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_packed_matches_hf_padded_float64(backend):
    torch.manual_seed(0)
    hf = EsmForMaskedLM(esm2_config("esm2_tiny")).double().eval()
    lengths = [7, 12, 5, 9]
    seqs, ids, am = _batch(lengths)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am).logits
        b = pack_sequences(seqs, total_len=40)     # 7 filler tokens at the tail
        m = PackedEsm(hf, backend)
        out = m.logits(m.hidden_states(b))
    for i, n in enumerate(lengths):
        got = out[b.cu_seqlens[i]: b.cu_seqlens[i + 1]]
        # HF computes the rotary angles and the token-dropout ratio in float32 even in a float64
        # model, so agreement is at float32 rounding, not 1e-15
        torch.testing.assert_close(got, ref[i, :n], atol=1e-6, rtol=1e-6)


def test_packing_is_order_independent_and_ignores_filler():
    torch.manual_seed(1)
    hf = EsmForMaskedLM(esm2_config("esm2_tiny")).double().eval()
    seqs, _, _ = _batch([6, 10, 8], seed=2)
    m = PackedEsm(hf, "sdpa")
    with torch.no_grad():
        a = m.hidden_states(pack_sequences(seqs))
        b = m.hidden_states(pack_sequences(seqs[::-1], total_len=64))
    torch.testing.assert_close(a[:6], b[18:24])


def test_loss_counts_only_labelled_positions():
    hf = EsmForMaskedLM(esm2_config("esm2_tiny")).eval()
    seqs, _, _ = _batch([8, 8], masks=())
    labels = [[-100] * 8, [-100] * 8]
    labels[0][3] = seqs[0][3]
    b = pack_sequences(seqs, labels, total_len=20)
    loss_sum, n, correct = PackedEsm(hf, "sdpa")(b)
    assert int(n) == 1 and 0 <= int(correct) <= 1 and loss_sum.item() > 0


def test_lm_head_on_the_masked_tokens_only_scores_and_trains_as_on_all_tokens():
    """The head runs on the labelled positions only (found on the host when packing): the same loss,
    counts and gradients as the head over every token with the unlabelled ones ignored."""
    torch.manual_seed(3)
    hf = EsmForMaskedLM(esm2_config("esm2_tiny")).double()
    seqs, _, _ = _batch([9, 14, 6], seed=4, masks=())
    g = torch.Generator().manual_seed(5)
    labels = [[t if torch.rand((), generator=g) < 0.3 else -100 for t in s] for s in seqs]
    b = pack_sequences(seqs, labels, total_len=40)
    assert b.label_positions.tolist() == (b.labels != -100).nonzero().squeeze(1).tolist()
    m = PackedEsm(hf, "sdpa")

    def scores_and_grads(run):
        hf.zero_grad()
        loss_sum, n, correct = run()
        loss_sum.backward()
        return loss_sum.detach(), int(n), int(correct), [p.grad.clone() for p in hf.parameters() if p.grad is not None]

    def whole_head():
        logits = m.logits(m.hidden_states(b)).float()
        valid = b.labels != -100
        return (torch.nn.functional.cross_entropy(logits, b.labels, ignore_index=-100, reduction="sum"),
                valid.sum(), ((logits.argmax(-1) == b.labels) & valid).sum())

    ref = scores_and_grads(whole_head)
    for batch in (b, dataclasses.replace(b, label_positions=None)):   # positions given, or found here
        got = scores_and_grads(lambda batch=batch: m(batch))
        torch.testing.assert_close(got[0], ref[0].float())
        assert got[1:3] == ref[1:3] and got[1] == sum(t != -100 for row in labels for t in row)
        for a, r in zip(got[3], ref[3], strict=True):
            torch.testing.assert_close(a, r)


def test_mean_pool_matches_manual_and_cls():
    h = torch.arange(2 * 5 * 1, dtype=torch.float64).reshape(10, 1).repeat(1, 3)
    seqs = [[CLS_ID, 5, 6, EOS_ID], [CLS_ID, 7, 8, 9, EOS_ID]]
    b = pack_sequences(seqs, total_len=10)
    mean = pool(h[:10], b, "mean")
    torch.testing.assert_close(mean[0], h[1:3].mean(0))
    torch.testing.assert_close(mean[1], h[5:8].mean(0))
    torch.testing.assert_close(pool(h, b, "cls"), h[[0, 4]])


def test_autoencoder_shapes_default_widths():
    ae = AutoEncoder(1280, [768, 512, 256, 128])
    z, r = ae(torch.randn(3, 1280))
    assert z.shape == (3, 128) and r.shape == (3, 1280)
    dims = [m.out_features for m in ae.encoder if isinstance(m, torch.nn.Linear)]
    assert dims == [768, 512, 256, 128]
    assert [m.out_features for m in ae.decoder if isinstance(m, torch.nn.Linear)] == [256, 512, 768, 1280]


def test_esm2_size_configs():
    # published parameter counts: 7.8M, 35M, 148M, 651M
    from transformers import EsmForMaskedLM
    with torch.device("meta"):
        sizes = {k: count_params(EsmForMaskedLM(esm2_config(k))) for k in ["esm2_t6_8M", "esm2_t33_650M"]}
    assert abs(sizes["esm2_t6_8M"] - 7.84e6) / 7.84e6 < 0.05
    assert abs(sizes["esm2_t33_650M"] - 651e6) / 651e6 < 0.01
    assert esm2_config("facebook/esm2_t36_3B_UR50D").hidden_size == 2560
    with pytest.raises(ValueError, match="unknown ESM-2 size"):
        esm2_config("esm3_big")
    assert set(ESM2_SIZES) >= {"esm2_t6_8M", "esm2_t12_35M", "esm2_t30_150M", "esm2_t33_650M", "esm2_t36_3B"}


def test_esm2ae_frozen_backbone_gets_no_grad():
    hf = EsmForMaskedLM(esm2_config("esm2_tiny"))
    m = Esm2AE(hf, [32, 16], attention="sdpa")
    seqs, _, _ = _batch([6, 9], masks=())
    out = m(pack_sequences(seqs), mlm=False, ae=True, freeze_backbone=True)
    out["ae_loss"].backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert m.ae.encoder[0].weight.grad is not None


def test_residual_stream_dtype_under_autocast(monkeypatch):
    """model.residual_dtype: fp32 keeps HF's fp32 residual stream under bf16 autocast; autocast carries
    it in bf16 between layers. Both stay near a float64 reference (bf16 rounding, not a different model)."""
    import esm2ae.model as M

    torch.manual_seed(0)
    hf = EsmForMaskedLM(esm2_config("esm2_tiny")).eval()
    seqs, _, _ = _batch([7, 12, 5, 9])
    b = pack_sequences(seqs, total_len=40)
    with torch.no_grad():
        ref = PackedEsm(EsmForMaskedLM(esm2_config("esm2_tiny")).double().eval(), "sdpa")
        ref.hf.load_state_dict({k: v.double() for k, v in hf.state_dict().items()})
        want = ref.hidden_states(b).float()
    seen = []
    layer = M.esm_layer
    monkeypatch.setattr(M, "esm_layer", lambda h, *a: (seen.append(h.dtype), layer(h, *a))[1])
    got = {}
    for residual in ("fp32", "autocast"):
        m = PackedEsm(hf, "sdpa")
        m.residual_dtype = residual
        seen.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got[residual] = m.hidden_states(b).float()
        n_layers = hf.config.num_hidden_layers
        assert seen == [torch.float32 if residual == "fp32" else torch.bfloat16] * n_layers
        torch.testing.assert_close(got[residual], want, atol=0.1, rtol=0.05)
    assert not torch.equal(got["fp32"], got["autocast"])  # the option does change the arithmetic


def test_compile_mode_reaches_inductor_and_not_the_tracing_backends(monkeypatch):
    """model.compile_mode is Inductor's mode for the four layer functions; aot_eager and eager take no
    mode. The train builder carries the key from the config to the model."""
    import esm2ae.model as M
    from esm2ae.bench import bench_config
    from esm2ae.train import build_training_model

    calls = []
    monkeypatch.setattr(M.torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    M.compiled_esm_layers.cache_clear()
    try:
        M.compiled_esm_layers("inductor", "max-autotune-no-cudagraphs")
        M.compiled_esm_layers("aot_eager", "max-autotune-no-cudagraphs")
        M.compiled_esm_layers("inductor", "coordinate-descent")
        M.compiled_esm_layers("inductor", "autotune-pointwise")
    finally:
        M.compiled_esm_layers.cache_clear()
    assert [c.get("mode") for c in calls] == ["max-autotune-no-cudagraphs"] * 4 + [None] * 12
    assert [c.get("options") for c in calls] == ([None] * 8 + [{"coordinate_descent_tuning": True}] * 4
                                                 + [{"max_autotune_pointwise": True}] * 4)
    assert all(c["dynamic"] is False for c in calls)
    cfg = bench_config("esm2_tiny", overrides=["model.compile_mode=max-autotune-no-cudagraphs"])
    model, _, _ = build_training_model(cfg, torch.device("cpu"))
    assert model.backbone.compile_mode == "max-autotune-no-cudagraphs"
