"""What state.json holds: the run, and one record per shard attempt.

Per-request outcomes are deliberately absent (a million requests would bloat the ledger):
they live in the raw result files and the sqlite index (ledger/index.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class ShardState(StrEnum):
    PREPARED = "prepared"  # request file written and fsynced
    UPLOADED = "uploaded"  # file_id recorded
    SUBMITTED = "submitted"  # batch_id recorded
    COMPLETED = "completed"  # remote batch terminal; its result files downloaded and checksummed
    MERGED = "merged"  # results parsed and in the index


# Remote batch statuses after which nothing more will happen to a batch.
TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# Remote batch statuses while a batch is queued or running (it holds its tokens in the provider's queue).
RUNNING_STATUSES = frozenset({"validating", "in_progress", "finalizing"})
# The error code of a batch the provider refused because its enqueued-token queue was full.
TOKEN_LIMIT_CODE = "token_limit_exceeded"


@dataclass
class FileRef:
    """A local file the ledger points at; written (and fsynced) before the pointer."""

    path: str  # relative to the run dir
    bytes: int
    sha256: str


@dataclass
class Upload:
    filename: str  # the tag: <run_id>--<shard>--<sha12>--<nonce>.jsonl (no nonce before schema 2)
    intent_at: float  # unix time recorded before the upload was sent
    file_id: str | None = None


@dataclass
class Batch:
    metadata: dict[str, str]  # the tag: batchpipe_run, batchpipe_shard, batchpipe_sha, batchpipe_nonce (schema 2+)
    intent_at: float  # unix time recorded before the create was sent
    id: str | None = None
    status: str | None = None
    request_counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    created_at: int | None = None
    refreshed_at: float | None = None


@dataclass
class Handoff:
    """A shard attempt handed off by `batchpipe export`: a person uploads it and imports its results.

    batchpipe never uploads it nor creates a batch for it (that would be paid twice). Its result
    lines arrive with `batchpipe import`, each file's share of them copied into a piece file
    (data before pointer); once every request has a line (or `import --partial`), the pieces are
    joined into the shard's output file and it is completed.
    """

    exported_at: float
    pieces: list[FileRef] = field(default_factory=list)  # result lines imported so far, one file per import
    received: int = 0  # requests with at least one result line among the pieces

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Handoff:
        return cls(d["exported_at"], [FileRef(**p) for p in d.get("pieces", [])], d.get("received", 0))


@dataclass
class Shard:
    id: str  # "00001.a1": shard 1, attempt 1
    index: int
    attempt: int
    state: ShardState
    file: FileRef
    requests: int
    est_tokens: int  # input tokens, counted at create (what the provider's enqueued-token queue holds)
    upload: Upload | None = None
    batch: Batch | None = None
    outputs: FileRef | None = None  # downloaded output file (None if the batch had none, or it was lost: ops/lost.py)
    errors_file: FileRef | None = None  # downloaded error file (None if the batch had none)
    merged: dict[str, int] | None = None  # {"ok": n, "failed": n, "retried": n}
    retry: str | None = None  # id of the next attempt, which holds this attempt's retryable failures
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier batches of this attempt
    max_output_tokens: int = 0  # sum of the requests' output bounds (for the worst-case cost)
    usage: dict[str, int] | None = None  # {"input_tokens", "output_tokens"} the service reported, once merged
    recut_from: str | None = None  # the shard this one was re-cut from, too big for the provider's queue
    # What this attempt's answers made, counted when it was merged (ops/summary.py): {"answers", "records",
    # "valid", "invalid.<code>": n}. None: merged before it was counted, or not merged yet.
    answers: dict[str, int] | None = None
    # "sync": sent to the regular endpoint (ops/sync.py), no upload and no batch; its result file
    # is the journal of the answers. None: the Batch API.
    mode: str | None = None
    handoff: Handoff | None = None  # exported for a person to upload (ops/handoff.py): never submitted by batchpipe

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shard:
        d = dict(d)
        d["state"] = ShardState(d["state"])
        d["file"] = FileRef(**d["file"])
        for key, kind in (("upload", Upload), ("batch", Batch), ("outputs", FileRef), ("errors_file", FileRef)):
            if d.get(key) is not None:
                d[key] = kind(**d[key])
        if d.get("handoff") is not None:
            d["handoff"] = Handoff.from_dict(d["handoff"])
        return cls(**d)


@dataclass
class Run:
    id: str
    created_at: float
    batchpipe_version: str
    config_sha256: str
    input: dict[str, Any]  # {"path", "bytes", "sha256", "rows"}
    endpoint: str
    model: str
    requests: int
    # Random, drawn at create: in every tag, so that a run id used again (the run dir removed, the
    # same job in another runs dir) never takes another run's files or batches for its own.
    nonce: str = ""
    base_url: str | None = None  # the service the run's files and batches live at, recorded with the first one
    output: FileRef | None = None
    result_counts: dict[str, int] | None = None  # {"ok": n, "failed": n} of the written output
    budget_usd: float | None = None  # limits.budget_usd at create; `submit --budget` changes it
    canary: str | None = None  # the canary shard's id (submit --canary N)
    canary_state: str | None = None  # pending | passed | failed
    hold: str | None = None  # why `tick` must not submit (e.g. "cancelled at ..."); a person's submit/run clears it
    # limits.target: the valid records counted when it was reached (None: not reached, or no target).
    # From then on nothing more is sent, running batches are cancelled, unsent shards are not needed.
    target_reached: int | None = None
    # "sync" once the run sends to the regular endpoint (`mode: sync` or `run --sync`): every later
    # pass, `tick` and retries included, does too, so an answered request is never sent again as a batch.
    mode: str = "batch"
    # Result files brought in by `batchpipe import`, as {"name", "sha256", "bytes", "lines", "imported_at"}:
    # a file imported again (same sha256) is recognised and skipped.
    imports: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        d = dict(d)
        if d.get("output") is not None:
            d["output"] = FileRef(**d["output"])
        return cls(**d)


@dataclass
class RunState:
    run: Run
    shards: list[Shard]

    def to_dict(self) -> dict[str, Any]:
        return {"run": asdict(self.run), "shards": [asdict(s) for s in self.shards]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        return cls(run=Run.from_dict(d["run"]), shards=[Shard.from_dict(s) for s in d["shards"]])

    def shard(self, shard_id: str) -> Shard:
        for s in self.shards:
            if s.id == shard_id:
                return s
        raise KeyError(shard_id)
