"""Every Redis key comfyfleet uses, built in one place.

    name                       key                              type     holds
    -------------------------  -------------------------------  -------  ---------------------------------
    job(id)                    {p}:job:{id}                     hash     status version owner type
                                                                         created_at priority data(JSON)
    workflow(id)               {p}:job:{id}:wf                  string   the workflow JSON
    preview(id)                {p}:job:{id}:preview             string   latest preview (JSON, base64), 1 h
    claim(id)                  {p}:job:{id}:claim               string   token of the runner owning the job,
                                                                         PX lease (store/claims.py)
    all_index                  {p}:idx:all                      zset     job ids scored by created_at
    status_index(status)       {p}:idx:status:{status}          zset     same, one per status
    owner_index(owner)         {p}:idx:owner:{owner}            zset     same, one per owner
    type_index(type)           {p}:idx:type:{type}              zset     same, one per job type
    active_index               {p}:idx:active                   zset     queued/running/canceling jobs
    idempotency(owner, key)    {p}:idem:{owner%}:{key}          string   job id, TTL idempotency_ttl_s;
                                                                         owner percent-encoded
    events_channel             {p}:events                       pubsub   every job event (one channel)
    events_stream              {p}:events:stream                stream   the same events, capped ~10000
    cancel_channel             {p}:events:cancel                pubsub   {"job_id", "kind": "cancel"} when
                                                                         a running job is asked to cancel
    partner_ask_channel        {p}:partner:ask                  pubsub   {"job_id", "kind": "ask"}: a worker
                                                                         wants a job's partner key
    partner_reply_channel      {p}:partner:reply                pubsub   {"job_id", "kind": "partner_key",
                                                                         "key"} from the API process holding it
    bull_prefix                {p}:bull                         prefix   BullMQ queues live below this
    worker(id)                 {p}:worker:{id}                  string   worker liveness, with a TTL
    workers                    {p}:workers                      zset     worker id scored by liveness expiry ms
    maintenance_lock           {p}:maintenance:lock             string   held by the process running a
                                                                         maintenance pass, PX interval
    meta                       {p}:meta                         hash     schema version and the like
    tracking_stats             {p}:stats:tracking               hash     "{backend}:{counter}" -> total
    job_stats                  {p}:stats:jobs                   hash     counter (JSON array) -> total
    fleet_backends             {p}:fleet:backends               hash     backend name -> record (JSON)
    fleet_health               {p}:fleet:health                 hash     backend name -> last health (JSON)
    fleet_breakers             {p}:fleet:breakers               hash     breaker scope -> state (JSON)
    fleet_warm                 {p}:fleet:warm                   hash     backend name -> models loaded (JSON list)
    fleet_resting              {p}:fleet:resting                hash     backend name -> time it asked to be left
                                                                         alone until (its Retry-After)
    fleet_nodes                {p}:fleet:nodes                  hash     backend name -> its node catalog: digest,
                                                                         when read, class count (JSON)
    fleet_node_sets            {p}:fleet:node_sets              hash     catalog digest -> node class names (JSON
                                                                         list); backends alike share one
    lease(backend)             {p}:fleet:lease:{backend}        zset     holder (job id) scored by expiry ms
    health_claim(backend)      {p}:fleet:check:{backend}        string   who checks the backend now, PX
    fleet_channel              {p}:fleet:changed                pubsub   registry/health/breaker changed
    slots_channel              {p}:fleet:slots                  pubsub   a slot was released (backend name)
    upload(id)                 {p}:upload:{id}                  string   an uploaded input asset (JSON),
                                                                         expiring with it (store/uploads.py)
    upload_hash(owner, b3)     {p}:upload:hash:{owner%}:{b3}    string   an owner's blake3 -> blob digest,
                                                                         size, content type; same expiry
    blobs_held                 {p}:blobs:held                   zset     blob digest scored by the time until
                                                                         which an upload or a job needs it

Indexes have no TTL: records and workflows expire (not finished: 2 h past the last write, and
never before the deadline plus those 2 h; finished: 7 days) and
``RedisJobStore.repair_indexes`` drops index entries whose record is gone.

Redis Cluster: use a hash-tagged prefix such as ``Keys(prefix="{cf}")`` so every key of a
deployment hashes to one slot and the Lua scripts may touch them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

_GLOB_SPECIAL = "\\*?[]"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one deployment; ``prefix`` separates deployments sharing a Redis."""

    prefix: str = "cf"

    # -- job records ---------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def workflow(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:wf"

    def preview(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:preview"

    def claim(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:claim"

    # -- indexes -------------------------------------------------------------------------------
    @property
    def all_index(self) -> str:
        return f"{self.prefix}:idx:all"

    def status_index(self, status: str) -> str:
        return f"{self.prefix}:idx:status:{getattr(status, 'value', status)}"

    def owner_index(self, owner: str) -> str:
        return f"{self.prefix}:idx:owner:{owner}"

    def type_index(self, job_type: str) -> str:
        return f"{self.prefix}:idx:type:{job_type}"

    @property
    def active_index(self) -> str:
        return f"{self.prefix}:idx:active"

    @property
    def owner_index_pattern(self) -> str:
        """SCAN pattern matching every owner index."""
        return f"{_glob_escape(self.prefix)}:idx:owner:*"

    @property
    def type_index_pattern(self) -> str:
        """SCAN pattern matching every type index."""
        return f"{_glob_escape(self.prefix)}:idx:type:*"

    # -- idempotency ---------------------------------------------------------------------------
    def idempotency(self, owner: str | None, key: str) -> str:
        """The owner is percent-encoded (``:`` and ``%`` among others), so owner ``a:b`` with key
        ``c`` and owner ``a`` with key ``b:c`` are two keys; no owner (``None``) is empty."""
        return f"{self.prefix}:idem:{quote(owner or '', safe='')}:{key}"

    # -- events --------------------------------------------------------------------------------
    @property
    def events_channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def events_stream(self) -> str:
        return f"{self.prefix}:events:stream"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:events:cancel"

    @property
    def partner_ask_channel(self) -> str:
        return f"{self.prefix}:partner:ask"

    @property
    def partner_reply_channel(self) -> str:
        return f"{self.prefix}:partner:reply"

    # -- queue, workers, meta ------------------------------------------------------------------
    @property
    def bull_prefix(self) -> str:
        return f"{self.prefix}:bull"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def maintenance_lock(self) -> str:
        return f"{self.prefix}:maintenance:lock"

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def job_stats(self) -> str:
        return f"{self.prefix}:stats:jobs"

    @property
    def tracking_stats(self) -> str:
        return f"{self.prefix}:stats:tracking"
    # -- fleet ---------------------------------------------------------------------------------
    @property
    def fleet_backends(self) -> str:
        return f"{self.prefix}:fleet:backends"

    @property
    def fleet_health(self) -> str:
        return f"{self.prefix}:fleet:health"

    @property
    def fleet_breakers(self) -> str:
        return f"{self.prefix}:fleet:breakers"

    @property
    def fleet_warm(self) -> str:
        return f"{self.prefix}:fleet:warm"

    @property
    def fleet_resting(self) -> str:
        return f"{self.prefix}:fleet:resting"

    @property
    def fleet_nodes(self) -> str:
        return f"{self.prefix}:fleet:nodes"

    @property
    def fleet_node_sets(self) -> str:
        return f"{self.prefix}:fleet:node_sets"

    def lease(self, backend: str) -> str:
        return f"{self.prefix}:fleet:lease:{backend}"

    def health_claim(self, backend: str) -> str:
        return f"{self.prefix}:fleet:check:{backend}"

    @property
    def fleet_channel(self) -> str:
        return f"{self.prefix}:fleet:changed"

    @property
    def slots_channel(self) -> str:
        return f"{self.prefix}:fleet:slots"

    # -- uploads -------------------------------------------------------------------------------
    def upload(self, upload_id: str) -> str:
        return f"{self.prefix}:upload:{upload_id}"

    def upload_hash(self, owner: str, blake3_hex: str) -> str:
        """The owner is percent-encoded, like in ``idempotency``."""
        return f"{self.prefix}:upload:hash:{quote(owner, safe='')}:{blake3_hex}"

    @property
    def blobs_held(self) -> str:
        return f"{self.prefix}:blobs:held"
