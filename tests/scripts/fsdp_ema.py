"""Two CPU ranks (gloo) shard a tiny module with FSDP (use_orig_params, per-block units) and check the EMA
callback's sharded bookkeeping against a full-tensor reference EMA:

    python tests/scripts/fsdp_ema.py <result.json>

- the per-rank shard EMA, gathered, equals the EMA of the full parameters computed step by step;
- gathering leaves the training parameters untouched;
- scattering the gathered full EMA back gives exactly each rank's shards (what a resumed run restores).

Run by tests/test_reliability.py. (Lightning's FSDPStrategy refuses a CPU accelerator, and its full-state-dict
save needs CUDA, so the Lightning wiring itself is exercised only on GPU machines.)
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist


class Block(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lin = torch.nn.Linear(dim, dim)

    def forward(self, x):
        return torch.relu(self.lin(x)) + x


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = torch.nn.Linear(6, 6).requires_grad_(False)
        self.blocks = torch.nn.Sequential(Block(6), Block(6), torch.nn.Linear(6, 5))

    def trainable_parameters(self):
        return list(self.blocks.parameters())

    def forward(self, x):
        return self.blocks(self.frozen(x))


def run(rank: int, out: str, port: int) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from refedit.callbacks.ema import EMA, clean_name

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    root = FSDP(Tiny(), auto_wrap_policy=ModuleWrapPolicy({Block}), use_orig_params=True,
                device_id=torch.device("cpu"))
    inner = root.module
    opt = torch.optim.SGD([p for p in root.parameters() if p.requires_grad], lr=0.1)
    ema = EMA(decay=0.7)
    params = ema._params(inner)
    ema.shadow = {n: p.detach().clone() for n, p in params.items()}
    with FSDP.summon_full_params(root, writeback=False):
        reference = {clean_name(n): p.detach().clone() for n, p in root.named_parameters()
                     if clean_name(n) in params}
    g = torch.Generator().manual_seed(rank)
    for _ in range(5):
        x = torch.randn(4, 6, generator=g)
        loss = ((root(x) - x[:, :5]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_([ema.shadow[n] for n in params], [p.detach() for p in params.values()], 0.3)
            with FSDP.summon_full_params(root, writeback=False):
                for n, p in root.named_parameters():
                    if clean_name(n) in reference:
                        reference[clean_name(n)].lerp_(p.detach(), 0.3)
    before = {n: p.detach().clone() for n, p in params.items()}
    full = ema._gather_full(root, params)
    after = {n: p.detach().clone() for n, p in params.items()}
    shards = ema._scatter_full(root, params, full)
    result = {
        "names_match": sorted(full) == sorted(reference) == sorted(params),
        "full_shapes": all(full[n].shape == reference[n].shape for n in reference),
        "gather_max_err": max(float((full[n] - reference[n]).abs().max()) for n in reference),
        "params_untouched": all(torch.equal(before[n], after[n]) for n in params),
        "scatter_exact": all(torch.equal(shards[n], ema.shadow[n]) for n in params),
        "some_sharded": any(params[n].numel() < reference[n].numel() for n in params),
    }
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    # No rank tears its process group down while the other may still use it: under load the faster rank used to
    # exit early and gloo aborted the slower one (seen once in make test on a busy 2-core machine).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    mp.spawn(run, args=(sys.argv[1], free_port), nprocs=2)
