import pytest
import torch
from chat_pretrain.model import (
    SHIPPED,
    build_model,
    count_params,
    resolve_attention,
    sdpa_supported,
    shipped_config,
)


def test_attention_choice_follows_the_installed_transformers():
    impl, reason = resolve_attention("auto")
    assert impl == ("sdpa" if sdpa_supported() else "eager") and reason
    assert resolve_attention("eager")[0] == "eager"


def test_chatlm_size_and_tied_embeddings():
    spec = shipped_config("chatlm-0.2b")
    assert (spec["d_model"], spec["d_ff"], spec["num_heads"], spec["num_layers"], spec["num_decoder_layers"]) == \
        (768, 3072, 12, 10, 10)
    # Built on the meta device: sizes only, no 0.2B allocation in a unit test.
    with torch.device("meta"):
        model, _ = build_model("chatlm-0.2b", 29298, 0, 1)
    assert model.lm_head.weight is model.shared.weight
    assert 180e6 < count_params(model) < 200e6
    assert set(SHIPPED) == {"chatlm-0.2b", "tiny"}


def test_sdpa_matches_eager_in_float64():
    """SDPA (with the relative position bias as an additive mask) against the eager reference, float64."""
    if not sdpa_supported():
        pytest.skip("this transformers has no SDPA for T5")
    torch.manual_seed(0)
    eager, _ = build_model("tiny", 500, 0, 1, "eager", dropout_rate=0.0)
    sdpa, _ = build_model("tiny", 500, 0, 1, "sdpa", dropout_rate=0.0)
    sdpa.load_state_dict(eager.state_dict())
    eager, sdpa = eager.double().eval(), sdpa.double().eval()
    ids = torch.randint(2, 500, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    labels = torch.randint(2, 500, (3, 5))
    a = eager(input_ids=ids, attention_mask=mask, labels=labels)
    b = sdpa(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.allclose(a.logits, b.logits, atol=1e-10)
    assert abs(a.loss.item() - b.loss.item()) < 1e-10


def test_local_directory_round_trip(tmp_path):
    model, _ = build_model("tiny", 300, 0, 1, dropout_rate=0.0)
    model.save_pretrained(tmp_path / "m")
    again, how = build_model(str(tmp_path / "m"), 300, 0, 1)
    assert "loaded" in how
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(ValueError, match="not a shipped config"):
        build_model(str(tmp_path / "missing"), 300, 0, 1)


def test_tied_weights_resume(tmp_path):
    """The users' trainer crashed resuming tied embeddings (lm_head shares `shared`). Our checkpoint
    round-trips through core's CheckpointManager and through its save_pretrained directory, and the
    weights stay tied afterwards (a step moves both)."""
    from trainstack.checkpoint import CheckpointManager

    torch.manual_seed(0)
    model, _ = build_model("tiny", 300, 0, 1, dropout_rate=0.0)
    with torch.no_grad():
        model.shared.weight.add_(1.0)  # differs from any fresh init
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpts = CheckpointManager(tmp_path / "ckpt")
    path = ckpts.save(7, model=model, optimizer=opt, extra={"data": {"bucket": 2}},
                      save_model_fn=lambda d: model.save_pretrained(d))

    torch.manual_seed(1)
    fresh, _ = build_model("tiny", 300, 0, 1, dropout_rate=0.0)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    extra = ckpts.load(path, model=fresh, optimizer=fresh_opt)
    assert extra["data"] == {"bucket": 2}
    assert fresh.lm_head.weight is fresh.shared.weight
    for (k, v), (k2, v2) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    loss = fresh(input_ids=torch.tensor([[5, 6, 1]]), labels=torch.tensor([[7, 1]])).loss
    loss.backward()
    fresh_opt.step()
    assert fresh.lm_head.weight is fresh.shared.weight

    again, how = build_model(str(path), 300, 0, 1)  # the checkpoint as a model directory
    assert "loaded" in how and again.lm_head.weight is again.shared.weight
    assert torch.equal(again.shared.weight, model.shared.weight)


def test_a_new_models_embedding_rows_are_aligned_and_the_extra_rows_never_generated():
    """Random init: the embedding has a multiple of 128 rows (T5's own practice: 32,128 rows for
    32,100 tokens), so the output matmuls are aligned; ids past the tokenizer's are suppressed in
    generation, and a tokenizer already aligned gets no extra rows."""
    from chat_pretrain.model import embedding_rows

    assert (embedding_rows(29298), embedding_rows(4000), embedding_rows(256)) == (29312, 4096, 256)
    torch.manual_seed(0)
    model, _ = build_model("tiny", 4000, 0, 1, "sdpa", dropout_rate=0.0)
    assert model.config.vocab_size == model.shared.weight.shape[0] == 4096
    assert model.generation_config.suppress_tokens == list(range(4000, 4096))
    ids = torch.randint(2, 4000, (4, 9))
    with torch.no_grad():
        # the extra rows made the likeliest (20x the mean row of what it generates): without the
        # suppression most generated ids would be extra rows; with it, none
        first = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
        model.lm_head.weight[4000:] = model.lm_head.weight[first[:, 1:]].mean((0, 1)) * 20
        out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
        model.generation_config.suppress_tokens = None
        unsuppressed = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    assert int(out.max()) < 4000 and (unsuppressed >= 4000).float().mean() > 0.5
    assert build_model("tiny", 256, 0, 1, "sdpa")[0].generation_config.suppress_tokens is None
