"""nxm-kernels: 2:4 sparsity + int8/int4 weights + int8 activations for BERT-class encoders.

The foundation (format, quantization, sparsity) and the op are importable without Triton or a GPU::

    import torch, nxm_kernels as nxm
    w = torch.randn(768, 768)
    packed = nxm.pack(w, bits=4, pattern="2:4", prune=True)
    y = nxm.sparse_int_linear(torch.randn(8, 768), packed)        # backend="auto"

Drop-in use on a Hugging Face BERT (swap, save small, load back without the dense weights)::

    report = nxm.swap_linears(model, {"*": "2:4-w8a8", "ffn2": "dense-w8a8"})
    nxm.save_compressed(model, "minilm-2to4")
    model = nxm.load_compressed("minilm-2to4", device="cuda", dtype=torch.float16)

Calibrated one-shot compression (SparseGPT 2:4 + GPTQ from a few hundred unlabeled inputs)::

    report = nxm.calibrate(model, "2:4-w8a8", batches, method="sparsegpt")
"""

from .backends import available_backends, resolve_backend
from .format import FORMAT_VERSION, PackedWeight, pack
from .io import load_compressed, save_compressed
from .fusion import FusedProjection
from .models.bert import fuse_qkv, swap_linears
from .models.swap import swap_named_linears
from .modules import NxMLinear, SwapReport, set_backend
from .ops import sparse_int_linear, sparse_int_mm
from .plan import Plan
from .quant import dequantize, fake_quant_per_token, fake_quant_weight, quantize_per_token, quantize_weight
from .sparsity import is_nm, nm_mask, prune_nm
from .spec import LayerSpec, parse_spec

# Last: the function ``calibrate`` takes the name over from its module (``nxm_kernels.calibrate``, which
# ``from nxm_kernels.calibrate import ...`` still reaches through sys.modules).
from .calibrate import calibrate  # noqa: E402

from ._version import __version__

__all__ = [
    "FORMAT_VERSION", "PackedWeight", "pack", "prune_nm", "nm_mask", "is_nm", "quantize_weight",
    "quantize_per_token", "dequantize", "fake_quant_weight", "fake_quant_per_token", "sparse_int_linear",
    "sparse_int_mm", "available_backends", "resolve_backend", "LayerSpec", "parse_spec", "__version__",
    "NxMLinear", "swap_linears", "swap_named_linears", "set_backend", "SwapReport", "Plan", "save_compressed",
    "load_compressed", "fuse_qkv", "FusedProjection", "calibrate",
]
