"""The former name of :mod:`nxm_kernels.models.encoder`, from when only BERT's layout was supported: kept so
code importing ``bert_linears`` or ``swap_linears`` from here keeps working. New code imports from
:mod:`nxm_kernels.models.encoder`."""

from .encoder import QKV, QKV_ATTR, LinearSite, encoder_linears, fuse_qkv, swap_linears

#: :func:`~nxm_kernels.models.encoder.encoder_linears`, under its former name.
bert_linears = encoder_linears

__all__ = ["QKV", "QKV_ATTR", "LinearSite", "bert_linears", "swap_linears", "fuse_qkv"]
