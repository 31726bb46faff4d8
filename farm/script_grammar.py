"""Test scripts in the official MLPerf Tiny runner's grammar (``tests_<mode>.yaml``).

A script file maps a benchmark id to its entry::

    kws01:
      name: keyword_spotting
      model: kws01              # the dataset folder (ic02 reads ic01's)
      truth_file: y_labels.csv  # sww01: its truth file (sww_long_test.json)
      script:
        - loop 5:
          - download
          - infer 70 10

Steps are the runner's: ``download`` (the next file), ``infer N W`` (N timed inferences after
W warmups), ``reset S`` (re-arms the runner's S-second watchdog; nothing reaches the DUT),
``loop [K]:`` around steps (no K: one iteration per row of the truth file) and ``stream``
(sww01: play the truth file's wav). The farm runs the shapes the shipped scripts have:
``loop [K]: download; infer N [W] [; reset S]``, and ``stream`` or ``loop: stream``; any
other arrangement is refused with its file and line rather than run differently than the
official runner would.

This module knows only the grammar; which benchmark and mode an entry may serve is
``farm.scripts``' and ``farm.catalog``'s business. Nothing here opens a file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml

ScriptMode = Literal["performance", "accuracy", "energy"]

#: The largest N, W and K a script may give (a board must not be kept busy for ever).
MAX_COUNT = 1 << 24
#: The longest watchdog a ``reset`` step may arm, seconds.
MAX_RESET_S = 3600
_ENTRY_KEYS = ("name", "model", "truth_file", "script")
#: ASCII digits only (``str.isdigit`` takes superscripts ``int`` cannot read), and few enough
#: that ``int`` never meets its length limit.
_WHOLE = re.compile(r"[0-9]{1,12}")


class ScriptSyntaxError(ValueError):
    """A script file the farm cannot run; one ``FILE:LINE: message`` per problem."""


@dataclass(frozen=True, slots=True)
class Script:
    """One mode's script: ``loop [K]: download; infer N W [; reset S]``, or sww01's
    ``stream`` (``stream`` names its truth file; ``loop``, ``iterations`` and ``warmups`` are
    then the one stream the runner records, as it does: 1, 1, 0)."""

    mode: ScriptMode
    loop: int | None
    """Loop count K; ``None`` means one iteration per row (ad01: per window of every row)."""
    iterations: int
    """``N`` of ``infer N W``."""
    warmups: int
    """``W`` of ``infer N W``."""
    reset_s: int | None = None
    """``reset S``: re-arms the official runner's host-side S-second watchdog each
    iteration; it sends nothing to the DUT."""
    stream: str | None = None
    """sww01: the truth file whose wav files a ``stream`` step plays."""
    sized: bool = True
    """Whether the farm sizes N per board (its default scripts: every timed window 10-30 s,
    docs/measurement.md#window-sizing) or runs N as written (a user's test script)."""
    source: str | None = None
    """Where a user's script came from: ``FILE sha256:HEX``; ``None`` for the defaults."""

    @property
    def infer(self) -> str:
        """The DUT command, e.g. ``infer 70 10``."""
        return f"infer {self.iterations} {self.warmups}"

    def text(self) -> str:
        """One-line rendering of the script for logs, e.g. ``loop 5: download; infer 20 5``
        (sww01: ``stream sww_long_test.json``)."""
        if self.stream is not None:
            return f"stream {self.stream}"
        head = "loop" if self.loop is None else f"loop {self.loop}"
        steps = ["download", self.infer]
        if self.reset_s is not None:
            steps.append(f"reset {self.reset_s}")
        return f"{head}: " + "; ".join(steps)

    def same_steps(self, other: Script) -> bool:
        """Whether both loop as often, warm up as much and stream the same file (N aside:
        the official rules let a submitter size N)."""
        return (self.loop, self.warmups, self.reset_s, self.stream) == (
            other.loop,
            other.warmups,
            other.reset_s,
            other.stream,
        )


@dataclass(frozen=True, slots=True)
class ScriptEntry:
    """One benchmark's entry of a script file."""

    key: str
    """The benchmark id the entry is filed under (``kws01``)."""
    line: int
    model: str
    """The dataset folder the runner reads (``ic01`` for ic02)."""
    truth_file: str
    script: Script


def parse_script_file(
    data: Any, node: yaml.Node, where: str, mode: ScriptMode, *, sized: bool, source: str | None
) -> dict[str, ScriptEntry]:
    """Every entry of a parsed script file (``data`` and its ``node`` tree from
    ``farm.yaml_config.read_yaml``). ``where`` names the file in messages.

    Raises :class:`ScriptSyntaxError` listing every problem, each with its line.
    """
    problems: list[str] = []

    def fail(at: yaml.Node, message: str) -> None:
        problems.append(f"{where}:{at.start_mark.line + 1}: {message}")

    entries: dict[str, ScriptEntry] = {}
    if not isinstance(node, yaml.MappingNode):
        fail(node, "a script file maps benchmark ids (kws01, ...) to their entries")
        raise ScriptSyntaxError("\n".join(problems))
    for key_node, value in node.value:
        key = str(key_node.value)
        entry = _entry(key, key_node, value, mode, fail, sized=sized, source=source)
        if entry is not None:
            entries[key] = entry
    if problems:
        raise ScriptSyntaxError("\n".join(problems))
    return entries


def _entry(
    key: str,
    key_node: yaml.Node,
    node: yaml.Node,
    mode: ScriptMode,
    fail: Any,
    *,
    sized: bool,
    source: str | None,
) -> ScriptEntry | None:
    if not isinstance(node, yaml.MappingNode):
        fail(node, f"{key}: an entry is a mapping with {', '.join(_ENTRY_KEYS)}")
        return None
    fields: dict[str, yaml.Node] = {}
    for k, v in node.value:
        if k.value not in _ENTRY_KEYS:
            fail(k, f"{key}: unknown key {k.value!r} (known: {', '.join(_ENTRY_KEYS)})")
        fields[str(k.value)] = v
    texts: dict[str, str] = {}
    for name in ("model", "truth_file"):
        v = fields.get(name)
        if v is None:
            fail(node, f"{key}: {name} is missing")
        elif not isinstance(v, yaml.ScalarNode) or not str(v.value).strip():
            fail(v, f"{key}: {name} is a name, not {_kind(v)}")
        else:
            texts[name] = str(v.value).strip()
    if "name" in fields and not isinstance(fields["name"], yaml.ScalarNode):
        fail(fields["name"], f"{key}: name is a text, not {_kind(fields['name'])}")
    steps = fields.get("script")
    if steps is None:
        fail(node, f"{key}: script is missing")
        return None
    script = _script(key, steps, mode, fail, sized=sized, source=source)
    if script is None or len(texts) < 2:
        return None
    if script.stream is not None:
        script = dataclasses.replace(script, stream=texts["truth_file"])
    line = key_node.start_mark.line + 1
    return ScriptEntry(key, line, texts["model"], texts["truth_file"], script)


def _script(
    key: str, node: yaml.Node, mode: ScriptMode, fail: Any, *, sized: bool, source: str | None
) -> Script | None:
    """The script's one top-level step: ``stream``, or a loop around the farm's steps."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        fail(node, f"{key}: script is a list of steps")
        return None
    if len(node.value) > 1:
        fail(
            node.value[1],
            f"{key}: the farm runs one top-level step (a loop, or stream); found {len(node.value)}",
        )
        return None
    top = node.value[0]
    word, args, body = _step(key, top, fail)
    if word is None:
        return None
    if word == "stream":
        if _no_args(key, top, word, args, fail):
            return Script(mode, 1, 1, 0, stream="", sized=sized, source=source)
        return None
    if word != "loop" or body is None:
        fail(top, f"{key}: the script's step is a loop (loop [K]: ...) or stream, not {word!r}")
        return None
    loop = _counts(key, top, word, args, 1, fail)
    if loop is None:
        return None
    return _loop_body(key, top, body, loop[0] if loop else None, mode, fail, sized, source)


def _loop_body(
    key: str,
    loop_node: yaml.Node,
    body: yaml.Node,
    loop: int | None,
    mode: ScriptMode,
    fail: Any,
    sized: bool,
    source: str | None,
) -> Script | None:
    if not isinstance(body, yaml.SequenceNode) or not body.value:
        fail(loop_node, f"{key}: a loop holds a list of steps")
        return None
    words: list[tuple[str, list[str], yaml.Node]] = []
    for item in body.value:
        word, args, inner = _step(key, item, fail)
        if word is None:
            return None
        if inner is not None:
            fail(item, f"{key}: the farm runs no loop inside a loop")
            return None
        words.append((word, args, item))
    names = [w for w, _, _ in words]
    if names == ["stream"]:
        if loop not in (None, 1):
            fail(loop_node, f"{key}: a stream plays its truth file once, not loop {loop}")
            return None
        if _no_args(key, words[0][2], "stream", words[0][1], fail):
            return Script(mode, 1, 1, 0, stream="", sized=sized, source=source)
        return None
    if names not in (["download", "infer"], ["download", "infer", "reset"]):
        fail(
            body,
            f"{key}: a loop holds download, infer N W and an optional reset S, in that order "
            f"(found: {', '.join(names)})",
        )
        return None
    (_, down_args, down_node), (_, infer_args, infer_node) = words[0], words[1]
    if down_args:
        fail(
            down_node,
            f"{key}: download takes no file index here (the farm loads the next file each "
            "iteration, as the shipped scripts do)",
        )
        return None
    counts = _counts(key, infer_node, "infer", infer_args, 2, fail)
    if counts is None:
        return None
    iterations = counts[0] if counts else 1
    warmups = counts[1] if len(counts) > 1 else 0
    if iterations < 1:
        fail(infer_node, f"{key}: infer runs at least 1 timed inference")
        return None
    reset_s: int | None = None
    if len(words) == 3:
        reset = _counts(key, words[2][2], "reset", words[2][1], 1, fail)
        if not reset:
            if reset == []:
                fail(words[2][2], f"{key}: reset takes its watchdog's seconds (reset 20)")
            return None
        reset_s = reset[0]
        if not 1 <= reset_s <= MAX_RESET_S:
            fail(words[2][2], f"{key}: reset {reset_s}: 1 to {MAX_RESET_S} seconds")
            return None
    if loop is not None and loop < 1:
        fail(loop_node, f"{key}: loop {loop} runs nothing")
        return None
    return Script(mode, loop, iterations, warmups, reset_s, sized=sized, source=source)


def _step(key: str, node: yaml.Node, fail: Any) -> tuple[str | None, list[str], yaml.Node | None]:
    """A step's command word, its arguments and (a loop) its body."""
    body: yaml.Node | None = None
    if isinstance(node, yaml.MappingNode):
        if len(node.value) != 1:
            fail(node, f"{key}: a step with a body is one 'loop [K]:' key")
            return None, [], None
        head, body = node.value[0]
        text = head.value if isinstance(head, yaml.ScalarNode) else None
    elif isinstance(node, yaml.ScalarNode):
        text = node.value
    else:
        text = None
    if not isinstance(text, str) or not text.strip():
        fail(node, f"{key}: a step is a command (download, infer N W, reset S, loop [K], stream)")
        return None, [], None
    # The official runner splits on single spaces: a tab or a double space would give it an
    # empty argument (and a crash), so such a step is refused here too.
    word, *args = text.split(" ")
    if "" in args or any(c.isspace() for part in (word, *args) for c in part):
        fail(node, f"{key}: {text!r}: separate a step's words with single spaces")
        return None, [], None
    if word not in ("download", "infer", "reset", "loop", "stream"):
        fail(node, f"{key}: unknown step {word!r} (known: download, infer, reset, loop, stream)")
        return None, [], None
    if word == "loop" and body is None:
        fail(node, f"{key}: loop needs its steps (loop 5: followed by a list)")
        return None, [], None
    if word != "loop" and body is not None:
        fail(node, f"{key}: {word} takes no steps of its own")
        return None, [], None
    return word, args, body


def _counts(
    key: str, node: yaml.Node, word: str, args: list[str], most: int, fail: Any
) -> list[int] | None:
    """A step's whole-number arguments (at most ``most``); ``None`` after reporting."""
    if len(args) > most:
        fail(node, f"{key}: {word} takes at most {most} number{'s' if most > 1 else ''}: {args}")
        return None
    out: list[int] = []
    for arg in args:
        if not _WHOLE.fullmatch(arg):
            fail(node, f"{key}: {word}: {arg!r} is not a whole number")
            return None
        value = int(arg)
        if value > MAX_COUNT:
            fail(node, f"{key}: {word}: {value} is more than {MAX_COUNT}")
            return None
        out.append(value)
    return out


def _no_args(key: str, node: yaml.Node, word: str, args: list[str], fail: Any) -> bool:
    if args:
        fail(node, f"{key}: {word} takes no arguments here (it plays the truth file's wav)")
        return False
    return True


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a value"
