"""`POST /prompt` validation with ComfyUI's error shapes (execution.py:966-1073)."""

from __future__ import annotations

from collections.abc import Callable

OUTPUT_PREFIXES = ("Save", "Preview")
INPUT_LOADERS = {"LoadImage": "image", "LoadImageMask": "image", "LoadVideo": "file",
                 "LoadAudio": "audio"}  # class -> the input naming a file in the input directory
STEPS_CONFIG = ["INT", {"default": 5, "min": 1, "max": 10000}]
_MISSING_NODE_TRACEBACK = [
    '  File "/opt/ComfyUI/execution.py", line 1010, in validate_prompt\n'
    "    m = await validate_inputs(prompt_id, prompt, o, validated)\n",
    '  File "/opt/ComfyUI/execution.py", line 788, in validate_inputs\n'
    "    o_class_type = prompt[o_id]['class_type']\n",
]


class PromptInvalid(Exception):
    """Validation failed; `body` is the HTTP 400 JSON body."""

    def __init__(self, body: dict) -> None:
        super().__init__(body["error"]["type"])
        self.body = body


def is_output_class(class_type: str) -> bool:
    return class_type.startswith(OUTPUT_PREFIXES)


def is_link(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], str) and isinstance(value[1], int))


def _rejection(kind: str, message: str, details: str = "", node_errors: dict | None = None) -> PromptInvalid:
    return PromptInvalid({"error": {"type": kind, "message": message, "details": details,
                                    "extra_info": {}}, "node_errors": node_errors or {}})


def _steps_errors(value: object) -> list[dict]:
    if isinstance(value, bool):
        value = int(value)
    try:
        steps = int(value)
    except (TypeError, ValueError) as exc:
        return [{"type": "invalid_input_type", "message": "Failed to convert an input value to a INT value",
                 "details": f"steps, {value}, {exc}",
                 "extra_info": {"input_name": "steps", "input_config": STEPS_CONFIG,
                                "received_value": value, "exception_message": str(exc)}}]
    extra = {"input_name": "steps", "input_config": STEPS_CONFIG, "received_value": steps}
    if steps < 1:
        return [{"type": "value_smaller_than_min", "message": f"Value {steps} smaller than min of 1",
                 "details": "steps", "extra_info": extra}]
    if steps > 10000:
        return [{"type": "value_bigger_than_max", "message": f"Value {steps} bigger than max of 10000",
                 "details": "steps", "extra_info": extra}]
    return []


def _input_file_errors(node: dict, input_exists: Callable[[str], bool] | None) -> list[dict]:
    """A loader naming a file not in the input directory (``LoadImage.VALIDATE_INPUTS``)."""
    name = INPUT_LOADERS.get(str(node.get("class_type")))
    value = node.get("inputs", {}).get(name) if name else None
    if name is None or input_exists is None or value is None or is_link(value):
        return []
    if isinstance(value, str) and input_exists(value):
        return []
    return [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
             "details": f"{name} - Invalid {name} file: {value}",
             "extra_info": {"input_name": name, "input_config": None, "received_value": value}}]


def _own_errors(prompt: dict, node: dict, input_exists: Callable[[str], bool] | None = None) -> list[dict]:
    """Errors of one node's own inputs (upstream failures are not listed here, like ComfyUI)."""
    for value in node.get("inputs", {}).values():
        if is_link(value) and value[0] not in prompt:
            return [{"type": "exception_during_validation", "message": "Exception when validating node",
                     "details": repr(value[0]),
                     "extra_info": {"exception_type": "KeyError", "traceback": _MISSING_NODE_TRACEBACK}}]
    steps = node.get("inputs", {}).get("steps")
    if steps is not None and not is_link(steps):
        return _steps_errors(steps)
    return _input_file_errors(node, input_exists)


def _validate_tree(prompt: dict, node_id: str, results: dict[str, tuple[bool, list]],
                   input_exists: Callable[[str], bool] | None = None) -> bool:
    """Validate a node and everything upstream of it; memoised in `results`."""
    if node_id in results:
        return results[node_id][0]
    results[node_id] = (True, [])  # guards against cycles
    errors = _own_errors(prompt, prompt[node_id], input_exists)
    valid = not errors
    if valid:
        for value in prompt[node_id].get("inputs", {}).values():
            if is_link(value) and not _validate_tree(prompt, value[0], results, input_exists):
                valid = False
    results[node_id] = (valid, errors)
    return valid


def validate_prompt(prompt: object, partial_targets: list | None = None, *,
                    input_exists: Callable[[str], bool] | None = None,
                    node_exists: Callable[[str], bool] | None = None) -> tuple[list[str], dict]:
    """Return (outputs_to_execute, node_errors) or raise PromptInvalid with the 400 body.
    ``input_exists(name)``: whether the input directory holds a file a loader names;
    ``node_exists(class_type)``: whether this server has that node class."""
    if not isinstance(prompt, dict):
        raise _rejection("invalid_prompt", "Cannot execute because the prompt is not an object.")
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise _rejection("invalid_prompt",
                             "Cannot execute because a node is missing the class_type property.",
                             f"Node ID '#{node_id}'")
        if node_exists is not None and not node_exists(str(node["class_type"])):
            raise _rejection("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                             f"Node ID '#{node_id}'")
    if partial_targets is not None:
        outputs = [str(t) for t in partial_targets if str(t) in prompt]
    else:
        outputs = [nid for nid, node in prompt.items() if is_output_class(str(node["class_type"]))]
    if not outputs:
        raise _rejection("prompt_no_outputs", "Prompt has no outputs")
    results: dict[str, tuple[bool, list]] = {}
    good, failed = [], []
    for output in outputs:
        (good if _validate_tree(prompt, output, results, input_exists) else failed).append(output)
    node_errors: dict = {}
    for node_id, (_, errors) in results.items():
        if errors:
            dependents = [o for o in failed if _depends_on(prompt, o, node_id)]
            node_errors[node_id] = {"errors": errors, "dependent_outputs": dependents,
                                    "class_type": prompt[node_id]["class_type"]}
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}"
                            for o in failed for e in results[o][1])
        raise _rejection("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                         details, node_errors)
    return good, node_errors


def _depends_on(prompt: dict, start: str, target: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        node_id = stack.pop()
        if node_id == target:
            return True
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        stack.extend(v[0] for v in prompt[node_id].get("inputs", {}).values() if is_link(v))
    return False
