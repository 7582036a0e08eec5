"""Data parallelism on CPU: 2 gloo processes (torchrun on 127.0.0.1) match 1 process with the same global batch."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nvfp4.train import read_metrics, train

SRC = str(Path(__file__).resolve().parents[2] / "src")
TIMEOUT_S = 180
RUN = dict(max_steps=4, eval_interval=2, eval_batches=3, checkpoint_interval=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(config, nproc: int, entry: list[str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun -m nvfp4.cli train` (or ``entry``) with every field of ``config`` passed as its flag."""
    args = []
    for name, value in config.to_dict().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        elif value is not None:
            args += [flag, str(value)]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's sockets on the loopback interface
    launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1"]
    command = [
        sys.executable,
        *launcher,
        f"--master-port={free_port()}",
        *(entry or ["-m", "nvfp4.cli"]),
        "train",
        *args,
    ]
    # Own session: on a timeout the launcher *and* its workers are killed, never left behind.
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s; output:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def single_process(byte_data, tmp_path_factory):
    """The reference: one process, batch 4."""
    from nvfp4.train import TrainConfig

    from .conftest import TINY

    out = tmp_path_factory.mktemp("single")
    config = TrainConfig(
        **{**TINY, "batch_size": 4}, **RUN, recipe="bf16", data=[byte_data], log_interval=1, out=str(out), quiet=True
    )
    train(config)
    return read_metrics(out)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(make_config, single_process, mode):
    # 2 ranks x batch 2 = the reference's global batch of 4
    config = make_config(recipe="bf16", batch_size=2, distributed=mode, quiet=False, **RUN)
    done = torchrun(config, nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("final train loss") == 1  # the summary comes from rank 0 only
    two = read_metrics(config.out)
    assert [r["step"] for r in two] == [r["step"] for r in single_process]  # rank 0 alone logged, once
    for a, b in zip(two, single_process, strict=True):
        for key in ("train_loss", "val_loss", "grad_norm"):
            assert (key in a) == (key in b)
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-3), (a["step"], key)
        assert a.get("tokens") == b.get("tokens")
    assert sorted(p.name for p in (Path(config.out) / "checkpoints").glob("step_*.pt")) == [
        "step_00000002.pt",
        "step_00000004.pt",
    ]


# `nvfp4 train` in which every quantized-weight cache hit is checked against a fresh quantization of the weight
# as it is now: a stale cached operand (FSDP2 re-gathers a weight into storage with the same address and version
# counter) raises at once, on whatever machine, instead of surfacing as a tiny loss difference a few steps later.
CHECKED_CACHE_ENTRY = """
import os
import sys
import torch
from nvfp4.cli import main
from nvfp4.linear import Linear

cached = Linear._weight_operand
hits = 0


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


def checked(self, operand):
    global hits
    before = self._weight_cache.get(operand)
    result = cached(self, operand)
    if before is not None and result is before[1]:  # a cache hit: it must equal a fresh quantization
        hits += 1
        kept = dict(self._weight_cache)
        self._weight_cache.clear()
        fresh = cached(self, operand)
        self._weight_cache.clear()
        self._weight_cache.update(kept)
        if not same(result.data, fresh.data):
            print(f"stale quantized weight: {operand} differs from its fresh quantization", file=sys.stderr, flush=True)
            os._exit(3)  # at once: torchrun then stops the other rank (an exception could wait in a collective)
    return result


Linear._weight_operand = checked
code = main(sys.argv[1:])
print(f"\\nchecked cache hits: {hits}", flush=True)
sys.exit(code)
"""


def test_fsdp_quantized_training_matches_ddp(make_config, tmp_path):
    """FSDP2 re-gathers each weight for every use; the quantized weight must still follow every update.

    Exact: under FSDP every cache hit equals a fresh quantization of the gathered weight (the entry point above
    raises otherwise). Close: FSDP's losses follow DDP's. Not bit for bit: FSDP reduces the gradient norm shard by
    shard, and CPU GEMMs may round differently on differently aligned storage, so a last-bit difference can flip
    one FP4 rounding after a few steps (seen on a CI machine: 4e-5 relative at step 4). A stale weight operand is
    caught by the exact check, whatever its effect on the loss.
    """
    entry = tmp_path / "checked_cache_train.py"
    entry.write_text(CHECKED_CACHE_ENTRY)
    losses = {}
    for mode in ("ddp", "fsdp"):
        config = make_config(
            recipe="nvfp4",
            batch_size=2,
            distributed=mode,
            max_steps=4,
            eval_interval=0,
            eval_batches=3,
            checkpoint_interval=0,
            out=str(tmp_path / mode),
        )
        done = torchrun(config, nproc=2, entry=[str(entry)])
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        hits = [int(n) for n in re.findall(r"checked cache hits: (\d+)", done.stdout)]
        assert len(hits) == 2 and min(hits) > 0, done.stdout[-2000:]  # both ranks checked some hits
        losses[mode] = [r["train_loss"] for r in read_metrics(config.out) if "train_loss" in r]
    assert len(losses["ddp"]) == 4
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-3)


AMAX_CHECK = """
import torch, torch.distributed as dist
from nvfp4.train.distributed import all_reduce_max
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
assert torch.equal(all_reduce_max(torch.tensor(3.5)), torch.tensor(3.5))
assert torch.isnan(all_reduce_max(torch.tensor(float("nan"))))
assert torch.isnan(all_reduce_max(torch.tensor([1.0, float("inf")])))[1]
print("ok")
"""


def test_amax_reducer_propagates_non_finite():
    """all_reduce_max is NaN-aware: a MAX all-reduce alone could drop a NaN. (A child process: a process
    group never lives in the test runner.)"""
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", AMAX_CHECK.format(port=free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
