"""The training path: ADMM N:M sparsification with simultaneous STE QAT, distillation, export.

* :class:`QATLinear`, :func:`prepare_qat`, :func:`qat_layers` (:mod:`.qat`): layers that compute what
  the kernels compute, in floating point, with straight-through gradients;
* :class:`ADMM`, :class:`ADMMConfig` (:mod:`.admm`): the algorithm, usable from any training loop;
* :class:`NxMCompression`, :class:`CompressionSchedule` (:mod:`.callback`): the same inside a
  Hugging Face ``Trainer``, as one callback object;
* :class:`Distiller`, :class:`DistillConfig` (:mod:`.distill`): distillation from the dense teacher;
* :func:`export_model` (:mod:`.export`): QAT layers to ``NxMLinear``, exactly.
"""

from .admm import ADMM, ADMMConfig, project
from .callback import CompressionSchedule, NxMCompression
from .distill import DistillConfig, Distiller, distillation_loss, hidden_state_loss
from .export import export_model, export_spec
from .qat import QATLinear, prepare_qat, qat_layers

__all__ = ["QATLinear", "prepare_qat", "qat_layers", "ADMM", "ADMMConfig", "project", "NxMCompression",
           "CompressionSchedule", "Distiller", "DistillConfig", "distillation_loss", "hidden_state_loss",
           "export_model", "export_spec"]
