"""Which layers bitsandbytes converts: one rule for the memory model and the trial worker.

Transformers' bitsandbytes integration replaces a layer when two things hold:

- its **class**: only plain ``nn.Linear`` on Transformers 5 (``type(module) is nn.Linear``; any
  subclass of it on 4.x) and GPT-2's ``Conv1D``. Subclasses such as Falcon's ``FalconLinear``
  are left in the load dtype on Transformers 5 (seen on 5.17 and 5.24), while
  ``model.is_quantized`` says True;
- its **name**: not one of ``modules_to_not_convert`` (the tied weights, the output head, the
  last module, and ``_keep_in_fp32_modules``), matched as the installed Transformers matches
  them (``should_convert_module``; the rule changed between 5.17 and 5.24).

The memory model applies both to a model built on the meta device; the worker applies the name
rule to the loaded model to tell a layer left alone by design from one that should have been
converted and was not. Nothing here imports torch or Transformers at module level: the name rule
defers to the installed Transformers' own function when Transformers is already imported, and
otherwise matches as Transformers 5.17 does.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any


def should_convert(name: str, patterns: Iterable[str] | None) -> bool:
    """Whether bitsandbytes would convert the module ``name``, given ``modules_to_not_convert``."""
    keys = list(patterns or ())
    if not keys:
        return True
    if "transformers" in sys.modules:
        try:
            from transformers.quantizers.quantizers_utils import should_convert_module
        except ImportError:
            pass
        else:
            return bool(should_convert_module(name, keys))
    return not any(re.match(f"{key}\\.", name) or re.match(key, name) or name.endswith(key) for key in keys)


def linear_classes() -> tuple[type, ...]:
    """``nn.Linear`` and, where Transformers has it, GPT-2's ``Conv1D`` (imports torch)."""
    from torch import nn

    classes: list[type] = [nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        classes.append(Conv1D)
    except ImportError:
        pass
    return tuple(classes)


def converts_class(module: Any, transformers_major: int) -> bool:
    """Whether bitsandbytes replaces a module of this class (the class rule; imports torch)."""
    from torch import nn

    classes = linear_classes()
    if len(classes) > 1 and isinstance(module, classes[1:]):
        return True
    return type(module) is nn.Linear if transformers_major >= 5 else isinstance(module, nn.Linear)
