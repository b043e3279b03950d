"""What simulated nodes do: graph order, cache signatures, failures and outputs."""

from __future__ import annotations

import hashlib
import json
import os

from .filenames import SaveNames
from .images import png_bytes
from .validation import is_link, is_output_class

OOM_TIP = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked "
           "before you might have accidentally set the batch_size to a large number.")
_TRACEBACK_HEAD = [
    '  File "/opt/ComfyUI/execution.py", line 496, in execute\n    output_data, output_ui, '
    "has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, "
    "input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
    "hidden_inputs=hidden_inputs)\n",
    '  File "/opt/ComfyUI/execution.py", line 277, in process_inputs\n    result = f(**inputs)\n',
]


class Interrupted(Exception):
    """The cooperative interrupt flag was seen while `node_id` was current."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class NodeFailure(Exception):
    """A node raised; carries the fields of `execution_error`."""

    def __init__(self, node_id: str, exception_type: str, message: str, source_line: str) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.exception_type = exception_type
        self.exception_message = message
        self.traceback = _TRACEBACK_HEAD + [
            f'  File "/opt/ComfyUI/custom_nodes/comfyfleet_sim/__init__.py", line 42, in run\n    {source_line}\n']


def execution_order(prompt: dict, outputs: list[str]) -> list[str]:
    """Nodes reachable from `outputs`, dependencies first (depth-first, input order)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for value in prompt[node_id].get("inputs", {}).values():
            if is_link(value):
                visit(value[0])
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def signatures(prompt: dict, order: list[str]) -> dict[str, str]:
    """Cache key per node: class_type, literal inputs and the keys of its inputs' sources."""
    result: dict[str, str] = {}
    for node_id in order:
        node = prompt[node_id]
        inputs = {name: ({"link": result[v[0]], "slot": v[1]} if is_link(v) else v)
                  for name, v in sorted(node.get("inputs", {}).items())}
        blob = json.dumps([node["class_type"], inputs], sort_keys=True, default=str)
        result[node_id] = hashlib.sha256(blob.encode()).hexdigest()
    return result


def steps_of(node: dict) -> int:
    value = node.get("inputs", {}).get("steps")
    if value is None or is_link(value) or isinstance(value, bool):
        return 0
    return int(value)


def step_seconds(node: dict, default_s: float) -> float:
    value = node.get("inputs", {}).get("step_seconds")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default_s


def failure_for(node_id: str, node: dict, *, fail_class_type: str | None, oom_target: str | None) -> NodeFailure | None:
    """The error this node raises, if any (SimFailingNode, fail/fake_oom inputs, or a fault)."""
    inputs = node.get("inputs", {})
    class_type = node["class_type"]
    message = str(inputs.get("message", "boom"))
    if inputs.get("fake_oom") is True:
        return NodeFailure(node_id, "torch.OutOfMemoryError",
                           f"Allocation on device: fake OOM ({message})\n{OOM_TIP}",
                           'raise comfy.model_management.OOM_EXCEPTION(f"Allocation on device: fake OOM ({message})")')
    if node_id == oom_target:
        return NodeFailure(node_id, "torch.OutOfMemoryError", f"Allocation on device \n{OOM_TIP}",
                           "raise torch.OutOfMemoryError('Allocation on device ')")
    if class_type == "SimFailingNode" or inputs.get("fail") is True or class_type == fail_class_type:
        return NodeFailure(node_id, "ValueError", f"{class_type} deliberately failed: {message}\n",
                           'raise ValueError(f"{class_type} deliberately failed: {message}")')
    return None


def current_inputs(node: dict) -> dict:
    """`current_inputs` as ComfyUI formats them: one list per input, non-primitives str()'d."""
    out = {}
    for name, value in node.get("inputs", {}).items():
        if is_link(value):
            out[name] = [f"tensor(<output {value[1]} of node {value[0]}>)"]
        elif isinstance(value, str | int | float | bool) or value is None:
            out[name] = [value]
        else:
            out[name] = [str(value)]
    return out


def produce_output(node_id: str, node: dict, prompt_id: str, dirs: dict[str, str],
                   names: SaveNames) -> dict | None:
    """The node's `ui` dict (None for non-output nodes); image outputs write a PNG."""
    class_type = node["class_type"]
    if not is_output_class(class_type):
        return None
    inputs = node.get("inputs", {})
    if class_type.startswith("Save") or class_type == "PreviewImage":
        kind = "output" if class_type.startswith("Save") else "temp"
        prefix = str(inputs.get("filename_prefix") or "ComfyUI")
        if kind == "temp":
            prefix = "ComfyUI_temp_" + hashlib.sha256(prompt_id.encode()).hexdigest()[:5]
        filename = names.next_name(dirs[kind], prefix)
        side = inputs.get("sim_size_px", 8)  # a large output (a video's worth) when asked for
        side = side if isinstance(side, int) and 1 <= side <= 4096 else 8
        with open(os.path.join(dirs[kind], filename), "wb") as fh:
            fh.write(png_bytes(f"{prompt_id}/{node_id}", size=side))
        names.saved(dirs[kind], prefix, filename)
        return {"images": [{"filename": filename, "subfolder": "", "type": kind}]}
    source = next(iter(inputs.values()), None)
    text = f"output of node {source[0]}" if is_link(source) else str(source)
    return {"text": [text]}
