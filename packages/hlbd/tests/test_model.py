import torch
from hlbd.autopoietic import autopoietic_transform, autopoietic_transform_loop
from hlbd.model import APTConfig, APTModel, seq2seq_loss
from hlbd.tokenizer import CharTokenizer


def _params(hidden=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(hidden, 1, 1, 1, generator=g, dtype=dtype), 0.1 * torch.randn(hidden, generator=g, dtype=dtype),
            0.3 * torch.randn(1, hidden, 1, 1, generator=g, dtype=dtype), torch.randn(1, generator=g, dtype=dtype),
            torch.tensor([1.2], dtype=dtype))


def test_vectorized_autopoietic_matches_per_head_loop_float64():
    g = torch.Generator().manual_seed(0)
    B, H, Lq, Lk = 3, 4, 6, 7
    scores = 4 * torch.randn(B, H, Lq, Lk, generator=g, dtype=torch.float64)
    scores[1, :, :, -2:] = float("-inf")  # key padding as the model masks it
    causal = torch.triu(torch.full((Lq, Lk), float("-inf"), dtype=torch.float64), diagonal=1)
    for mask in (None, causal):
        s1 = scores.clone().requires_grad_(True)
        s2 = scores.clone().requires_grad_(True)
        p1 = [p.clone().requires_grad_(True) for p in _params()]
        p2 = [p.clone().requires_grad_(True) for p in _params()]
        out1 = autopoietic_transform(s1, mask, *p1)
        out2 = autopoietic_transform_loop(s2, mask, *p2)
        torch.testing.assert_close(out1, out2, rtol=1e-10, atol=1e-10)
        w = torch.randn(out1.shape, generator=g, dtype=torch.float64)
        (out1 * w).sum().backward()
        (out2 * w).sum().backward()
        for a, b in zip([s1, *p1], [s2, *p2], strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10)
    # the transform is not the identity: it really changes the scores
    assert (autopoietic_transform(scores, None, *_params()) - scores.clamp(-15, 15)).abs().max() > 0.1


def test_standard_attention_ignores_padding():
    torch.manual_seed(0)
    m = APTModel(APTConfig(vocab_size=30, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=1, n_decoder_layers=1,
                           dropout=0.0)).eval()
    src = torch.tensor([[5, 6, 7, 0, 0]])
    tgt = torch.tensor([[2, 8, 9, 3, 0, 0]])
    a = m(src, tgt[:, :-1])[:, :3]
    b = m(src[:, :3], tgt[:, :3])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_tokenizer_round_trip_and_save(tmp_path):
    from hlbd.data import Pair

    tok = CharTokenizer.build([Pair("<en>Hi", "你好。", "english", "chinese", "x")], tags=["<en>"])
    assert tok.tokens[:5] == ["<pad>", "<unk>", "<bos>", "<eos>", "<en>"]
    ids = tok.encode_target("你好。")
    assert ids[0] == 2 and ids[-1] == 3 and tok.decode(ids) == "你好。"
    assert tok.encode("<en>Hi?")[-1] == 1  # unknown char
    tok.save(tmp_path / "t.json")
    assert CharTokenizer.load(tmp_path / "t.json").tokens == tok.tokens


def test_teacher_forced_exact_flags():
    torch.manual_seed(0)
    m = APTModel(APTConfig(vocab_size=12, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1,
                           dropout=0.0, attention="autopoietic"))
    src, tgt = torch.tensor([[4, 5, 6]]), torch.tensor([[2, 7, 8, 3]])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(60):
        loss, n, _ = seq2seq_loss(m, src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    _, n, right = seq2seq_loss(m, src, tgt)
    assert int(n) == 3 and bool(right[0])
    from hlbd.evaluate import greedy_decode

    assert greedy_decode(m, src, 5)[0][:3] == [7, 8, 3]
