"""Multi-process data parallel: two CPU processes (gloo) under torchrun, an ordinary Trainer with
NxMCompression. Every rank must hold the same weights, Z, U and masks."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

WORKER = r'''
import sys, torch
sys.path.insert(0, sys.argv[2])
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback
import torch.distributed as dist
from nxm_kernels.train import ADMMConfig, CompressionSchedule, NxMCompression
from tiny_models import tiny_bert
from train_helpers import COUNT_BERT, CountTask, training_args

torch.set_num_threads(1)
out = sys.argv[1]


class Snapshot(TrainerCallback):
    def __init__(self, comp):
        self.comp, self.admm = comp, {}

    def on_step_end(self, args, state, control, **kw):
        if self.comp.phase == "admm":
            self.admm = {f"{n}.{k}": getattr(l, k).detach().clone() for n, l in self.comp.layers.items()
                         for k in ("admm_z", "admm_u")}


model = tiny_bert(**COUNT_BERT)  # a different random init on each rank: DDP broadcasts rank 0's weights
comp = NxMCompression("2:4-w8a8", schedule=CompressionSchedule(admm_steps=8, admm=ADMMConfig(rho=0.05, interval=2)))
snap = Snapshot(comp)
args = training_args(out, max_steps=12, per_device_train_batch_size=8, ddp_backend="gloo", seed=3)
data = CountTask(256, generator=torch.Generator().manual_seed(5))
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[comp, snap])
trainer.train()
rank = dist.get_rank() if dist.is_initialized() else -1
tensors = dict(snap.admm)
for n, l in comp.layers.items():
    tensors[f"{n}.weight"] = l.weight.detach().clone()
    tensors[f"{n}.mask"] = l.mask.clone()
tensors["world"] = torch.tensor(dist.get_world_size() if dist.is_initialized() else 1)
save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/rank{rank}.safetensors")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from safetensors.torch import load_file

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes (gloo), also on a machine with GPUs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path), str(HERE)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert int(r0["world"]) == 2 and set(r0) == set(r1)
    assert any(k.endswith("admm_z") for k in r0) and any(k.endswith("mask") for k in r0)
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    assert all(r0[k].numel() > 0 for k in r0 if k.endswith(".mask"))
