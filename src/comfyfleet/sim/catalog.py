"""The node classes a simulated server has, and its ``/object_info`` answer.

The simulator runs any node generically (its steps, previews, outputs and faults come from the
node's inputs, not its class), so its catalog is only a list of names: the core ComfyUI classes
the tests and samples use, the test nodes of the captured traces (``Orch*``) and the
simulator's own (``Sim*``). A prompt naming a class outside it is refused as ComfyUI refuses it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .validation import STEPS_CONFIG, is_output_class

_IMAGE = ["IMAGE"]
# Classes with an input spec worth showing; every other class in a catalog gets an empty one.
SPECS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "EmptyImage": ({"width": ["INT", {"default": 512, "min": 1}], "height": ["INT", {"default": 512, "min": 1}]},
                   ["IMAGE"]),
    "SimSlowPassthrough": ({"image": _IMAGE, "steps": STEPS_CONFIG}, ["IMAGE"]),
    "SimFailingNode": ({"image": _IMAGE, "message": ["STRING", {"default": "boom"}]}, ["IMAGE"]),
    "SaveImage": ({"images": _IMAGE, "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, []),
    "PreviewImage": ({"images": _IMAGE}, []),
    "PreviewAny": ({"source": ["*", {}]}, []),
}
DEFAULT_NODE_CLASSES: frozenset[str] = frozenset(SPECS) | {
    # core ComfyUI
    "CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "KSamplerAdvanced",
    "VAEDecode", "VAEEncode", "LoraLoader", "UpscaleModelLoader", "UNETLoader", "LoadImage",
    "LoadImageMask", "LoadVideo", "LoadAudio", "GetImageSize", "PrimitiveInt", "PrimitiveString",
    "SaveAnimatedWEBP", "SaveVideo", "SaveAudio", "Note",
    # custom nodes the samples name
    "UnetLoaderGGUF",
    # the test nodes of the captured traces
    "OrchSlowPassthrough", "OrchFailingNode", "OrchSlowInt",
}


@cache
def object_info(classes: frozenset[str]) -> dict[str, Any]:
    """``GET /object_info``: class -> its description, in ComfyUI's shape."""
    return {name: {"input": {"required": SPECS.get(name, ({}, []))[0]}, "output": SPECS.get(name, ({}, []))[1],
                   "output_node": is_output_class(name), "name": name, "display_name": name,
                   "category": "sim", "python_module": "sim"}
            for name in sorted(classes)}
