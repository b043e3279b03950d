"""Backend selection (pure): tags, health, breakers, retries elsewhere, fallback groups, turns."""

from __future__ import annotations

from comfyfleet.domain.job import Attempt, Job, JobStatus
from comfyfleet.domain.policy import BreakerState, BreakerStatus, CircuitBreaker
from comfyfleet.runtime.selection import Roster, TypeRouting, plan_candidates
from comfyfleet.store.fleet import BackendHealth, BackendRecord, FleetSnapshot

BREAKER = CircuitBreaker(failure_threshold=2, cooldown_s=10.0)


def snapshot(*records: BackendRecord, health=None, breakers=None) -> FleetSnapshot:
    return FleetSnapshot(backends={r.name: r for r in records}, health=health or {},
                         breakers=breakers or {}, read_at=0.0)


def job(metadata=None, history=()) -> Job:
    return Job(id="j", status=JobStatus.QUEUED, created_at=0.0, metadata=metadata or {},
               history=tuple(history), attempt=len(history))


def failed_on(name: str, failure_class: str = "transient") -> Attempt:
    return Attempt(number=1, backend=name, prompt_id="p", client_id="c", worker="w", started_at=0.0,
                   ended_at=1.0, outcome="retried", failure_class=failure_class)


def names(plan) -> list[tuple[str, int, int]]:
    return list(plan.candidates)


def plan(j, snap, routing=TypeRouting(), turn=0, now=0.0):
    return plan_candidates(j, snap, routing=routing, breaker=BREAKER, now=now, turn=turn)


A, B, C = (BackendRecord(name=n, url=f"http://{n}", capacity=2) for n in "abc")


def test_equals_take_turns_and_capacity_is_the_slot_limit():
    snap = snapshot(A, B, C)
    assert names(plan(job(), snap, turn=0)) == [("a", 2, 0), ("b", 2, 0), ("c", 2, 0)]
    assert names(plan(job(), snap, turn=1)) == [("b", 2, 0), ("c", 2, 0), ("a", 2, 0)]


def test_required_tags_from_metadata_and_job_type():
    lora = BackendRecord(name="l", url="http://l", tags=("lora", "sdxl"))
    snap = snapshot(A, lora)
    assert [c[0] for c in plan(job({"tags": "lora"}), snap).candidates] == ["l"]
    assert [c[0] for c in plan(job(), snap, TypeRouting(tags=("sdxl",))).candidates] == ["l"]
    nowhere = plan(job({"tags": "h100"}), snap)
    assert nowhere.candidates == () and "h100" in nowhere.fatal
    assert plan(job(), snapshot()).fatal == "no backend is configured"


def test_down_draining_disabled_and_open_breakers_are_left_out_half_open_gets_one_probe():
    opened = BREAKER.record_failure(BREAKER.record_failure(BreakerState(), 0.0), 0.0)
    assert opened.status is BreakerStatus.OPEN
    snap = snapshot(A, B, C, BackendRecord(name="d", url="http://d", state="draining"),
                    BackendRecord(name="x", url="http://x", state="disabled"),
                    health={"a": BackendHealth(state="down")}, breakers={"backend:b": opened})
    assert names(plan(job(), snap, now=5.0)) == [("c", 2, 0)]
    assert names(plan(job(), snap, now=10.0)) == [("b", 1, 0), ("c", 2, 0)]  # b half-open: 1 probe


def test_degraded_backends_come_after_healthy_ones():
    snap = snapshot(A, B, health={"a": BackendHealth(state="degraded"), "b": BackendHealth(state="healthy")})
    assert names(plan(job(), snap)) == [("b", 2, 0), ("a", 2, 1)]


def test_a_retry_waits_for_a_backend_it_has_not_failed_on_while_one_can_take_it():
    snap = snapshot(A, B, C)
    assert [c[0] for c in plan(job(history=[failed_on("a")]), snap).candidates] == ["b", "c"]
    everywhere = job(history=[failed_on("a"), failed_on("b"), failed_on("c")])
    assert sorted(c[0] for c in plan(everywhere, snap).candidates) == ["a", "b", "c"]
    down = snapshot(A, B, health={"b": BackendHealth(state="down")})
    assert [c[0] for c in plan(job(history=[failed_on("a")]), down).candidates] == ["a"]


def test_out_of_memory_backends_are_left_out_unless_nothing_else_matches():
    snap = snapshot(A, B)
    too_small = job(history=[failed_on("a", "recoverable")])
    assert [c[0] for c in plan(too_small, snap).candidates] == ["b"]
    only = job(history=[failed_on("a", "recoverable"), failed_on("b", "recoverable")])
    assert sorted(c[0] for c in plan(only, snap).candidates) == ["a", "b"]


def test_fallback_groups_in_order_and_a_worn_group_moves_last():
    a100 = BackendRecord(name="g1", url="http://g1", tags=("a100",))
    h100 = BackendRecord(name="g2", url="http://g2", tags=("h100",))
    routing = TypeRouting(fallback=(("a100",), ("h100",)), fallback_after=1)
    snap = snapshot(a100, h100)
    assert names(plan(job(), snap, routing)) == [("g1", 1, 0), ("g2", 1, 2)]
    down = snapshot(a100, h100, health={"g1": BackendHealth(state="down")})
    assert [c[0] for c in plan(job(), down, routing).candidates] == ["g2"]
    worn = plan(job(history=[failed_on("g1")]), snap, routing)
    assert [c[0] for c in worn.candidates] == ["g2"]


def test_a_kept_roster_plans_like_a_fresh_one_and_knows_when_a_cool_down_ends():
    opened = BREAKER.record_failure(BREAKER.record_failure(BreakerState(), 0.0), 0.0)
    snap = snapshot(A, B, C, breakers={"backend:b": opened})
    kept = Roster.of(snap, BREAKER, now=1.0)
    assert kept.valid_until == 10.0  # b's cool-down ends: the roster must be made again then
    lora = job({"tags": "lora"})
    for turn in range(4):
        for j in (job(), job(history=[failed_on("a")]), lora, job()):
            assert kept.plan(j, TypeRouting(), turn=turn) == plan(j, snap, turn=turn, now=1.0)
    assert Roster.of(snapshot(A, B), BREAKER, now=1.0).valid_until == float("inf")


def test_first_tries_share_a_plan_but_a_retry_is_planned_from_its_own_history():
    kept = Roster.of(snapshot(A, B, C), BREAKER, now=0.0)
    assert [c[0] for c in kept.plan(job(), TypeRouting(), turn=0).candidates] == ["a", "b", "c"]
    retry = kept.plan(job(history=[failed_on("a")]), TypeRouting(), turn=0)
    assert [c[0] for c in retry.candidates] == ["b", "c"]
    assert [c[0] for c in kept.plan(job(), TypeRouting(), turn=1).candidates] == ["b", "c", "a"]


SDXL, FLUX, DETAIL = "sd_xl_base_1.0.safetensors", "flux1-dev-Q8_0.gguf", "loras/detail.safetensors"


def test_backends_holding_the_jobs_models_come_first_then_empty_ones_equals_keep_their_turn():
    d = BackendRecord(name="d", url="http://d", capacity=2)
    warm = {"b": frozenset({SDXL}), "c": frozenset({SDXL, DETAIL}), "d": frozenset({FLUX})}
    snap = FleetSnapshot(backends={r.name: r for r in (A, B, C, d)}, health={}, breakers={},
                         read_at=0.0, warm=warm)

    def order(models, turn=0):
        return [c[0] for c in plan_candidates(job(), snap, routing=TypeRouting(), breaker=BREAKER,
                                              now=0.0, turn=turn, models=frozenset(models)).candidates]

    assert order({SDXL, DETAIL}) == ["c", "b", "a", "d"]  # both held, one held, nothing held, other models
    assert order({SDXL}, turn=0) == ["b", "c", "a", "d"]  # b and c equally warm: their turn decides
    assert order({SDXL}, turn=2) == ["c", "b", "a", "d"]
    assert order({FLUX}) == ["d", "a", "b", "c"]
    assert order({"new.ckpt"}, turn=1) == ["a", "b", "c", "d"]  # held nowhere: the empty one first
    assert order(set(), turn=1) == ["b", "c", "d", "a"]  # loads no model: plain turns


def test_warmth_never_overrides_health_tiers_or_a_retry_elsewhere():
    snap = FleetSnapshot(backends={r.name: r for r in (A, B, C)},
                         health={"b": BackendHealth(state="degraded")}, breakers={}, read_at=0.0,
                         warm={"b": frozenset({SDXL}), "c": frozenset({SDXL})})
    first = plan_candidates(job(), snap, routing=TypeRouting(), breaker=BREAKER, now=0.0, turn=0,
                            models=frozenset({SDXL})).candidates
    assert [(c[0], c[2]) for c in first] == [("c", 0), ("a", 0), ("b", 1)]
    retry = plan_candidates(job(history=[failed_on("c")]), snap, routing=TypeRouting(), breaker=BREAKER,
                            now=0.0, turn=0, models=frozenset({SDXL})).candidates
    assert [c[0] for c in retry] == ["a", "b"]
