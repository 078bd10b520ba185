"""Every shipped profile validates through the real CLI; validate rejects bad profiles clearly."""
import pytest
import yaml
from esm2ae.cli import main
from esm2ae.profiles import activation_bytes_per_token, estimate_memory, shipped_profiles, validate_profile

NAMES = ["rtx2080s-8g", "2x-rtx2080s-8g", "rtx3080-10g", "a100-40g", "h100-80g", "h200-141g", "cpu-debug"]


def test_all_expected_profiles_ship():
    assert sorted(p.name for p in shipped_profiles()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_profile_validates(name):
    v = validate_profile(name)
    assert v.ok, v.errors
    assert any(n.startswith("tokens/step") for n in v.notes)
    assert any(n.startswith("memory:") for n in v.notes)


def test_cli_validate_all_and_list_show_pick(capsys):
    assert main(["profiles", "validate"]) == 0
    out = capsys.readouterr().out
    assert out.count("OK  ") == len(NAMES) and "deepspeed: config accepted" in out
    assert main(["profiles", "list"]) == 0
    assert "rtx2080s-8g" in capsys.readouterr().out
    assert main(["profiles", "show", "h100-80g"]) == 0
    assert "max_tokens_per_batch" in capsys.readouterr().out
    assert main(["profiles", "pick", "--hardware", "rtx3080-10g"]) == 0
    assert capsys.readouterr().out.strip() == "rtx3080-10g"
    assert main(["profiles", "pick", "--simulate", "h100-80g"]) == 0
    assert capsys.readouterr().out.strip() == "h100-80g"
    assert main(["profiles", "pick", "--simulate", "h200-141g"]) == 0   # both H100 and H200 profiles fit
    assert capsys.readouterr().out.strip() == "h200-141g"
    # a GPU that fits no GPU profile: auto names the closest one instead of falling back to the CPU
    assert main(["profiles", "pick", "--simulate", "rtx4080s-16g"]) == 0  # 16 GB sm_89: rtx3080-10g fits
    assert capsys.readouterr().out.strip() == "rtx3080-10g"


def _copy(tmp_path, name, edit):
    src = next(p for p in shipped_profiles() if p.name == name)
    data = yaml.safe_load(open(src.path).read())
    edit(data)
    out = tmp_path / f"my-{name}.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_validate_accepts_a_path_to_an_edited_copy(tmp_path, capsys):
    p = _copy(tmp_path, "a100-40g", lambda d: d["settings"]["optim"].update(lr=3e-4))
    assert main(["profiles", "validate", str(p)]) == 0


def test_rejects_misspelled_key(tmp_path, capsys):
    p = _copy(tmp_path, "a100-40g", lambda d: d["settings"]["optim"].update(lrr=3e-4))
    assert main(["profiles", "validate", str(p)]) == 2  # a bad config: exit 2
    out = capsys.readouterr().out
    assert "FAIL" in out and "optim.lrr" in out and "lr" in out


def test_rejects_unsupported_precision(tmp_path, capsys):
    p = _copy(tmp_path, "rtx2080s-8g", lambda d: d["settings"].update(precision="bf16"))
    v = validate_profile(str(p))
    assert not v.ok
    assert "precision 'bf16'" in v.errors[0] and "(7, 5)" in v.errors[0]


def test_rejects_profile_that_cannot_fit(tmp_path):
    def edit(d):
        d["settings"]["deepspeed"]["enabled"] = False      # full AdamW on an 8 GB card
    v = validate_profile(str(_copy(tmp_path, "rtx2080s-8g", edit)))
    assert not v.ok
    assert any("does not fit" in e and "GiB" in e and "optimizer" in e for e in v.errors)


def test_rejects_bad_deepspeed_and_tokens_arithmetic(tmp_path):
    def edit(d):
        d["settings"]["batch"]["max_tokens_per_batch"] = 4096
        d["settings"]["batch"]["tokens_per_step"] = 1000      # one micro-batch already overshoots
    v = validate_profile(str(_copy(tmp_path, "rtx2080s-8g", edit)))
    assert any("overshoots" in e for e in v.errors)
    v = validate_profile(str(_copy(tmp_path, "rtx2080s-8g",
                                   lambda d: d["settings"]["deepspeed"].update(reduce_bucket_size=-5))))
    assert any("rejected by DeepSpeed" in e for e in v.errors), v.errors


@pytest.mark.parametrize("residual,tokens,measured_gib", [
    ("fp32", 16384, 31.1),      # H100, 2026-11-22
    ("fp32", 32768, 56.3),      # H200, 2026-12-02
    ("autocast", 32768, 52.9),  # H200, 2026-12-03, the MLM head on the masked tokens only (run K)
    ("autocast", 65536, 94.7),  # the same run
])
def test_memory_estimate_is_in_the_measured_range(residual, tokens, measured_gib):
    # peaks measured (BENCHMARKS.md): 650M, bf16, fused AdamW, the given micro-batch and residual dtype;
    # the first two measured with the LM head over every token (~1% more activations than counted now)
    from esm2ae.config import Config
    from trainstack.config import load_config
    cfg = load_config(Config, {"precision": "bf16", "batch": {"max_tokens_per_batch": tokens},
                               "model": {"residual_dtype": residual}})
    est = estimate_memory(cfg, "bf16")
    assert measured_gib <= est.total_gib <= measured_gib * 1.35


def test_the_lm_head_counts_for_the_masked_tokens_only():
    every = activation_bytes_per_token(1280, 33, 5120, 33, half=True, checkpointing=False)
    masked = activation_bytes_per_token(1280, 33, 5120, 33, half=True, checkpointing=False, masked_fraction=0.15)
    assert every - masked == pytest.approx(0.85 * (4 * 1280 * 3 + 4 * 33 * 3))
