"""Test helpers for the drop-in tests: a fake-quantized twin of a swapped model, a random batch."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from nxm_kernels.models.bert import bert_linears
from nxm_kernels.plan import Plan
from nxm_kernels.quant import fake_quant_per_token, fake_quant_weight
from nxm_kernels.sparsity import is_nm, prune_nm


class FakeQuantLinear(nn.Module):
    """What an NxMLinear computes, written with plain float ops: per-token fake-quantized input times
    the (pruned) per-channel fake-quantized weight, plus bias."""

    def __init__(self, linear: nn.Linear, spec):
        super().__init__()
        w = linear.weight.detach().float()
        if spec.sparse and not is_nm(w, 2, 4):
            w = prune_nm(w, 2, 4)
        self.register_buffer("w", fake_quant_weight(w, spec.weight_bits, ste=False))
        self.register_buffer("b", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x):
        return F.linear(fake_quant_per_token(x, ste=False), self.w, self.b)


def fake_quant_twin(model: nn.Module, plan) -> nn.Module:
    """A copy of ``model`` whose encoder linears are FakeQuantLinear per ``plan`` (GELU left as a module)."""
    twin = copy.deepcopy(model)
    plan = Plan(plan) if not isinstance(plan, Plan) else plan
    for site in bert_linears(twin):
        spec = plan.spec_for(site.name)
        if not spec.is_fp:
            setattr(site.parent, site.attr, FakeQuantLinear(site.module, spec))
    return twin


def random_batch(model, batch: int = 3, length: int = 11):
    """Random token ids with one padded row, like a tokenized batch."""
    ids = torch.randint(1, model.config.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}
