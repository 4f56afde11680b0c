"""Which packets the decoder needs, decided from the demuxer's facts before any decoding.

Every packet of the video stream is demuxed (cheap: no pixels), so the stream's frame count
and every frame's presentation time are known exactly; only the packets that a sample needs
reach the decoder. Each packet gets one of three actions:

- ``DECODE``: it may be a sample.
- ``DECODE_IF_REFERENCE``: it is certainly not a sample, but a sample later in its group of
  pictures (GOP) may be predicted from it. It goes to the decoder with ``skip_frame`` set to
  non-reference: the decoder drops it only when no other frame refers to it, so skipping is
  safe by the codec's own account.
- ``DROP``: not a sample and nothing that is a sample depends on it: the rest of a GOP after
  its last sample, and whole GOPs without one. Decoding restarts at the next keyframe that
  leads to a sample (drained and flushed first). This is the keyframe seek, made on the
  packets the demuxer already read rather than by seeking the file: frame numbers and times
  stay exact, and it works the same for containers without an index (MPEG-TS, raw streams).

"Certainly not a sample" needs only facts already read: a frame is not a sample when an
earlier frame is known to fall in the same sample slot (see ``framescale.worker.sampling``).
A frame's predecessor in presentation order is almost always demuxed before it; when it is
not known, the packet counts as a possible sample, which costs time, never a wrong frame.

Packets are planned a GOP at a time, once the next GOP has begun (its leading pictures, the
frames shown before its keyframe, can be predicted from the end of this one): the lookahead
is about one GOP, bounded in packets and bytes. Past the bound (a stream with keyframes
minutes apart) packets are planned conservatively: nothing is dropped.
"""

from __future__ import annotations

import enum
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

# The planner waits for this many packets of the next GOP before planning the current one:
# leading pictures come right after their keyframe in decode order, a few frames at most.
LEADING_WINDOW = 16
# Bounds on what is held back: a GOP longer than this is planned without dropping.
MAX_LOOKAHEAD_PACKETS = 1200
MAX_LOOKAHEAD_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


class Action(enum.Enum):
    DECODE = "decode"
    DECODE_IF_REFERENCE = "decode-if-reference"
    DROP = "drop"


@dataclass(frozen=True)
class PacketFacts:
    """What the demuxer says about one packet of the video stream."""

    pts: int | None  # presentation time in stream ticks; None when the container has none
    keyframe: bool
    size: int
    # The container marks it as not to be shown (pre-roll before an edit list's start): it is
    # decoded when it is a reference but is no frame of the video.
    discard: bool = False


@dataclass(frozen=True)
class Planned(Generic[T]):
    packet: T
    facts: PacketFacts
    action: Action
    # Packets before this one were dropped: drain and flush the decoder before sending it.
    restart: bool = False


class Timeline:
    """Every frame's presentation time as the demuxer found them, sorted (ticks)."""

    def __init__(self) -> None:
        self._ticks = array("q")
        self.origin: int | None = None  # the first frame's pts; times count from it

    def add(self, pts: int) -> None:
        ticks = self._ticks
        if not ticks or pts >= ticks[-1]:
            ticks.append(pts)  # the usual case: near the end, in order
        else:
            ticks.insert(bisect_left(ticks, pts), pts)

    def __len__(self) -> int:
        return len(self._ticks)

    def index_of(self, pts: int) -> int:
        """The frame's number in presentation order (frames with an earlier time before it)."""
        return bisect_left(self._ticks, pts)

    def before(self, pts: int) -> int | None:
        """The latest known frame time earlier than ``pts``."""
        position = bisect_left(self._ticks, pts)
        return self._ticks[position - 1] if position else None

    def first(self) -> int | None:
        return self._ticks[0] if self._ticks else None

    def ticks(self) -> array[int]:
        return self._ticks


class PacketPlanner(Generic[T]):
    """Feeds packets in decode order; returns them planned, in the same order, a GOP at a time.

    ``slot`` maps ticks since the first frame to a sample slot (``SampleClock.slot``); with
    ``keyframes_only`` there is no slot: the samples are the keyframes, everything else drops.
    """

    def __init__(
        self,
        slot: Callable[[int], int] | None,
        *,
        keyframes_only: bool = False,
        intra_only: bool = False,
        max_packets: int = MAX_LOOKAHEAD_PACKETS,
        max_bytes: int = MAX_LOOKAHEAD_BYTES,
    ) -> None:
        if slot is None and not keyframes_only:
            raise ValueError("a sample slot function is needed unless only keyframes are sampled")
        self.slot = slot
        self.keyframes_only = keyframes_only
        # Keyframe flags are trusted for dropping only when they mean something: the codec has
        # intra frames only, or the stream has shown non-key packets too (a container that
        # flags every packet of an inter codec as a keyframe would otherwise lose references).
        self.intra_only = intra_only
        self._seen_inter = False
        self.timeline = Timeline()
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._gops: deque[list[tuple[T, PacketFacts]]] = deque()
        self._held_packets = 0
        self._held_bytes = 0
        self._dropping = False
        self.untimed = False  # some packet had no timestamp: nothing is skipped from then on
        self.counts = {action: 0 for action in Action}

    # ------------------------------------------------------------------ input

    def push(self, packet: T, facts: PacketFacts) -> list[Planned[T]]:
        if facts.pts is None and not facts.discard:
            self.untimed = True
        elif facts.pts is not None and not facts.discard:
            self.timeline.add(facts.pts)
        if not facts.keyframe:
            self._seen_inter = True
        if facts.keyframe or not self._gops:
            self._gops.append([])
        self._gops[-1].append((packet, facts))
        self._held_packets += 1
        self._held_bytes += facts.size
        out: list[Planned[T]] = []
        # A GOP is planned once the next one has shown its leading pictures.
        while len(self._gops) >= 3 or (len(self._gops) == 2 and len(self._gops[1]) >= LEADING_WINDOW):
            out.extend(self._plan_gop(self._gops.popleft(), self._gops[0]))
        if self._held_packets > self.max_packets or self._held_bytes > self.max_bytes:
            out.extend(self._plan_conservatively())
        return out

    def finish(self) -> list[Planned[T]]:
        """The end of the stream: plan what is held back."""
        out: list[Planned[T]] = []
        while self._gops:
            gop = self._gops.popleft()
            out.extend(self._plan_gop(gop, self._gops[0] if self._gops else None, last=not self._gops))
        return out

    # ------------------------------------------------------------------ planning

    def _start(self) -> None:
        if self.timeline.origin is None:
            # Planned only once a whole GOP and the start of the next are known, so the
            # smallest time seen is the first frame's (later GOPs show later frames).
            self.timeline.origin = self.timeline.first()

    def may_be_sample(self, facts: PacketFacts) -> bool:
        """False only when the packet is certainly no sample (by the frames known so far)."""
        if facts.discard:
            return False
        if self.keyframes_only:
            return facts.keyframe
        if facts.pts is None or self.untimed or self.timeline.origin is None or self.slot is None:
            return True
        earlier = self.timeline.before(facts.pts)
        if earlier is None:
            return True
        origin = self.timeline.origin
        return self.slot(earlier - origin) < self.slot(facts.pts - origin)

    def _may_drop(self) -> bool:
        return not self.untimed and (self.intra_only or self._seen_inter)

    def _plan_gop(
        self, gop: list[tuple[T, PacketFacts]], following: list[tuple[T, PacketFacts]] | None, *, last: bool = False
    ) -> list[Planned[T]]:
        self._start()
        needed = [self.may_be_sample(facts) for _, facts in gop]
        # The next GOP's leading pictures (shown before its keyframe) may be predicted from
        # this GOP's last frames: when one of them may be a sample, keep this GOP whole.
        if following is not None:
            key = following[0][1].pts
            tail_needed = any(
                facts.pts is None or key is None or (facts.pts < key and self.may_be_sample(facts))
                for _, facts in following[1 : 1 + LEADING_WINDOW]
            )
        else:
            tail_needed = not last  # the future is unknown: keep the tail
        last_needed = len(gop) - 1 if tail_needed else max((i for i, n in enumerate(needed) if n), default=-1)
        return self._emit(gop, needed, last_needed)

    def _plan_conservatively(self) -> list[Planned[T]]:
        """Past the lookahead bound: plan what is held back without dropping anything."""
        self._start()
        out: list[Planned[T]] = []
        while self._gops:
            gop = self._gops.popleft()
            needed = [self.may_be_sample(facts) for _, facts in gop]
            out.extend(self._emit(gop, needed, len(gop) - 1))
        return out

    def _emit(self, gop: list[tuple[T, PacketFacts]], needed: list[bool], last_needed: int) -> list[Planned[T]]:
        may_drop = self._may_drop()
        out: list[Planned[T]] = []
        for position, ((packet, facts), is_needed) in enumerate(zip(gop, needed, strict=True)):
            if is_needed:
                action = Action.DECODE
            elif position <= last_needed or not may_drop:
                action = Action.DECODE_IF_REFERENCE
            else:
                action = Action.DROP
            restart = self._dropping and action is not Action.DROP
            self._dropping = action is Action.DROP
            self._held_packets -= 1
            self._held_bytes -= facts.size
            self.counts[action] += 1
            out.append(Planned(packet, facts, action, restart))
        return out
