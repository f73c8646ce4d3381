"""Fused projections: several linears that read the same input, computed as one ``NxMLinear``.

Query, key and value of a self-attention block are three linears of one input. Stacked along the
output rows they are one linear with ``N = N_q + N_k + N_v``: one activation quantization and one
GEMM instead of three. The packed format is laid out per output row (:func:`~nxm_kernels.format.cat_rows`),
so the fused layer holds exactly the codes, 2:4 metadata and scales of the three, and each slice
of its output is exactly what the separate layer computed.

**How it plugs into a model that calls the projections one by one.** The fused ``NxMLinear`` is
registered once, beside the originals (for BERT: ``attention.self.qkv``, see
:func:`nxm_kernels.models.encoder.fuse_qkv`); each original attribute (``query``, ``key``, ``value``)
becomes a parameterless :class:`FusedProjection` that returns its row range of the fused output.
The attention module's own forward (Hugging Face's, SDPA included) runs unchanged and still calls
``self.query(h)``, ``self.key(h)``, ``self.value(h)``: the first of those calls computes the fused
projection and leaves it in the group's one-entry memo, the others take their slice of it when they
are called with *the same tensor object*, and the last one served clears the memo.

Why a memo keyed by the input tensor's identity, and not another design:

* **Hugging Face's code path stays.** Replacing the attention forward would fork Hugging Face's code
  (attention-implementation selection, masks, caches, head reshapes) for every model family.
* **torch.compile(fullgraph=True).** The memo is an attribute of a plain Python object written and
  read inside the traced forward; Dynamo tracks it as a side effect, decides ``memo[0] is x`` while
  tracing, and since the memo ends the forward cleared, the graph gains no extra output. The compiled
  graph holds one GEMM op of ours per fused group (the tests count them).
* **CUDA graphs.** The memo lives for one forward, in Python only; a replay runs no Python and the
  captured kernels read the captured fused output.
* **Re-entrancy and threads.** A projection takes its slice from the memo only for the very tensor
  (in eager mode also the same in-place version) the fused output was computed from, and only once;
  anything else (another thread's forward in between, another call order, one projection called
  alone, an input modified in place) computes the fused projection again. Results are always those
  of the separate layers; only the saving can be lost. The memo is one tuple replaced as a whole, so
  a thread never sees half of another's entry.

Limits: while compiling, and for inference-mode tensors (which have no version counter), identity
alone decides, so an input modified *in place* between the ``query`` and ``key`` calls of one forward
would not be noticed there (no Hugging Face model does that). A caller that calls only some of the
projections leaves the memo holding one activation until the group's next call.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .format import cat_rows
from .modules import NxMLinear

__all__ = ["FusedProjection", "fusable_reason", "fuse_linears", "install_fused", "fused_groups"]


class _FusedGroup:
    """What the projections of one fused layer share: the fused ``NxMLinear``, its registered name,
    each projection's row range and the memo.

    A plain object, not an ``nn.Module``: the fused layer is registered once, at its own name, so it
    is moved, cast and saved once and the projections hold no state-dict entries.
    """

    def __init__(self, fused: NxMLinear, name: str, bounds: tuple[tuple[int, int], ...]):
        self.fused = fused
        self.name = name
        self.bounds = bounds
        # (input, its version or None, fused output, bitmask of the projections not yet served)
        self.memo = None

    def __getstate__(self):
        # deepcopy / pickle: a memo holds activations of a forward in flight, never model state
        state = dict(self.__dict__)
        state["memo"] = None
        return state


def _version(x: torch.Tensor):
    """The in-place version counter where there is one; ``None`` while tracing (data-dependent for
    Dynamo) and for inference tensors (they have none)."""
    if torch.compiler.is_compiling() or x.is_inference():
        return None
    return x._version


def _of_fused(attr: str) -> property:
    return property(lambda self: getattr(self.fused, attr), doc=f"The fused layer's ``{attr}``.")


class FusedProjection(nn.Module):
    """Rows ``start:stop`` of a fused ``NxMLinear`` that computes several projections of one input.

    Stands where one of the original linears stood and behaves like it (same input, same output,
    ``in_features``/``out_features``/``bias``/``spec``); holds no parameters or buffers itself. Built
    by :func:`install_fused`; see the module docstring for how the projections share one computation.
    """

    def __init__(self, group: _FusedGroup, index: int):
        super().__init__()
        self._group = group  # a plain object: not registered as a submodule
        self.index = index

    # ------------------------------------------------------------------ what it stands for
    @property
    def fused(self) -> NxMLinear:
        """The fused layer computing this projection (registered elsewhere in the model)."""
        return self._group.fused

    @property
    def fused_name(self) -> str:
        """The fused layer's qualified module name."""
        return self._group.name

    @property
    def rows(self) -> tuple[int, int]:
        """``(start, stop)``: this projection's output rows in the fused layer."""
        return self._group.bounds[self.index]

    in_features = _of_fused("in_features")
    spec = _of_fused("spec")
    activation = _of_fused("activation")
    resolved_backend = _of_fused("resolved_backend")

    @property
    def out_features(self) -> int:
        start, stop = self.rows
        return stop - start

    @property
    def bias(self) -> torch.Tensor | None:
        """This projection's rows of the fused bias (a view), or ``None``."""
        bias = self.fused.bias
        start, stop = self.rows
        return None if bias is None else bias[start:stop]

    @property
    def packed(self):
        """This projection's rows of the fused packed weight (views, no copy)."""
        return self.fused.packed.rows(*self.rows)

    # NxMLinear's, over this projection's rows (``packed`` and ``bias`` above): its share of the fused layer's
    # bytes (the format is per row, so the shares add up exactly) and its dense weight.
    nbytes = NxMLinear.nbytes
    dequantized_weight = NxMLinear.dequantized_weight

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self._group
        bit = 1 << self.index
        memo = group.memo
        version = _version(x)
        if memo is not None and memo[0] is x and memo[1] == version and memo[3] & bit:
            y, pending = memo[2], memo[3] & ~bit
        else:  # first of the group for this input, or anything unusual: compute (always correct)
            y, pending = group.fused(x), ((1 << len(group.bounds)) - 1) & ~bit
        group.memo = (x, version, y, pending) if pending else None
        start, stop = group.bounds[self.index]
        # A view: the last dimension stays contiguous, so the callers' .view() into heads works.
        return y[..., start:stop]

    def extra_repr(self) -> str:
        start, stop = self.rows
        return f"rows {start}:{stop} of {self.fused_name} (in_features={self.in_features}, " \
               f"out_features={self.out_features}, spec={self.spec})"


# ---------------------------------------------------------------------------------- building
def _split(name: str, what: str) -> tuple[str, str]:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what} must be a non-empty module name (str), got {name!r}")
    parent, _, attr = name.rpartition(".")
    return parent, attr


def _member(model: nn.Module, member) -> tuple[nn.Module, str, nn.Module]:
    """``(parent module, attribute, module)`` of the module at the qualified name ``member``."""
    parent, attr = _split(member, "member name")
    try:
        holder = model.get_submodule(parent) if parent else model
        return holder, attr, getattr(holder, attr)
    except AttributeError:
        raise ValueError(f"member {member!r}: the model has no such module") from None


def install_fused(model: nn.Module, name: str, fused: NxMLinear, members) -> list[FusedProjection]:
    """Register ``fused`` at ``name`` inside ``model`` and put a :class:`FusedProjection` where each member was.

    ``members``: ``[(qualified module name, rows), ...]`` in row order; the rows add up to
    ``fused.out_features``. Each member module must exist (it is replaced) and, where it declares
    ``in_features``/``out_features``, match; nothing may be registered at ``name`` yet. Everything
    is checked before the model is changed. Returns the projections, in ``members`` order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(fused, NxMLinear):
        raise TypeError(f"fused must be an NxMLinear, got {type(fused).__name__}")
    parent_name, attr = _split(name, "name")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise ValueError(f"name {name!r}: the model has no module {parent_name!r} to hold the fused layer") from None
    if hasattr(parent, attr):
        raise ValueError(f"name {name!r}: {type(parent).__name__} already has an attribute {attr!r}")
    if not isinstance(members, (list, tuple)) or len(members) < 2:
        raise ValueError(f"members must list at least two (module name, rows) pairs, got {members!r}")
    places, bounds, start = [], [], 0
    for item in members:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise TypeError(f"members entries must be (module name, rows) pairs, got {item!r}")
        member, rows = item
        holder, member_attr, old = _member(model, member)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"member {member!r}: rows must be a positive int, got {rows!r}")
        if not isinstance(old, nn.Module):
            raise ValueError(f"member {member!r} is not a module ({type(old).__name__})")
        for what, want in (("in_features", fused.in_features), ("out_features", rows)):
            have = getattr(old, what, None)
            if have is not None and have != want:
                raise ValueError(f"member {member!r} has {what}={have}, the fused layer needs {want}")
        places.append((holder, member_attr))
        bounds.append((start, start + rows))
        start += rows
    if len({(id(h), a) for h, a in places}) != len(places):
        raise ValueError(f"members must name distinct modules, got {[m for m, _ in members]}")
    if start != fused.out_features:
        raise ValueError(f"members' rows add up to {start}, but the fused layer has out_features={fused.out_features}")
    group = _FusedGroup(fused, name, tuple(bounds))
    setattr(parent, attr, fused)
    projections = []
    for index, (holder, member_attr) in enumerate(places):
        projection = FusedProjection(group, index)
        setattr(holder, member_attr, projection)
        projections.append(projection)
    return projections


def fusable_reason(layers) -> str | None:
    """``None`` when the ``NxMLinear`` layers (which must read the same input) can be fused into one;
    otherwise why not (specs, input widths, activations, biases, devices or backends differ)."""
    if not isinstance(layers, (list, tuple)) or len(layers) < 2:
        raise ValueError(f"layers must list at least two layers, got {layers!r}")
    for layer in layers:
        if not isinstance(layer, NxMLinear):
            return f"{type(layer).__name__} is not an NxMLinear"
    first = layers[0]
    checks = (
        ("specs", lambda m: str(m.spec)),
        ("in_features", lambda m: m.in_features),
        ("activations", lambda m: m.activation),
        ("bias presence", lambda m: m.bias is not None),
        ("bias dtypes", lambda m: None if m.bias is None else m.bias.dtype),
        ("devices", lambda m: m.values.device),
        ("backends", lambda m: m.backend),
    )
    for what, key in checks:
        values = [key(m) for m in layers]
        if any(v != key(first) for v in values):
            return f"different {what}: {', '.join(map(str, values))}"
    return None


def fuse_linears(model: nn.Module, name: str, members) -> NxMLinear:
    """Fuse the ``NxMLinear`` layers named ``members`` (qualified names, all fed the same input) into
    one layer registered at ``name``; each member becomes a :class:`FusedProjection` of it.

    The fused packed weight is the row concatenation of the members' (:func:`~nxm_kernels.format.cat_rows`),
    its bias the concatenation of theirs: the same codes and scales, so the same outputs. Raises
    ``ValueError`` when the layers cannot be fused (:func:`fusable_reason`). Returns the fused layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(members, (list, tuple)) or len(members) < 2:
        raise ValueError(f"members must list at least two module names, got {members!r}")
    layers = [_member(model, member)[2] for member in members]
    why = fusable_reason(layers)
    if why is not None:
        raise ValueError(f"cannot fuse {list(members)}: {why}")
    first = layers[0]
    packed = cat_rows([layer.packed for layer in layers])
    bias = None if first.bias is None else torch.cat([layer.bias.detach() for layer in layers])
    fused = NxMLinear.from_packed(packed, bias, backend=first.backend, activation=first.activation)
    install_fused(model, name, fused, [(m, layer.out_features) for m, layer in zip(members, layers)])
    return fused


def fused_groups(model: nn.Module) -> dict[str, list[str]]:
    """``{fused layer name: [projection module names in row order]}`` for every fused layer in ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found: dict[int, tuple[_FusedGroup, dict[int, str]]] = {}
    names_of = {}
    for qualified, module in model.named_modules():
        names_of[id(module)] = qualified
        if isinstance(module, FusedProjection):
            group = module._group
            found.setdefault(id(group), (group, {}))[1][module.index] = qualified
    # The fused layer's current name (a model nested in another one later has longer names).
    return {names_of.get(id(group.fused), group.name): [names[i] for i in sorted(names)]
            for group, names in found.values()}
