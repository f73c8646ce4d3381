"""Test helpers for the drop-in tests: a fake-quantized twin of a swapped model, a random batch."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from nxm_kernels.models.encoder import encoder_linears
from nxm_kernels.models.swap import replace_sites
from nxm_kernels.quant import fake_quant_linear, fake_quant_weight
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
        self.act_bits = spec.act_bits

    def forward(self, x):
        return fake_quant_linear(x, self.w, self.b, weight_bits=None, act_bits=self.act_bits, ste=False)


def fake_quant_twin(model: nn.Module, plan) -> nn.Module:
    """A copy of ``model`` whose encoder linears are FakeQuantLinear per ``plan`` (GELU left as a module)."""
    twin = copy.deepcopy(model)
    replace_sites(encoder_linears(twin), plan, lambda site, spec: FakeQuantLinear(site.module, spec), strict=False)
    return twin


def random_batch(model, batch: int = 3, length: int = 11):
    """Random token ids with one padded row, like a tokenized batch."""
    ids = torch.randint(1, model.config.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}
