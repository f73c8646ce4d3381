"""Model knowledge (Hugging Face encoders, :mod:`.families`). Only this package and ``train`` import transformers.

Importing this package (``import nxm_kernels`` does) wires up the Hugging Face integration of
:mod:`.hf_quantizer` without importing transformers itself, which costs seconds that kernel-only
users should not pay:

* transformers' quantizer registry learns the ``"nxm"`` method as soon as it is imported (now, if it
  already is), so ``AutoModel.from_pretrained`` on a folder written by ``save_pretrained`` loads the
  ``NxMLinear`` layers back;
* every swap of a transformers model gives it the quantizer, so ``save_pretrained`` writes them.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys

from ..modules import SWAP_HOOKS

logger = logging.getLogger(__name__)

#: The module whose import means transformers can load quantized models.
_REGISTRY = "transformers.quantizers.auto"


def _register() -> None:
    being_imported = sys.modules.get(f"{__name__}.hf_quantizer")
    if being_imported is not None and not hasattr(being_imported, "register"):
        return  # hf_quantizer's own import pulled in the registry; it registers when it finishes
    try:
        from . import hf_quantizer  # registers on import

        if not hf_quantizer.supported():
            logger.debug("transformers %s is older than nxm's quantizer supports; save_pretrained of swapped "
                         "models will refuse", sys.modules["transformers"].__version__)
    except Exception as exc:  # noqa: BLE001 - a failed plug-in must not break importing transformers
        logger.warning("could not register nxm_kernels with transformers' quantizers: %s: %s",
                       type(exc).__name__, exc)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when transformers' quantizer registry is about to be imported, it lets the
    normal finders find it and registers nxm's quantizer right after the module has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _REGISTRY:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from coming back here
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def _attach(model) -> None:
    # A transformers model can exist only once transformers' modeling code is imported.
    if "transformers.modeling_utils" in sys.modules:
        from .hf_quantizer import attach

        attach(model)


if _REGISTRY in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
if _attach not in SWAP_HOOKS:
    SWAP_HOOKS.append(_attach)
