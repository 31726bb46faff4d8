"""The fuzz corpus, without a farm: every hand-written payload is judged as written, whatever ids
it is aimed at, and every reason ingest or an agent can reject a message for has one."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from controller.ingest.parse import LABELS
from tests.fuzz.fuzzing import INGEST, World, corpus, draw_pools, fuzz_plan, instantiate

ROOT = Path(__file__).parents[2]
WORLD = World(
    boards={"pi-a": ["ic-1", "ic-2"], "pi-b": ["ic-3"]},
    started={"pi-a": 1_700_000_000.5, "pi-b": 1_700_000_001.5},
    closed={
        "sw-1-r000": ("pi-a", "ic-1", "sw-1-r000-a1"),
        "sw-1-r001": ("pi-a", "ic-2", "sw-1-r001-a1"),
        "sw-1-r002": ("pi-b", "ic-3", "sw-1-r002-a1"),
    },
    live={"sw-2-r000": ("pi-a", "ic-1"), "sw-2-r001": ("pi-b", "ic-3")},
)
#: Agent rejections no forged command can reach: ``internal`` is a bug, ``refused`` needs the
#: controller to have refused the agent first.
UNREACHABLE = {"internal", "refused"}


def reasons(path: str, call: str) -> set[str]:
    """The reasons named in ``call("...")`` in a source file or package."""
    files = sorted((ROOT / path).glob("*.py")) if (ROOT / path).is_dir() else [ROOT / path]
    pattern = re.compile(re.escape(call) + r'\(\s*"([a-z_]+)"')
    return {m for f in files for m in pattern.findall(f.read_text())}


def test_every_corpus_payload_is_judged_as_written_whatever_it_aims_at() -> None:
    rng = random.Random(1)
    for n in range(20):
        for template, fate in corpus():
            message = instantiate(WORLD, template, rng, n)
            assert message is not None and message.fates == {fate}, (template, fate, message)


def test_the_corpus_has_every_reason() -> None:
    fates = Counter(fate for _, fate in corpus())
    ingest = reasons("controller/ingest", "Rejected") | {
        f"invalid_{label}" for label in LABELS.values()
    }
    ingest.discard("invalid_")  # the f-string that makes the ones above
    assert ingest <= {f.removeprefix("rejected_") for f in fates}, ingest
    assert {f"cleared_{LABELS[k]}" for k in ("status", "board_status")} <= set(fates)
    agent = reasons("agent/service.py", "self._reject") - UNREACHABLE
    assert {f"commands_rejected_{r}" for r in agent} <= set(fates), agent
    assert {"commands_duplicate", "commands_failed"} <= set(fates)


def test_a_plan_sends_nothing_that_would_be_accepted() -> None:
    plan = list(fuzz_plan(WORLD, draw_pools(600, 3)))
    assert len(plan) == 600
    sent = [m for m in plan if m is not None]
    assert sum(m.to == INGEST for m in sent) > 300 and sum(m.to != INGEST for m in sent) > 100
    # Every message has its one fate, and the drawn ones reach beyond the corpus's reasons.
    assert all(len(m.fates) == 1 for m in sent)
    assert len({f for m in sent for f in m.fates}) >= 25
