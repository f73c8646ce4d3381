"""Command-line options generated from the training dataclasses, so that a new config field needs no new flag.

Like transformers' ``HfArgumentParser``, :class:`DataclassArgs` makes one option per field: its type
and default from the field, its help text and choices from the field's ``metadata``. Unlike it, options
may be renamed and re-defaulted, and a selection of fields taken, which ``nxm compress`` has always
needed (``--lr`` for ``learning_rate``, ``--batch-size 32``, ten of ``TrainingArguments``' fields)::

    TRAINING_ARGS.add_to(parser, "training")
    TrainingArguments(output_dir="out", **TRAINING_ARGS.values(parser.parse_args()))
"""

from __future__ import annotations

import argparse
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
    """Options for the scalar fields of dataclass ``cls`` (``bool``, ``int``, ``float``, ``str``, or one of
    them or ``None``): ``--field-name``, or ``--<flags[field]>``; ``only`` keeps those fields, in that
    order; ``defaults`` replaces a field's default (and the option's type follows it); ``notes`` replaces
    the help text. A boolean is a switch (``--no-<name>`` turns off one defaulting to ``True``). The parsed
    value lands in ``args.<field>``."""

    cls: type
    only: tuple = ()
    skip: tuple = ()
    flags: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.cls):
            raise TypeError(f"cls must be a dataclass, got {self.cls!r}")
        unknown = {*self.only, *self.skip, *self.flags, *self.defaults, *self.notes} - {
            f.name for f in dataclasses.fields(self.cls)}
        if unknown:
            raise ValueError(f"{self.cls.__name__} has no fields {sorted(unknown)}")

    def fields(self) -> list[tuple[dataclasses.Field, type]]:
        """``(field, scalar type)`` of the fields that get an option, in option order."""
        hints, by_name = typing.get_type_hints(self.cls), {f.name: f for f in dataclasses.fields(self.cls) if f.init}
        kinds = {name: _scalar(hints[name]) for name in self.only or by_name if name not in self.skip}
        return [(by_name[name], kind) for name, kind in kinds.items() if kind is not None]

    def add_to(self, parser, title: str | None = None):
        """Add the options to ``parser`` (to a new argument group ``title`` when given); returns where they went."""
        group = parser.add_argument_group(title) if title else parser
        for f, kind in self.fields():
            flag = "--" + self.flags.get(f.name, f.name.replace("_", "-"))
            default = self.defaults.get(f.name, None if f.default is dataclasses.MISSING else f.default)
            kind = type(default) if f.name in self.defaults and isinstance(default, _SCALARS) else kind
            text = self.notes.get(f.name, f.metadata.get("help", f"{self.cls.__name__}.{f.name}"))
            if kind is bool:  # a switch; one that defaults to True also gets --no-<name> (type=bool reads "False" as True)
                group.add_argument(flag, dest=f.name, default=bool(default), help=text,
                                   action="store_true" if not default else argparse.BooleanOptionalAction)
                continue
            shown = "" if default is None or f.name in self.notes else f" (default {default})"
            extra = ({"choices": f.metadata["choices"]} if "choices" in f.metadata
                     else {"metavar": flag[2:].upper().replace("-", "_")})
            group.add_argument(flag, dest=f.name, type=kind, default=default, help=text + shown, **extra)
        return group

    def values(self, args) -> dict:
        """``{field: value}`` of the parsed ``args``, ready for ``cls(**values)``."""
        return {f.name: getattr(args, f.name) for f, _ in self.fields()}


def _scalar(hint) -> type | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in _SCALARS else None


#: ``--admm-steps``, ``--admm-epochs``, ``--admm-fraction`` (the nested ADMMConfig has its own options).
SCHEDULE_ARGS = DataclassArgs(CompressionSchedule, skip=("admm",))
#: ``--rho``, ``--rho-growth`` (1.25 on the command line), ``--rho-max``, ``--admm-interval`` (from the
#: learning rate unless given), ``--projection``.
ADMM_ARGS = DataclassArgs(
    ADMMConfig, flags={"interval": "admm-interval"}, defaults={"rho_growth": 1.25, "interval": None},
    notes={"interval": "optimizer steps between Z/U updates (default: 0.02 / lr, so that the weights can move "
                       "about as far as the pruned ones are large between updates)"})
#: The ``TrainingArguments`` a compression run takes from its command line, under short names.
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
