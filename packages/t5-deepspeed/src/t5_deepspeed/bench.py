"""`t5-deepspeed bench`: the users' HF Seq2SeqTrainer settings vs ours, same DeepSpeed config, same GPU(s).

    t5-deepspeed bench --model t5-small --deepspeed zero2 --batch_size 1 --users_fp16      # their command 1
    t5-deepspeed bench --model t5-large --deepspeed zero2 --batch_size 4                   # their command 2
    t5-deepspeed bench --model t5-3b --deepspeed zero3 --batch_size 1 --users_fp16 --steps 10
    t5-deepspeed bench --model t5-small --deepspeed zero2 --num_gpus 2                     # DeepSpeed launcher

Both sides are random-init models of the real size (shipped configs), trained for --steps optimizer
steps on the shipped en-ro sample with three sentences joined per row (~40 tokens a side, nearer to
WMT16 lengths than single short sentences). Each side runs in its own process (DeepSpeed keeps
global state), through the real entry point:
  users: Seq2SeqTrainer as their run_translation.py command sets it (--fp16 kept as fp16, or fp32)
  ours:  t5-deepspeed defaults (bf16 for T5 where supported, TF32 matmuls, pad to a multiple of 8,
         T5 blocks compiled on a CUDA GPU)
Reported: real (non-pad) tokens/s after --warmup steps, peak allocated GPU memory, loss finiteness.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from .data import read_jsonl_pairs, sample_file


def write_bench_data(path: Path, rows: int, join: int = 3) -> None:
    pairs = read_jsonl_pairs(sample_file("train"), "en", "ro")
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            chunk = [pairs[(i * join + k) % len(pairs)] for k in range(join)]
            row = {"translation": {"en": " ".join(p[0] for p in chunk), "ro": " ".join(p[1] for p in chunk)}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# side -> (recipe, extra flags). "plain" is ours without DeepSpeed (the users' rule of thumb for small
# models); "ours-trainer-buckets" is ours with the Trainer's "auto" gradient buckets (d_model**2);
# "ours-eager" is ours with --torch_compile False (with dropout off, ours' losses must match it step by step).
SIDES = {"users": ("users", []), "ours": ("ours", []), "plain": ("ours", []),
         "ours-trainer-buckets": ("ours", ["--ds_bucket_sizes", "trainer"]),
         "ours-eager": ("ours", ["--torch_compile", "False"])}


def side_command(side: str, a, data: Path, out: Path) -> list[str]:
    recipe, flags = SIDES[side]
    if a.num_gpus > 1:
        launch = [sys.executable, "-m", "deepspeed.launcher.runner", f"--num_gpus={a.num_gpus}",
                  f"--master_port={a.master_port + list(SIDES).index(side)}", "--module", "t5_deepspeed"]
    else:
        launch = [sys.executable, "-m", "t5_deepspeed"]
    deepspeed = [] if side == "plain" else ["--deepspeed", a.deepspeed]
    args = ["--config_name", a.model, *deepspeed, "--train_file", str(data),
            "--source_lang", "en", "--target_lang", "ro", "--source_prefix", "translate English to Romanian: ",
            "--do_train", "--max_steps", str(a.steps + a.warmup + a.profile_steps),
            "--output_dir", str(out / side), "--overwrite_output_dir", "--save_strategy", "no",
            "--logging_steps", "1", "--report_to", "none", "--seed", "0",
            "--bench_json", str(out / f"{side}.json"), "--bench_warmup_steps", str(a.warmup),
            "--max_source_length", "256", "--max_target_length", "256", "--learning_rate", str(a.learning_rate)]
    batch_size = a.batch_size if side == "users" else (a.ours_batch_size or a.batch_size)
    # both get the users' --fp16; "ours" turns it into bf16 for T5 where the GPU has it
    args += ["--recipe", recipe, "--per_device_train_batch_size", str(batch_size), *flags]
    args += ["--fp16"] if a.users_fp16 else []
    args += ["--bench_profile_steps", str(a.profile_steps)] if a.profile_steps else []
    if a.gradient_checkpointing:
        args += ["--gradient_checkpointing"]
    if a.config_overrides:
        args += ["--config_overrides", a.config_overrides]
    return launch + args


def dropout_off(config_overrides: str | None) -> bool:
    """Whether --config_overrides (transformers' "key=value,key=value") sets dropout_rate to 0."""
    pairs = dict(item.split("=", 1) for item in (config_overrides or "").replace(" ", "").split(",") if "=" in item)
    try:
        return float(pairs.get("dropout_rate", "nan")) == 0.0
    except ValueError:
        return False


def compiled_vs_eager(compiled: dict, eager: dict, dropout_off: bool) -> str:
    """One line: the largest per-step loss difference between the compiled and the eager run (equal
    weights and batches; dropout draws differ between compiled and eager code, so only without it)."""
    steps = sorted(set(compiled) & set(eager))
    if not dropout_off:
        return ("compiled vs eager: not compared (dropout on: compiled and eager draw different masks); "
                "run with --config_overrides dropout_rate=0.0")
    if not steps:
        return "compiled vs eager: no common logged steps"
    step = max(steps, key=lambda k: abs(compiled[k] - eager[k]))
    return (f"compiled vs eager: largest loss difference {abs(compiled[step] - eager[step]):.2e} at step {step} "
            f"(loss {eager[step]:.4f}) over {len(steps)} steps, dropout off")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="t5-deepspeed bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="t5-small", help="shipped size name or config path (random init)")
    p.add_argument("--deepspeed", default="zero2", help="DeepSpeed config name or path, used by both sides")
    p.add_argument("--batch_size", type=int, default=1, help="per-device batch size of the users' command")
    p.add_argument("--ours_batch_size", type=int, default=None, help="ours (default: the same)")
    p.add_argument("--users_fp16", action="store_true", help="their command had --fp16")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--config_overrides", default=None, help="passed to both sides (e.g. initializer_factor=32.0)")
    p.add_argument("--timeout_s", type=int, default=None, help="per side")
    p.add_argument("--num_gpus", type=int, default=1)
    p.add_argument("--master_port", type=int, default=29511)
    p.add_argument("--sides", default="users,ours", help=f"comma list of {','.join(SIDES)}")
    p.add_argument("--profile_steps", type=int, default=0,
                   help="after the timed steps, profile N more (OUT/SIDE/profile: GPU kernels, Python functions)")
    p.add_argument("--out", default=None, help="directory for logs and JSON (default: a temp dir)")
    a = p.parse_args(argv)
    unknown = [side for side in a.sides.split(",") if side not in SIDES]
    if unknown:
        p.error(f"unknown --sides {','.join(unknown)}; known: {','.join(SIDES)}")

    from trainstack.bench import BenchResult, compare, device_banner

    out = Path(a.out or tempfile.mkdtemp(prefix="t5ds-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    data = out / "bench.train.jsonl"
    write_bench_data(data, (a.steps + a.warmup + a.profile_steps + 2) * max(a.batch_size, a.ours_batch_size or 0) * a.num_gpus)
    print(device_banner())
    results = []
    for side in a.sides.split(","):
        cmd = side_command(side, a, data, out)
        print("$ " + shlex.join(cmd), flush=True)
        with (out / f"{side}.log").open("w") as logf:
            try:
                rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=a.timeout_s,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
            except subprocess.TimeoutExpired:
                rc = "timeout"
        rec_path = out / f"{side}.json"
        if rc != 0 or not rec_path.is_file():
            tail = (out / f"{side}.log").read_text(errors="replace").strip().splitlines()[-5:]
            print(f"{side}: failed (exit {rc}); log {out / (side + '.log')}:\n  " + "\n  ".join(tail))
            jsonl = out / side / "log.jsonl"
            if jsonl.is_file():  # the losses it logged before it stopped (a diverged fp16 run, say)
                logged = [json.loads(line) for line in jsonl.read_text().splitlines()]
                print(f"{side}: logged losses {[r['loss'] for r in logged if 'loss' in r][-12:]}")
            continue
        rec = json.loads(rec_path.read_text())
        finite = all(isinstance(loss, (int, float)) and math.isfinite(loss) for _, loss in rec["losses"])
        results.append(BenchResult(
            name=side, steps=rec["steps"], seconds=rec["seconds"], real_tokens=rec["real_tokens"],
            samples=rec["samples"], tokens_per_s=rec["tokens_per_s"], samples_per_s=rec["samples_per_s"],
            mfu=rec.get("mfu"), peak_memory_gib=rec["peak_memory_gib"],
            extra={"precision": rec["precision"], "loss_finite": finite, "timer": rec.get("timer", "wall"),
                   "optimizer": rec.get("optimizer"),
                   "last_loss": rec["losses"][-1][1] if rec["losses"] else None}))
        mfu = f", MFU {rec['mfu']:.1%}" if rec.get("mfu") is not None else ""
        print(f"{side}: {rec['tokens_per_s']:.0f} tokens/s{mfu}, {1000 * rec['seconds'] / rec['steps']:.1f} ms/step, "
              f"peak {rec['peak_memory_gib']} GiB, precision {rec['precision']}, loss finite: {finite}, "
              f"losses {[loss for _, loss in rec['losses']][-5:]}", flush=True)
        profile = out / side / "profile" / "summary.json"
        if profile.is_file():
            print(f"{side}: profile {json.loads(profile.read_text())} (tables in {profile.parent})", flush=True)
    if len(results) >= 2 and any(r.name == "users" for r in results):
        print(compare(results, baseline="users"))
    losses = {side: dict(json.loads((out / f"{side}.json").read_text())["losses"]) for side in ("ours", "ours-eager")
              if any(r.name == side for r in results)}
    if len(losses) == 2:
        print(compiled_vs_eager(losses["ours"], losses["ours-eager"], dropout_off(a.config_overrides)))
    (out / "bench_results.json").write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))
    return 0 if results else 1
