"""Task modules: one ``SAMModule`` subclass per experiment family (paper Sec. 6, docs/algorithms.md §6).

Each subclasses :class:`LoRATask` (LoRA+ groups, adapter restore, checkpoints without the frozen
base) and implements ``compute_outputs`` + ``loss_from_outputs`` (so Functional-SAM works) and works with
every method of the paper (LoRA, LoRA-SAM, LoRA-oBAR, LoRA-nBAR), chosen in the config alone.
"""

from lit_bar.tasks.base import LoRATask
from lit_bar.tasks.causal import CausalLMTask
from lit_bar.tasks.generation import DataToTextGenerator
from lit_bar.tasks.glue import SequenceClassifier
from lit_bar.tasks.lora import LoraSettings, apply_lora, load_adapter_weights
from lit_bar.tasks.prompt import PromptMLMClassifier

__all__ = [
    "CausalLMTask",
    "DataToTextGenerator",
    "LoRATask",
    "LoraSettings",
    "PromptMLMClassifier",
    "SequenceClassifier",
    "apply_lora",
    "load_adapter_weights",
]
