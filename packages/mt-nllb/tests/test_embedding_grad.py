"""The embeddings' gradient rows added in place (speed.embedding_row_grads) against autograd's dense form."""

import pytest
import torch
from mt_nllb import loss as L
from mt_nllb.embedding_grad import add_embedding_rows_to_grad
from mt_nllb.model import load_arch_config
from transformers import M2M100ForConditionalGeneration
from transformers.models.m2m_100.modeling_m2m_100 import shift_tokens_right


def _model(scale_embedding: bool):
    torch.manual_seed(0)
    config = load_arch_config("tiny", vocab_size=97, dropout=0.0)
    config.scale_embedding = scale_embedding
    return M2M100ForConditionalGeneration(config).double()


def _batch(pad_id: int):
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(4, 97, (3, 9), generator=g)
    ids[0, :4] = ids[0, 4:8]  # repeated ids: their rows must add up
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = pad_id, 0
    labels = torch.randint(4, 97, (3, 7), generator=g)
    labels[2, 4:] = -100
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": shift_tokens_right(labels, pad_id, 2),
            "labels": labels}


def _gradients(model, batch, steps: int = 2):
    """Gradients after ``steps`` backward passes (the second accumulates into existing .grad)."""
    for _ in range(steps):
        loss, _ = L.seq2seq_loss(model, batch, 0.1, chunked=True, chunk_rows=5)
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("scale_embedding", [True, False])
def test_rows_added_in_place_equal_autograds_dense_embedding_gradient(scale_embedding):
    dense = _model(scale_embedding)
    rows = _model(scale_embedding)
    assert rows.model.shared.weight is rows.lm_head.weight  # NLLB ties the head to the embeddings
    assert add_embedding_rows_to_grad(rows) >= 1
    batch = _batch(dense.config.pad_token_id)
    for stack in (rows.model.encoder, rows.model.decoder):  # the lookups take the new backward
        assert "LookupAddingRowsToGrad" in type(stack.embed_tokens(batch["input_ids"]).grad_fn).__name__
    expected, got = _gradients(dense, batch), _gradients(rows, batch)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


def test_lookups_of_a_changed_model_give_the_same_outputs_and_state_dict():
    plain, changed = _model(True), _model(True)
    add_embedding_rows_to_grad(changed)
    batch = _batch(plain.config.pad_token_id)
    with torch.no_grad():
        a = plain(**{k: v for k, v in batch.items() if k != "labels"}).logits
        b = changed(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert plain.state_dict().keys() == changed.state_dict().keys()
    assert add_embedding_rows_to_grad(changed) == 0  # already changed: nothing twice


def test_auto_is_on_for_one_process_and_true_is_refused_under_several():
    from mt_nllb.config import TrainConfig
    from mt_nllb.train import embedding_row_grads_on
    from trainstack.config import ConfigError

    cfg = TrainConfig()
    assert embedding_row_grads_on(cfg, 1) and not embedding_row_grads_on(cfg, 2)
    whole_step_compiled = type("Speed", (), {"compile": True})()
    assert not embedding_row_grads_on(cfg, 1, whole_step_compiled)
    cfg.speed.embedding_row_grads = True
    with pytest.raises(ConfigError, match="speed.embedding_row_grads"):
        embedding_row_grads_on(cfg, 2)
    cfg.speed.embedding_row_grads = False
    assert not embedding_row_grads_on(cfg, 1)
