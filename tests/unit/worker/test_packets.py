"""Packet planning: no sample, and nothing a sample is predicted from, ever misses the decoder.

Streams are generated in decode order the way encoders lay them out (I/P references, B-frames
shown before the reference that follows them, open GOPs whose leading pictures are shown before
their keyframe), with random GOP lengths, frame rates and sample rates. For every stream the
true samples are computed from all frame times at once, with the rule's own words, and
compared with the plan.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from fractions import Fraction

import pytest

from framescale.worker.packets import Action, PacketFacts, PacketPlanner, Planned
from framescale.worker.sampling import SampleClock

TIME_BASE = Fraction(1, 90000)


@dataclass(frozen=True)
class Packet:
    number: int  # position in decode order
    gop: int
    frame_type: str  # I, P, B (a B may be a reference in a pyramid: "b" is non-reference)
    leading: bool = False  # an open GOP's picture shown before its keyframe


def make_stream(rng: random.Random, *, open_gop: bool) -> tuple[list[Packet], list[PacketFacts]]:
    """Decode-order packets with presentation times; variable frame rate included."""
    packets: list[Packet] = []
    display: list[tuple[int, int]] = []  # (decode number, display slot)
    slot = 0
    for gop in range(rng.randint(1, 6)):
        length = rng.randint(1, 40)
        bframes = rng.choice([0, 2, 3])
        # Leading pictures (open GOP): B-frames after the keyframe in decode order, shown before it.
        leading = rng.randint(1, 2) if open_gop and gop > 0 and bframes else 0
        base = slot + leading
        packets.append(Packet(len(packets), gop, "I"))
        display.append((packets[-1].number, base))
        for lead in range(leading):
            packets.append(Packet(len(packets), gop, "b", leading=True))
            display.append((packets[-1].number, slot + lead))
        position = 1
        while position < length:
            run = min(bframes, length - position - 1)
            packets.append(Packet(len(packets), gop, "P"))
            display.append((packets[-1].number, base + position + run))
            for b in range(run):
                packets.append(Packet(len(packets), gop, "B" if b == run // 2 and run == 3 else "b"))
                display.append((packets[-1].number, base + position + b))
            position += run + 1
        slot = base + length
    # Display slots → times, with the interval changing now and then (VFR).
    by_slot = sorted(display, key=lambda item: item[1])
    times: dict[int, int] = {}
    now = rng.randint(0, 5) * 3000  # not starting at zero
    interval = rng.choice([3000, 3003, 9000])
    for number, _ in by_slot:
        times[number] = now
        if rng.random() < 0.05:
            interval = rng.choice([1500, 3000, 3003, 9000, 90000 * 20])
        now += interval
    facts = [PacketFacts(times[p.number], p.frame_type == "I", 1000) for p in packets]
    return packets, facts


def true_samples(facts: list[PacketFacts], sample_fps: float) -> set[int]:
    """Decode numbers of the samples: for each k, the first frame (by time) at or after k / r."""
    ordered = sorted(range(len(facts)), key=lambda n: facts[n].pts or 0)
    start = facts[ordered[0]].pts or 0
    rate = Fraction(sample_fps).limit_denominator(1_000_000)
    out: set[int] = set()
    last_time = (facts[ordered[-1]].pts or 0) - start
    k = 0
    while k / rate <= last_time * TIME_BASE:
        due = k / rate
        out.add(next(n for n in ordered if ((facts[n].pts or 0) - start) * TIME_BASE >= due))
        # Jump straight to the next due time after this frame (long gaps, slow rates).
        k = max(k + 1, int(((facts[max(out, key=lambda n: facts[n].pts or 0)].pts or 0) - start) * TIME_BASE * rate))
    return out


def plan(facts: list[PacketFacts], planner: PacketPlanner[int]) -> list[Planned[int]]:
    out: list[Planned[int]] = []
    for number, fact in enumerate(facts):
        out.extend(planner.push(number, fact))
    out.extend(planner.finish())
    return out


def references_of(packets: list[Packet], number: int) -> set[int]:
    """What a frame may be predicted from: everything before it in its GOP (decode order), and for
    a leading picture the whole previous GOP too."""
    packet = packets[number]
    before = {p.number for p in packets[:number] if p.gop == packet.gop}
    if packet.leading:
        before |= {p.number for p in packets if p.gop == packet.gop - 1}
    return before


@pytest.mark.parametrize("open_gop", [False, True])
@pytest.mark.parametrize("seed", range(60))
def test_no_sample_or_its_references_is_ever_dropped(seed: int, open_gop: bool) -> None:
    rng = random.Random(seed * 2 + open_gop)
    packets, facts = make_stream(rng, open_gop=open_gop)
    sample_fps = rng.choice([0.05, 0.2, 1.0, 2.5, 7.0, 30.0, 240.0])
    planner: PacketPlanner[int] = PacketPlanner(SampleClock(sample_fps, TIME_BASE).slot)
    planned = plan(facts, planner)
    assert [p.packet for p in planned] == list(range(len(facts))), "every packet is planned once, in order"
    action = {p.packet: p.action for p in planned}
    samples = true_samples(facts, sample_fps)
    violations = [n for n in samples if action[n] is not Action.DECODE]
    violations += [
        (n, r) for n in samples for r in references_of(packets, n) if action[r] is Action.DROP
    ]  # a dropped reference would corrupt the sample
    assert violations == [], (sample_fps, violations[:5])
    # A restart (drain and flush) only ever lands on a keyframe, right after a drop.
    for previous, current in itertools.pairwise(planned):
        if current.restart:
            assert current.facts.keyframe and previous.action is Action.DROP


def test_sparse_samples_drop_whole_gops_and_skip_non_reference_frames() -> None:
    # 10 GOPs of 30 frames at 30 fps (1 s each), sampled every 3 s.
    packets, facts = [], []
    for number in range(300):
        facts.append(PacketFacts(number * 3000, number % 30 == 0, 1000))
    planner: PacketPlanner[int] = PacketPlanner(SampleClock(1 / 3, TIME_BASE).slot)
    planned = plan(facts, planner)
    decoded = [p.packet for p in planned if p.action is Action.DECODE]
    assert decoded == [0, 90, 180, 270]
    # GOPs 1, 2, 4, 5, 7, 8 never reach the decoder; each sampled GOP is cut after its sample.
    dropped = {p.packet for p in planned if p.action is Action.DROP}
    assert dropped == set(range(300)) - {0, 90, 180, 270}
    assert [p.packet for p in planned if p.restart] == [90, 180, 270]
    del packets


def test_frames_between_samples_in_a_gop_may_be_skipped_by_the_decoder_but_not_dropped() -> None:
    facts = [PacketFacts(number * 3000, number == 0, 1000) for number in range(60)]  # one GOP, 2 s
    planned = plan(facts, PacketPlanner(SampleClock(1.0, TIME_BASE).slot))
    actions = [p.action for p in planned]
    assert actions[0] is Action.DECODE and actions[30] is Action.DECODE
    assert set(actions[1:30]) == {Action.DECODE_IF_REFERENCE}  # frame 30 may be predicted from them
    assert set(actions[31:]) == {Action.DROP}  # nothing after the last sample needs them


def test_keyframes_mode_decodes_keyframes_only() -> None:
    facts = [PacketFacts(number * 3000, number % 25 == 0, 1000) for number in range(100)]
    planned = plan(facts, PacketPlanner(None, keyframes_only=True))
    assert [p.packet for p in planned if p.action is Action.DECODE] == [0, 25, 50, 75]
    assert {p.action for p in planned if not p.facts.keyframe} == {Action.DROP}


def test_every_packet_flagged_key_in_an_inter_codec_is_not_trusted_for_dropping() -> None:
    # A container that calls every packet a keyframe: dropping by those flags could lose references.
    facts = [PacketFacts(number * 3000, True, 1000) for number in range(90)]
    planned = plan(facts, PacketPlanner(SampleClock(1.0, TIME_BASE).slot))
    assert Action.DROP not in {p.action for p in planned}
    intra = plan(facts, PacketPlanner(SampleClock(1.0, TIME_BASE).slot, intra_only=True))
    assert [p.packet for p in intra if p.action is not Action.DROP] == [0, 30, 60]  # MJPEG-like: safe


def test_packets_without_timestamps_are_all_decoded() -> None:
    facts = [PacketFacts(None, number % 10 == 0, 1000) for number in range(40)]
    planned = plan(facts, PacketPlanner(SampleClock(1.0, TIME_BASE).slot))
    assert {p.action for p in planned} == {Action.DECODE}


def test_the_lookahead_is_bounded_and_a_long_gop_is_planned_without_drops() -> None:
    facts = [PacketFacts(number * 3000, number == 0, 1000) for number in range(500)]  # one 500-frame GOP
    planner: PacketPlanner[int] = PacketPlanner(SampleClock(1.0, TIME_BASE).slot, max_packets=100)
    held = 0
    planned: list[Planned[int]] = []
    for number, fact in enumerate(facts):
        planned.extend(planner.push(number, fact))
        held = max(held, number + 1 - len(planned))
    planned.extend(planner.finish())
    assert held <= 101
    samples = [p.packet for p in planned if p.action is Action.DECODE]
    assert samples == list(range(0, 500, 30))
    assert [p.packet for p in planned] == list(range(500))


def test_frame_numbers_and_the_first_frame_come_from_all_packets() -> None:
    facts = [PacketFacts(pts, pts == 3000, 10) for pts in (3000, 12000, 6000, 9000, 15000)]  # I P B B P
    planner: PacketPlanner[int] = PacketPlanner(SampleClock(1.0, TIME_BASE).slot)
    plan(facts, planner)
    assert planner.timeline.origin == 3000
    assert [planner.timeline.index_of(pts) for pts in (3000, 6000, 9000, 12000, 15000)] == [0, 1, 2, 3, 4]
    assert len(planner.timeline) == 5
