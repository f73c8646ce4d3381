"""Command-line options generated from the training dataclasses, so a new config field needs no new flag.

:class:`DataclassArgs` adds one option per field of a dataclass (the name, type and default come from
the field; the help text and choices from its ``metadata``, the convention of transformers'
``HfArgumentParser``) and reads the values back into the dataclass. It differs from
``HfArgumentParser`` where the ``nxm compress`` command line has always differed from the field
names and defaults: ``--lr`` for ``learning_rate``, ``--batch-size 32``, ``--rho-growth 1.25``, and
only the few ``TrainingArguments`` fields a compression run needs rather than all of them.

:data:`SCHEDULE_ARGS`, :data:`ADMM_ARGS`, :data:`TRAINING_ARGS` and :data:`DISTILL_ARGS` are the
option sets ``nxm compress`` and ``python/compress_glue.py`` share::

    p = argparse.ArgumentParser()
    TRAINING_ARGS.add_to(p, "training")
    args = p.parse_args()
    TrainingArguments(output_dir="out", **TRAINING_ARGS.values(args))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .admm import ADMMConfig
from .callback import CompressionSchedule
from .distill import DistillConfig

__all__ = ["DataclassArgs", "SCHEDULE_ARGS", "ADMM_ARGS", "TRAINING_ARGS", "DISTILL_ARGS"]

_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class DataclassArgs:
    """The options of one dataclass ``cls``: ``--field-name`` per scalar field (``bool``, ``int``,
    ``float``, ``str``, or one of them or ``None``), except those in ``skip``.

    ``only`` keeps just the fields named (in that order); ``flags`` renames options (``{field: "lr"}``
    gives ``--lr``); ``defaults`` replaces field defaults (the option's type then follows the new
    default, e.g. ``int`` for a ``float`` field defaulting to ``0``); ``notes`` replaces the help text.
    A ``False`` boolean becomes a ``store_true`` switch.
    """

    cls: type
    only: tuple = ()
    skip: tuple = ()
    flags: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.cls):
            raise TypeError(f"cls must be a dataclass, got {self.cls!r}")
        names = {f.name for f in dataclasses.fields(self.cls)}
        for what in ("only", "skip", "flags", "defaults", "notes"):
            unknown = sorted(set(getattr(self, what)) - names)
            if unknown:
                raise ValueError(f"{what} names fields {self.cls.__name__} does not have: {unknown}")

    def fields(self) -> list[tuple[dataclasses.Field, type]]:
        """``(field, scalar type)`` of every field that gets an option, in option order."""
        hints = typing.get_type_hints(self.cls)
        by_name = {f.name: f for f in dataclasses.fields(self.cls) if f.init}
        out = []
        for name in self.only or list(by_name):
            kind = _scalar(hints[name])
            if name not in self.skip and kind is not None:
                out.append((by_name[name], kind))
        return out

    def flag(self, name: str) -> str:
        return "--" + self.flags.get(name, name.replace("_", "-"))

    def add_to(self, parser, title: str | None = None):
        """Add the options to ``parser`` (in an argument group named ``title`` when given); returns the group."""
        group = parser.add_argument_group(title) if title else parser
        for f, kind in self.fields():
            flag = self.flag(f.name)
            if f.name in self.defaults:
                default = self.defaults[f.name]
                kind = type(default) if isinstance(default, _SCALARS) else kind
            elif f.default is not dataclasses.MISSING:
                default = f.default
            else:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            meta = f.metadata
            help_text = self.notes.get(f.name, meta.get("help") or f"{self.cls.__name__}.{f.name}")
            kwargs = ({"choices": meta["choices"]} if "choices" in meta
                      else {"metavar": flag[2:].upper().replace("-", "_")})
            if kind is bool and default is False:
                group.add_argument(flag, dest=f.name, action="store_true", help=help_text)
                continue
            shown = "" if default is None or f.name in self.notes else f" (default {default})"
            group.add_argument(flag, dest=f.name, type=kind, default=default, help=help_text + shown, **kwargs)
        return group

    def values(self, args) -> dict:
        """``{field: value}`` of the parsed ``args``, ready for ``cls(**values)``."""
        return {f.name: getattr(args, f.name) for f, _ in self.fields()}


def _scalar(hint) -> type | None:
    """The scalar type of an annotation (``int``, ``int | None``, ``Optional[int]``), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in _SCALARS else None


#: When ADMM ends: ``--admm-steps``, ``--admm-epochs``, ``--admm-fraction`` (the ADMMConfig is nested).
SCHEDULE_ARGS = DataclassArgs(CompressionSchedule, skip=("admm",))
#: ``--rho``, ``--rho-growth``, ``--rho-max``, ``--admm-interval``, ``--projection``. The command line's
#: growth (1.25) and interval (from the learning rate) have always differed from the class defaults.
ADMM_ARGS = DataclassArgs(
    ADMMConfig, flags={"interval": "admm-interval"}, defaults={"rho_growth": 1.25, "interval": None},
    notes={"interval": "optimizer steps between Z/U updates (default: 0.02 / lr, so that the weights can move "
                       "about as far as the pruned ones are large between updates)"})
#: The ``TrainingArguments`` a compression run sets from its command line, under their short names.
TRAINING_ARGS = DataclassArgs(
    TrainingArguments,
    only=("num_train_epochs", "max_steps", "learning_rate", "weight_decay", "warmup_steps",
          "per_device_train_batch_size", "per_device_eval_batch_size", "seed", "save_steps", "use_cpu"),
    flags={"num_train_epochs": "epochs", "learning_rate": "lr", "per_device_train_batch_size": "batch-size",
           "per_device_eval_batch_size": "eval-batch-size", "use_cpu": "cpu"},
    defaults={"per_device_train_batch_size": 32, "per_device_eval_batch_size": 64, "warmup_steps": 0,
              "save_steps": 0},
    notes={"save_steps": "save a Trainer checkpoint every N steps (default 0: never)",
           "use_cpu": "train on the CPU even if a GPU is present"})
#: ``--alpha``, ``--temperature``, ``--hidden-weight``, ``--hidden-loss``.
DISTILL_ARGS = DataclassArgs(DistillConfig)
