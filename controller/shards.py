"""Sharded accuracy runs: one accuracy run's inputs split across boards that run the same
firmware, and merged back into one run.

``farm submit --shard`` turns the accuracy runs a sweep would make of one benchmark on K
boards that will run the same firmware into one **parent** run (the sweep's run, where the
results go) and K **shards**, one per board. A shard is an ordinary run of the controller:
it waits for its board's turn, is leased, dispatched, followed, retried and resumed like any
other. Its run command lists the other shards' seqs as already stored, so its agent runs only
the shard's own contiguous range. Its score job verifies its samples against its agent's
digest, as for any run; the last shard to be verified merges every shard's samples and scores
them as the parent run, through the code that scores a single-board run. So the parent's
numbers and official files are the ones one board would give with the same outputs.

Outputs of other firmware are other results: the shards' firmware identities (the image's
SHA-256, the DUT's profile and name, model and build) must agree, or the parent fails naming
the shard that differs. A shard that fails or is cancelled ends its parent the same way and
cancels the other shards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from controller import keys
from controller.store import get_run, run_firmware, samples, set_run
from farm.logs import get_logger

log = get_logger("controller.shards")

#: The firmware fields shards must agree on: the image's content, not its file name (two
#: agents may name one image differently), and the agent's software version may differ.
SAME_FIRMWARE = ("model", "build", "sha256", "profile", "name")
#: Who merges a parent: the first verified shard to find every shard verified.
_MERGER_TTL_S = 7 * 86400


def split(total: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous seq ranges covering ``0..total``, their sizes within one."""
    return [(total * k // count, total * (k + 1) // count) for k in range(count)]


def excluded(own: tuple[int, int], total: int) -> list[tuple[int, int]]:
    """The seqs of ``0..total`` outside a shard's own range: its run command lists them as
    stored, so its agent does not run them."""
    start, stop = own
    return [r for r in ((0, start), (stop, total)) if r[0] < r[1]]


def own_range(run: Mapping[str, str]) -> tuple[int, int] | None:
    """A shard run's own seq range, or None for a run that is not a shard."""
    text = run.get("shard_range")
    if not text:
        return None
    start, stop = json.loads(text)
    return int(start), int(stop)


def union(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Two lists of disjoint half-open ranges as one sorted list, touching ranges joined."""
    found: list[tuple[int, int]] = []
    for start, stop in sorted([*a, *b]):
        if found and found[-1][1] >= start:
            found[-1] = (found[-1][0], max(found[-1][1], stop))
        else:
            found.append((start, stop))
    return found


def firmware_mismatch(shards: Mapping[str, Mapping[str, str]]) -> str | None:
    """Why the shards' outputs cannot make one run (they ran different firmware), or None."""
    seen: dict[str, Any] | None = None
    first = ""
    for shard_id, run in shards.items():
        firmware = run_firmware(run) or {}
        identity = {k: firmware.get(k) for k in SAME_FIRMWARE}
        if seen is None:
            seen, first = identity, shard_id
        elif identity != seen:
            differs = [k for k in SAME_FIRMWARE if identity[k] != seen[k]]
            return (
                f"shard {shard_id} on {run.get('board')} ran other firmware than shard {first} "
                f"({', '.join(f'{k} {identity[k]!r} vs {seen[k]!r}' for k in differs)})"
            )
    return None


def shard_verified(client: redis.Redis, shard_id: str, parent_id: str) -> bool:
    """Record that a shard's samples were verified; whether this shard merges the parent (every
    shard is verified and no other shard took the merge). Safe to repeat: a score job run
    again after its worker died finds itself the merger still."""
    shard_ids = json.loads(client.hget(keys.run(parent_id), "shards") or "[]")
    done_key = keys.run_verified(parent_id)
    with client.pipeline() as pipe:
        pipe.sadd(done_key, shard_id)
        pipe.scard(done_key)
        pipe.expire(done_key, _MERGER_TTL_S)
        _, verified, _ = pipe.execute()
    if verified < len(shard_ids):
        return False
    merger = keys.run_merger(parent_id)
    client.set(merger, shard_id, nx=True, ex=_MERGER_TTL_S)
    return bool(client.get(merger) == shard_id)


def merged_records(
    client: redis.Redis, parent: Mapping[str, str]
) -> tuple[dict[str, dict[str, str]], list[dict[str, Any]]]:
    """Every shard's run hash and all their stored sample records (seqs are the parent's:
    each shard ran its own range of them)."""
    shard_ids = json.loads(parent["shards"])
    shards = {shard_id: get_run(client, shard_id) for shard_id in shard_ids}
    records: list[dict[str, Any]] = []
    for shard_id in shard_ids:
        records.extend(samples(client, shard_id).values())
    return shards, records


def shard_runs(
    client: redis.Redis, runs: Sequence[Mapping[str, str]]
) -> dict[str, list[dict[str, str]]]:
    """The shards' run hashes of each sharded run among ``runs`` (by the run's id), read in
    one round trip."""
    wanted = [(run["id"], json.loads(run["shards"])) for run in runs if run.get("shards")]
    with client.pipeline(transaction=False) as pipe:
        for _, shard_ids in wanted:
            for shard_id in shard_ids:
                pipe.hgetall(keys.run(shard_id))
        found = iter(pipe.execute())
    return {run_id: [next(found) for _ in shard_ids] for run_id, shard_ids in wanted}


def shard_ended(client: redis.Redis, shard: Mapping[str, str], state: str) -> str | None:
    """A shard ended in ``state`` other than completed: the parent to end the same way (it
    is ``failed`` or ``cancelled`` now) and the other shards to cancel; the reason the parent
    gets, or None if the parent had ended already."""
    parent_id = shard["shard_of"]
    parent = get_run(client, parent_id)
    if not parent or parent.get("state") in keys.TERMINAL:
        return None
    for other in json.loads(parent.get("shards") or "[]"):
        if other != shard["id"] and client.hget(keys.run(other), "state") not in keys.TERMINAL:
            set_run(client, other, cancel="1")
    why = shard.get("reason") or state
    log.warning("shard_ended", shard=shard["id"], parent=parent_id, state=state)
    return f"shard {shard['id']} on {shard.get('board')} {state}: {why}"
