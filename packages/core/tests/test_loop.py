import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from trainstack.testing import failed_run_text

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from trainstack.loop import LoopConfig, fit  # noqa: E402
from trainstack.precision import resolve_precision  # noqa: E402

N = 9


def _losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pq")
    g = torch.Generator().manual_seed(5)
    toks = [torch.randint(1, _toy.VOCAB, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(200)]
    pq.write_table(pa.table({"id": list(range(200)), "tokens": toks}), d / "part-0.parquet", row_group_size=50)
    return d


@pytest.mark.parametrize("kind", ["tokens", "parquet"])
def test_resume_is_exact(tmp_path, kind, parquet_dir):
    # 34 (tokens) and 25 (parquet) batches per epoch: the stop is mid-epoch 0, the resumed run crosses into epoch 1
    full, seen_full = _toy.run(tmp_path / "full", 2 * N, 2 * N, kind, parquet_dir=parquet_dir)
    first, seen_a = _toy.run(tmp_path / "split", N, 2 * N, kind, parquet_dir=parquet_dir)
    assert first.steps == N and (tmp_path / "split/checkpoints" / f"step-{N}").exists()
    second, seen_b = _toy.run(tmp_path / "split", 2 * N, 2 * N, kind, resume=True, parquet_dir=parquet_dir)
    assert second.steps == 2 * N
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert sorted(a) == list(range(1, 2 * N + 1)) and a == b
    assert seen_a + seen_b == seen_full
    hist = {r["step"]: r["loss"] for r in second.history if "loss" in r}
    assert hist == {k: v for k, v in a.items() if k > N}


def test_log_fields_eval_best_and_cadence(tmp_path):
    torch.manual_seed(0)
    model = _toy.Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _toy.make_batches("tokens")
    calls = []

    def evaluate(m):
        assert not m.training
        calls.append(1)
        return {"loss": 1.0 / len(calls)}

    cfg = LoopConfig(epochs=2, grad_accum_steps=3, log_every_steps=2, eval_every_steps=4, save_every_steps=4,
                     keep_last=1, keep_best=1, best_metric="eval_loss", tensorboard=True)
    res = fit(model=model, optimizer=opt, scheduler=None, train_batches=batches, loss_fn=_toy.loss_fn, config=cfg,
              run_dir=tmp_path, precision=resolve_precision("fp32"), evaluate=evaluate, flops_per_token=100.0,
              progress=False)
    per_epoch = -(-len(batches) // 3)
    assert res.steps == 2 * per_epoch and not res.interrupted and res.epochs_completed == 2
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "mfu", "rss_gib",
                "gpu_peak_gib"):
        assert key in train[0], key
    assert train[0]["tokens_per_s"] > 0 and train[0]["grad_norm"] > 0
    assert [r["step"] for r in train][:3] == [2, 4, 6]
    evals = [r for r in rows if "eval_loss" in r]
    assert len(evals) == len(calls) and res.best_metric == min(r["eval_loss"] for r in evals)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert f"step-{res.steps}" in ckpts and len(ckpts) <= 2
    assert any((tmp_path / "tb").iterdir())


def test_a_learning_rate_held_as_a_tensor_is_logged_saved_and_resumed(tmp_path):
    # The fast path's replayed optimizer step keeps each group's lr as a device tensor (the scheduler
    # fills it in place); the run log and TensorBoard must still get a number, and a checkpoint must
    # save and resume it. On an H200 the first log line of `chat-pretrain train` raised "Object of
    # type Tensor is not JSON serializable".
    def run(max_steps, resume):
        torch.manual_seed(0)
        model = _toy.Toy()
        opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3), foreach=False)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
        cfg = LoopConfig(epochs=1, max_steps=max_steps, log_every_steps=1, save_every_steps=2, tensorboard=True)
        fit(model=model, optimizer=opt, scheduler=sched, train_batches=_toy.make_batches("tokens"),
            loss_fn=_toy.loss_fn, config=cfg, run_dir=tmp_path, precision=resolve_precision("fp32"), progress=False,
            resume=resume)
        assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # still the tensor the step reads

    run(2, resume=False)
    run(4, resume=True)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * 0.5 ** s for s in (1, 2, 3, 4)])


def test_grad_accum_matches_big_batch(tmp_path):
    # two micro-batches of 4 with accumulation == one batch of 8 (mean losses, equal sizes), float64
    torch.manual_seed(0)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)

    class B:
        def __init__(self, bs):
            self.bs, self.epoch, self.pos = bs, 0, 0

        def set_epoch(self, e):
            self.epoch = e

        def __iter__(self):
            for i in range(self.pos, 16 // self.bs):
                self.pos = i + 1
                yield x[i * self.bs:(i + 1) * self.bs], y[i * self.bs:(i + 1) * self.bs]
            self.pos = 0

        def __len__(self):
            return 16 // self.bs

        def state_dict(self):
            return {"pos": self.pos}

        def load_state_dict(self, s):
            self.pos = s["pos"]

    def lf(m, b):
        return torch.nn.functional.mse_loss(m(b[0]), b[1]), b[0].shape[0]

    weights = []
    for bs, accum in ((8, 1), (4, 2)):
        torch.manual_seed(1)
        m = torch.nn.Linear(5, 1).double()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        fit(model=m, optimizer=opt, scheduler=None, train_batches=B(bs), loss_fn=lf,
            config=LoopConfig(grad_accum_steps=accum, max_grad_norm=None, tensorboard=False), run_dir=tmp_path / str(bs),
            precision=resolve_precision("fp32"), progress=False)
        weights.append(m.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-12)


def test_sigterm_mid_epoch_then_resume(tmp_path):
    script = Path(__file__).parent / "_toy.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    total = 30
    ref = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ref"), str(total), str(total), "tokens", "0"],
                           env=env)
    victim = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(total), str(total), "tokens",
                               "0"], env={**env, "TOY_SLEEP": "0.05"})
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGTERM)
    assert victim.wait(timeout=60) == 130
    assert ref.wait(timeout=120) == 0
    stopped = max(_losses(tmp_path / "run"))
    assert 4 <= stopped < total
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(total), str(total), "tokens", "1"],
                             env=env, timeout=120)
    assert resumed.returncode == 0
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    # seen.json of the resumed run holds only the batches after the stop
    seen_ref = json.loads((tmp_path / "ref" / "seen.json").read_text())
    seen_resumed = json.loads((tmp_path / "run" / "seen.json").read_text())
    assert seen_ref[-len(seen_resumed):] == seen_resumed and len(seen_resumed) == 2 * (total - stopped)


def _torchrun(script, *args, timeout=180):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


SAVE_AND_RESUME_THEN_REPORT_DEEPSPEED = """
import sys
sys.path.insert(0, sys.argv[2])
import _toy
_toy.run(sys.argv[1], 2, 4)
_toy.run(sys.argv[1], 4, 4, resume=True)
print("deepspeed imported" if "deepspeed" in sys.modules else "deepspeed not imported")
"""


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="DeepSpeed is not installed: the test is that a run without it never imports it")
def test_a_run_without_deepspeed_saves_and_resumes_without_importing_it(tmp_path):
    """accelerate's unwrap_model imports DeepSpeed whenever it is installed; checkpoints do not use it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", SAVE_AND_RESUME_THEN_REPORT_DEEPSPEED, str(tmp_path / "run"),
                        str(Path(__file__).parent)], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, failed_run_text(r.stdout, r.stderr)
    assert (tmp_path / "run" / "checkpoints" / "step-4").is_dir()
    assert r.stdout.strip().splitlines()[-1] == "deepspeed not imported"


def test_one_rank_signalled_all_ranks_stop_together_and_resume_their_own_rows(tmp_path):
    script = Path(__file__).parent / "_toy_ranks.py"
    first = _torchrun(script, tmp_path, 0, 7)  # rank 1 alone gets SIGTERM at its 7th micro-step
    assert "exitcode  : 130" in first.stderr, first.stderr[-3000:]  # a rank returned "interrupted"
    runs = [json.loads((tmp_path / f"seen-{r}-0.json").read_text()) for r in (0, 1)]
    assert runs[0]["steps"] == runs[1]["steps"] == 4  # both stopped at the end of the signalled step
    (ckpt,) = sorted((tmp_path / "checkpoints").iterdir())
    extra = torch.load(ckpt / "extra.pt", weights_only=True)
    assert [s["consumed"] for s in extra["data_per_rank"]] == [32, 32]

    second = _torchrun(script, tmp_path, 1, 0)
    assert second.returncode == 0, failed_run_text(second.stdout or '', second.stderr)
    for rank in (0, 1):
        before = json.loads((tmp_path / f"seen-{rank}-0.json").read_text())["seen"]
        after = json.loads((tmp_path / f"seen-{rank}-1.json").read_text())["seen"]
        rows = [i for batch in before + after for i in batch]
        mine = list(range(rank, 96, 2))
        assert rows == mine + mine  # epoch 1 finished with exactly the unseen rows, then epoch 2


def test_a_checkpoint_refused_on_one_rank_is_refused_on_every_rank(tmp_path):
    # Rank 1 has its own copy of the data (another fingerprint), as a node with the data on its local
    # disk may: every rank must raise, or the others would wait in their first collective (across nodes
    # no launcher ends them). Here torchrun would end rank 0 anyway, so rank 0's own message is the proof.
    script = Path(__file__).parent / "_toy_ranks.py"
    first = _torchrun(script, tmp_path, 0, 0, "differs-on-rank-1")  # a fresh run saves rank 0's fingerprint
    assert first.returncode == 0, failed_run_text(first.stdout or '', first.stderr)
    resumed = _torchrun(script, tmp_path, 1, 0, "differs-on-rank-1")
    assert resumed.returncode != 0
    for rank in (0, 1):
        refused = (tmp_path / f"refused-{rank}.txt").read_text()
        assert refused.startswith("rank 1 of 2: ") and "data is 'copy on rank 1' now but 'shared'" in refused


def test_an_underestimated_len_does_not_end_an_epochs_bound_run(tmp_path):
    class Short(list):
        def set_epoch(self, epoch):
            pass

        def __len__(self):  # an estimate, like a stream's: half the truth
            return super().__len__() // 2

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    torch.manual_seed(0)
    batches = Short(_toy.make_batches("tokens"))
    n = list.__len__(batches)
    model = _toy.Toy()
    res = fit(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler=None,
              train_batches=batches, loss_fn=_toy.loss_fn, config=LoopConfig(epochs=2, tensorboard=False),
              run_dir=tmp_path, precision=resolve_precision("fp32"), progress=False)
    assert res.steps == 2 * n and res.epochs_completed == 2


def test_short_last_window_is_a_mean_and_keeps_the_save_cadence(tmp_path):
    torch.manual_seed(0)
    xs = [torch.randn(4, 3) for _ in range(5)]  # accumulation 3: windows [0, 1, 2] and [3, 4]
    model = torch.nn.Linear(3, 1)
    reference = torch.nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())

    def loss_fn(m, x):
        return m(x).pow(2).mean(), x.shape[0]

    cfg = LoopConfig(epochs=2, grad_accum_steps=3, max_grad_norm=None, save_every_steps=2, keep_last=10,
                     tensorboard=False)
    res = fit(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler=None,
              train_batches=_toy.ListBatches(xs), loss_fn=loss_fn, config=cfg, run_dir=tmp_path,
              precision=resolve_precision("fp32"), progress=False)

    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(2):
        for window in (xs[:3], xs[3:]):
            opt.zero_grad()
            torch.stack([loss_fn(reference, x)[0] for x in window]).mean().backward()
            opt.step()
    assert res.steps == 4
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-2", "step-4"]  # step 2 ends epoch 1 with the short window


def test_eval_at_save_scores_every_checkpoint(tmp_path):
    """save_every_steps=3 between evaluations every 4 steps: with eval_at_save each save evaluates
    first, so every checkpoint carries the metric best-checkpoint pruning ranks by."""
    torch.manual_seed(0)
    model = _toy.Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps_evaluated = []

    def evaluate(m):
        steps_evaluated.append(len(steps_evaluated))
        return {"loss": 10.0 - len(steps_evaluated)}

    cfg = LoopConfig(max_steps=9, log_every_steps=1, eval_every_steps=4, save_every_steps=3, eval_at_save=True,
                     keep_last=10, keep_best=1, best_metric="eval_loss", tensorboard=False)
    result = fit(model=model, optimizer=opt, scheduler=None, train_batches=_toy.make_batches("tokens"),
                 loss_fn=_toy.loss_fn, config=cfg, run_dir=tmp_path, precision=resolve_precision("fp32"),
                 evaluate=evaluate, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows if "eval_loss" in r}) == [3, 4, 6, 8, 9]
    for step in (3, 6, 9):
        state = json.loads((tmp_path / "checkpoints" / f"step-{step}" / "trainer_state.json").read_text())
        assert "eval_loss" in json.dumps(state), step
    assert result.steps == 9
