"""TrainStep under several processes (the path DDP runs take with speed.cuda_graphs=true): the bare
module steps, and all_reduce_gradients averages the gradients once per optimizer step. Two gloo
processes on CPU train exactly as DDP does from the same weights and per-rank batches (graphs need a
GPU; what they replay is this same step)."""

import torch

WORKER = r'''
import sys, torch, torch.distributed as dist
from trainstack.speed import SpeedConfig, TrainStep, resolve_speed
from trainstack.speed.step import all_reduce_gradients

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
loss_fn = lambda model, batch: torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])
g = torch.Generator().manual_seed(100 + rank)
batches = [{"x": torch.randn(4, 8, generator=g), "y": torch.randint(0, 3, (4,), generator=g)} for _ in range(6)]

ours = make()
opt = torch.optim.AdamW(ours.parameters(), lr=1e-2)
step = TrainStep(ours, loss_fn, opt, resolve_speed(SpeedConfig(compile=False), "cpu"), grad_accum_steps=2,
                 max_grad_norm=1.0, grad_sync=lambda: all_reduce_gradients(ours, bucket_bytes=256))
for i, batch in enumerate(batches):
    step.micro(batch)
    if i % 2 == 1:
        step.optimizer_step()

ref = make()
ddp = torch.nn.parallel.DistributedDataParallel(ref)
ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
for i, batch in enumerate(batches):
    sync = i % 2 == 1
    ctx = ddp.no_sync() if not sync else torch.enable_grad()
    with ctx:
        (loss_fn(ddp, batch) / 2).backward()
    if sync:
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad()
diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), ref.parameters()))
moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), make().parameters()))
from trainstack.testing import append_rank_record
append_rank_record(sys.argv[1], "ddp", diff=diff, moved=moved)  # one file per rank: no interleaved output
dist.destroy_process_group()
'''


def test_train_step_with_all_reduced_gradients_trains_as_ddp(tmp_path):
    from trainstack.testing import read_rank_records, run_local_nodes

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    logs = run_local_nodes([str(script), str(tmp_path)], tmp_path, nodes=1, procs_per_node=2, timeout=150,
                           env={"OMP_NUM_THREADS": "1"})
    records = read_rank_records(tmp_path, "ddp", world_size=2)
    assert all(len(r) == 1 for r in records), logs[0].read_text()[-2000:]
    for (record,) in records:
        assert record["moved"] > 1e-3  # the weights did train
        assert record["diff"] < 1e-6, record  # and exactly as DDP: averaged gradients, same clipping


def test_fast_step_under_ddp_needs_graphs_and_uses_the_bare_module(monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from trainstack.loop import LoopConfig, _fast_step
    from trainstack.speed import Speed

    monkeypatch.setattr("trainstack.speed.step.CudaGraphs",  # no graph pool without a GPU
                        lambda: SimpleNamespace(needs_capturable_optimizer=False))
    model = torch.nn.Linear(2, 2)
    wrapped = SimpleNamespace(module=model)  # stands for the DDP wrapper
    accelerator = SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_GPU,
                                  unwrap_model=lambda m: m.module, autocast=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = LoopConfig(max_steps=1)

    def speed(graphs: bool) -> Speed:
        return Speed(compile=False, cuda_graphs=graphs, compile_mode="default", compile_backend="eager",
                     warmup_runs=1, length_buckets="off", reason="", compile_dynamic=False)

    # compiled only: DDP's own step (its hooks overlap the all-reduce with the backward)
    assert _fast_step(speed(False), accelerator, wrapped, None, opt, None, None, cfg) is None
    step = _fast_step(speed(True), accelerator, wrapped, None, opt, None, None, cfg)
    assert step.model is model and step.grad_sync is not None
    deepspeed = SimpleNamespace(**{**vars(accelerator), "distributed_type": DistributedType.DEEPSPEED})
    assert _fast_step(speed(True), deepspeed, wrapped, None, opt, None, None, cfg) is None
