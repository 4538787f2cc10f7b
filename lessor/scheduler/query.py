"""Reading the live projection: runs, actions, trees, listings."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from lessor.core.fold import run_view
from lessor.core.ids import ROOT_ACTION, action_ref, check_id, check_namespace, run_ref
from lessor.core.phases import Phase, run_phase_of
from lessor.errors import UnknownAction
from lessor.leasing.backend import Backend
from lessor.scheduler.values import unpack_value

_INT_FIELDS = ("attempt", "token", "sys_left", "user_left", "priority", "timeout_ms", "expirations",
               "rejected", "created_ms", "deadline_ms", "ttl_ms", "grace_ms", "ready_at_ms", "parent_token")


@dataclass(frozen=True)
class ActionInfo:
    """One action as the live projection has it."""

    namespace: str
    run_id: str
    action_id: str
    task: str
    queue: str
    phase: Phase
    attempt: int
    token: int
    worker: str
    parent: str | None
    error: str | None
    result_bytes: bytes | None
    deadline_ms: int
    created_ms: int
    expirations: int
    rejected: int
    sys_left: int
    user_left: int
    aborting: bool
    traceback: str | None = None   # the last failed attempt's (its tail), if the task raised

    @property
    def result(self):
        """The unpacked output value (None if none)."""
        return unpack_value(self.result_bytes)

    @property
    def ref(self) -> str:
        return action_ref(self.namespace, self.run_id, self.action_id)


@dataclass(frozen=True)
class RunInfo:
    """One run as the live projection has it (its result is its root action's)."""

    namespace: str
    run_id: str
    task: str
    queue: str
    phase: Phase
    created_ms: int
    aborting: bool
    root: ActionInfo | None

    @property
    def done(self) -> bool:
        return self.phase not in (Phase.QUEUED, Phase.RUNNING)

    @property
    def result(self):
        return self.root.result if self.root else None

    @property
    def error(self) -> str | None:
        return self.root.error if self.root else None


@dataclass
class ActionNode:
    """An action and its children: the execution tree of a run."""

    info: ActionInfo
    children: list["ActionNode"] = field(default_factory=list)


def _text(h: dict, name: str) -> str:
    return h.get(name.encode(), b"").decode("utf-8", "replace")


def action_info(h: dict) -> ActionInfo:
    """An ActionInfo from a raw action hash (bytes keys)."""
    ints = {n: int(h.get(n.encode(), b"0") or 0) for n in _INT_FIELDS}
    return ActionInfo(
        namespace=_text(h, "ns"), run_id=_text(h, "run"), action_id=_text(h, "action"),
        task=_text(h, "task"), queue=_text(h, "queue"), phase=Phase(_text(h, "phase")),
        attempt=ints["attempt"], token=ints["token"], worker=_text(h, "worker"),
        parent=_text(h, "parent") or None, error=_text(h, "error") or None,
        traceback=_text(h, "traceback") or None,
        result_bytes=h.get(b"result") or None, deadline_ms=ints["deadline_ms"],
        created_ms=ints["created_ms"], expirations=ints["expirations"], rejected=ints["rejected"],
        sys_left=ints["sys_left"], user_left=ints["user_left"], aborting=h.get(b"aborting") == b"1",
    )


async def get_action(backend: Backend, namespace: str, run_id: str, action_id: str) -> ActionInfo:
    """The live state of one action; UnknownAction if there is none."""
    check_namespace(namespace)
    ref = action_ref(namespace, run_id, action_id)
    h = await backend.redis.hgetall(backend.keys_for_run(namespace, run_id).action(ref))
    if not h:
        raise UnknownAction(f"no action {ref}: check the run id (`lessor runs`) and the action id")
    return action_info(h)


async def get_run(backend: Backend, namespace: str, run_id: str) -> RunInfo:
    """The live state of one run and its root action; UnknownRun if there is none."""
    from lessor.scheduler.control import UnknownRun

    check_namespace(namespace)
    check_id("run", run_id)
    # A run lives on its root action's hash (core/fold.py run_view): one read gives both.
    root_h = await backend.redis.hgetall(backend.keys_for_run(namespace, run_id).run_root(run_ref(namespace, run_id)))
    run = run_view(root_h)
    if run is None:
        raise UnknownRun(f"no run {namespace}/{run_id}: check the id and --namespace with "
                         f"`lessor runs --namespace {namespace}`")
    return RunInfo(namespace=namespace, run_id=run_id, task=run["task"], queue=run["queue"],
                   phase=Phase(run["phase"]), created_ms=run["created_ms"], aborting=run["aborting"],
                   root=action_info(root_h))


async def run_phases(backend: Backend, namespace: str, run_ids: list[str]) -> dict[str, Phase | None]:
    """Each run's phase (None: no such run), one pipeline: an HGET of each run's root action."""
    pipe = backend.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(backend.keys_for_run(namespace, run_id).run_root(run_ref(namespace, run_id)), "phase")
    return {run_id: run_phase_of(phase) for run_id, phase in zip(run_ids, await pipe.execute())}


async def run_actions(backend: Backend, namespace: str, run_id: str) -> list[ActionInfo]:
    """Every action of a run (live), in creation order."""
    await get_run(backend, namespace, run_id)
    keys = backend.keys_for_run(namespace, run_id)
    # The run's action set holds its children; the root a0 is implied.
    children = await backend.redis.smembers(keys.run_actions(run_ref(namespace, run_id)))
    ids = [ROOT_ACTION] + sorted(a.decode() for a in children)
    pipe = backend.redis.pipeline(transaction=False)
    for action_id in ids:
        pipe.hgetall(keys.action(action_ref(namespace, run_id, action_id)))
    infos = [action_info(h) for h in await pipe.execute() if h]
    return sorted(infos, key=lambda a: (a.created_ms, action_order(a.action_id)))


def action_order(action_id: str) -> tuple:
    """Sort key of action ids in creation order: a0, a0.1, a0.2, ..., a0.10 (numbers, not text)."""
    return tuple(int(p) if p.isdigit() else p for p in action_id.replace("a", "", 1).split("."))


async def tree(backend: Backend, namespace: str, run_id: str) -> ActionNode:
    """The execution tree of a run, rooted at a0."""
    nodes = {a.action_id: ActionNode(a) for a in await run_actions(backend, namespace, run_id)}
    for node in nodes.values():
        if node.info.parent in nodes:
            nodes[node.info.parent].children.append(node)
    return nodes[ROOT_ACTION]


async def _newest_first(backend: Backend, key: str, before: tuple[int, str] | None, chunk: int):
    """(created_ms, run id) of one partition's run index, newest first, strictly before ``before``."""
    max_score = before[0] if before else "+inf"
    offset = 0
    while True:
        rows = await backend.redis.zrevrangebyscore(key, max_score, "-inf", start=offset, num=chunk, withscores=True)
        for run_id, score in rows:
            item = (int(score), run_id.decode())
            if before is None or item < before:
                yield item
        if len(rows) < chunk:
            return
        offset += chunk


async def list_runs(backend: Backend, namespace: str, phase: Phase | str | None = None, limit: int = 50,
                    cursor: str | None = None) -> tuple[list[RunInfo], str | None]:
    """Runs of a namespace, newest first: (page, cursor of the next page or None).

    ``cursor`` is opaque (``created_ms:run_id`` of the last run returned). Each
    partition's index is read in chunks and merged, so a page costs about
    ``limit`` reads per partition, not the whole namespace.
    """
    check_namespace(namespace)
    if limit < 1:
        raise ValueError("limit must be >= 1")
    wanted = Phase(phase) if phase else None
    before = None
    if cursor:
        created, _, run_id = cursor.partition(":")
        if not created.isdigit() or not run_id:
            raise ValueError(f"bad cursor {cursor!r}: pass the cursor a previous page returned")
        before = (int(created), run_id)
    streams = [_newest_first(backend, keys.runs(namespace), before, max(limit, 20))
               for keys in backend.all_keys()]
    heads: list = []
    for i, stream in enumerate(streams):
        item = await anext(stream, None)
        if item is not None:
            heapq.heappush(heads, ((-item[0], _Desc(item[1])), i, item))
    page: list[RunInfo] = []
    while heads:
        _, i, (created, run_id) = heapq.heappop(heads)
        nxt = await anext(streams[i], None)
        if nxt is not None:
            heapq.heappush(heads, ((-nxt[0], _Desc(nxt[1])), i, nxt))
        info = await get_run(backend, namespace, run_id)
        if wanted is None or info.phase is wanted:
            page.append(info)
            if len(page) == limit:
                more = bool(heads)
                return page, f"{created}:{run_id}" if more else None
    return page, None


class _Desc(str):
    """A string that sorts in reverse (for newest-first ties broken by run id, descending)."""

    def __lt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__gt__(self, other)
