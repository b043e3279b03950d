"""The model files a workflow loads, and how warm a backend is for them (pure).

ComfyUI keeps the outputs of the last prompt's nodes, loaded models included: a prompt whose
loader nodes ask for the same files as the previous prompt on that server skips loading them
(seconds to a minute for a large checkpoint). A backend is *warm* for the models of the last
prompt that succeeded on it; among backends equally free, selection prefers the warmest.

Loader nodes differ (``CheckpointLoaderSimple.ckpt_name``, ``LoraLoader.lora_name``, custom
loaders with inputs of any name), but all of them name a file in a models folder: any string
input ending in a model-file extension is taken as a model the prompt loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The extensions ComfyUI lists in its model folders (folder_paths.supported_pt_extensions),
# and GGUF (quantised models through the common custom loaders).
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".gguf")
NO_MODELS: frozenset[str] = frozenset()


def models_of(workflow: Mapping[str, Any]) -> frozenset[str]:
    """The model files (as named in the workflow) that its nodes load."""
    found: set[str] = set()
    for node in workflow.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        for value in inputs.values():
            if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS):
                found.add(value)
    return frozenset(found) if found else NO_MODELS


def warmth(models: frozenset[str], warm: frozenset[str]) -> tuple[int, int]:
    """A sort key, lower is better, of a backend ``warm`` with some models for a job that loads
    ``models``: first more of the job's models already loaded, then nothing loaded at all
    (nothing to evict, and it leaves other backends warm for the jobs that want them)."""
    return (-len(models & warm), 0 if not warm else 1)
