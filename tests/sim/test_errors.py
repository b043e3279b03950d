"""Node errors, OOM, interrupts and POST /prompt validation."""

from __future__ import annotations

import httpx
from sim_helpers import submit, workflow

from comfyfleet.sim import SimConfig, Simulator
from helpers.traces import trace_lines

OOM_TIP = "This error means you ran out of memory on your GPU."


def failing(**inputs: object) -> dict:
    prompt = workflow(steps=1)
    prompt["2"] = {"class_type": "SimFailingNode", "inputs": {"image": ["1", 0], "message": "boom", **inputs}}
    return prompt


async def test_node_error_event_and_history(sim, http, connect):
    """A ValueError in a node -> execution_error with ComfyUI's fields, history status error."""
    ws = await connect("c1")
    prompt_id = await submit(http, failing(), "c1")
    error = (await ws.wait_type("execution_error", prompt_id))["data"]
    assert error["exception_type"] == "ValueError" and error["exception_message"].endswith("boom\n")
    assert error["node_id"] == "2" and error["node_type"] == "SimFailingNode" and error["executed"] == ["1"]
    assert isinstance(error["traceback"], list) and error["current_inputs"]["message"] == ["boom"]
    assert set(error) >= {"current_outputs", "timestamp"}
    await ws.wait_type("executing", prompt_id, node=None)
    entry = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1] == ["execution_error", error]
    assert [m["type"] for m in ws.messages] == [  # trace 02, variant valueerror
        "status", "status", "status", "execution_start", "execution_cached", "progress_state", "executing",
        "progress_state", "progress_state", "executing", "execution_error", "status", "executing"]
    assert sim.records[-1].outcome == "error"


async def test_fake_oom_and_oom_fault(sim, http, connect):
    """fake_oom input and the oom_above_nodes fault -> torch.OutOfMemoryError with the real tip."""
    ws = await connect("c1")
    first = await submit(http, failing(fake_oom=True, message="x"), "c1")
    error = (await ws.wait_type("execution_error", first))["data"]
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith("Allocation on device: fake OOM (x)\n" + OOM_TIP)
    sim.faults.oom_above_nodes = 2
    second = await submit(http, workflow(steps=2), "c1")
    error = (await ws.wait_type("execution_error", second))["data"]
    assert error["exception_type"] == "torch.OutOfMemoryError" and error["node_id"] == "2"
    sim.faults.oom_above_nodes = 3
    third = await submit(http, workflow(steps=1), "c1")
    await ws.wait_type("execution_success", third)


async def test_fail_class_type_fault(sim, http, connect):
    """fail_class_type makes one node class raise ValueError; other workflows still succeed."""
    ws = await connect("c1")
    sim.faults.fail_class_type = "SimSlowPassthrough"
    bad = await submit(http, workflow(steps=1), "c1")
    assert (await ws.wait_type("execution_error", bad))["data"]["node_type"] == "SimSlowPassthrough"
    ok_prompt = {"1": {"class_type": "PreviewAny", "inputs": {"source": 40}}}
    ok = await submit(http, ok_prompt, "c1")
    executed = await ws.wait_type("executed", ok)
    assert executed["data"]["output"] == {"text": ["40"]}


async def test_interrupt_targeted_and_global(sim, http, connect):
    """Interrupt of a pending id is ignored; of the running id -> execution_interrupted, status error."""
    ws = await connect("c1")
    running = await submit(http, workflow(steps=500), "c1")
    pending = await submit(http, workflow(steps=1), "c1")
    await ws.wait_type("progress", running, value=1)
    assert (await http.post("/interrupt", json={"prompt_id": pending})).status_code == 200
    await ws.wait_type("progress", running, value=3)
    assert (await http.post("/interrupt", json={"prompt_id": running})).status_code == 200
    interrupted = (await ws.wait_type("execution_interrupted", running))["data"]
    assert interrupted["node_id"] == "2" and interrupted["executed"] == ["1"]
    assert set(interrupted) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    await ws.wait_type("executing", running, node=None)
    entry = (await http.get(f"/history/{running}")).json()[running]
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][-1][0] == "execution_interrupted"
    await ws.wait_type("execution_success", pending)
    third = await submit(http, workflow(steps=500))  # no client_id: interrupted is broadcast
    await ws.wait_type("progress", third, value=1)
    await http.post("/interrupt")
    await ws.wait_type("execution_interrupted", third)
    assert [r.outcome for r in sim.records] == ["interrupted", "success", "interrupted"]


async def test_validation_errors(sim, http):
    """Every 400 variant, the 500 on a non-JSON body, and a partially valid prompt."""
    r = await http.post("/prompt", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 500 and r.headers["content-type"].startswith("text/plain")
    r = await http.post("/prompt", json={"client_id": "x"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "no_prompt"
    r = await http.post("/prompt", json={"prompt": {"1": {"inputs": {}}}})
    assert r.json() == {"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing "
                        "the class_type property.", "details": "Node ID '#1'", "extra_info": {}}, "node_errors": {}}
    r = await http.post("/prompt", json={"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "prompt_no_outputs"
    r = await http.post("/prompt", json={"prompt": workflow(steps=-5)})
    body = r.json()
    assert r.status_code == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["details"] == ""
    assert body["node_errors"]["2"]["errors"][0]["type"] == "value_smaller_than_min"
    assert body["node_errors"]["2"]["dependent_outputs"] == ["3"]
    missing = workflow()
    missing["3"]["inputs"]["images"] = ["99", 0]
    body = (await http.post("/prompt", json={"prompt": missing})).json()
    assert body["error"]["details"] == "Exception when validating node: '99'"
    assert body["node_errors"]["3"]["errors"][0]["extra_info"]["exception_type"] == "KeyError"
    partial = workflow(steps=1)
    partial["4"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0]}}
    partial["5"] = {"class_type": "SimSlowPassthrough", "inputs": {"image": ["1", 0], "steps": 0}}
    r = await http.post("/prompt", json={"prompt": partial})
    assert r.status_code == 200 and list(r.json()["node_errors"]) == ["5"]
    await sim.wait_idle(5)
    prompt_id = r.json()["prompt_id"]
    assert (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["prompt"][4] == ["3"]
    assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}
    assert r.json()["number"] == 5  # the counter advanced on every parsed request, failed ones too


async def test_a_node_class_the_server_lacks_is_refused_as_comfyui_refuses_it(http):
    """Trace 05 (`unknown_class_type`): the same request gets the same 400 body."""
    captured = next(line for line in trace_lines("05_validation_failure.jsonl")
                    if line.get("label") == "unknown_class_type")
    r = await http.post("/prompt", json=captured["req"])
    assert (r.status_code, r.json()) == (captured["status"], captured["resp"])


async def test_object_info_lists_the_configured_node_classes():
    config = SimConfig(step_s=0.01, node_classes=("EmptyImage", "SaveImage", "KSampler"))
    async with Simulator(config) as sim, httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
        info = (await http.get("/object_info")).json()
        assert sorted(info) == ["EmptyImage", "KSampler", "SaveImage"]
        assert info["SaveImage"]["output_node"] is True and info["KSampler"]["output_node"] is False
        refused = await http.post("/prompt", json={"prompt": workflow(steps=1)})  # SimSlowPassthrough
        assert refused.json()["error"]["message"] == "Cannot execute because node SimSlowPassthrough does not exist."
    async with Simulator(SimConfig(step_s=0.01)) as sim, httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
        assert {"KSampler", "SimSlowPassthrough", "OrchSlowPassthrough"} <= set((await http.get("/object_info")).json())
