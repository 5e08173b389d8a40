"""Voice-note transcoding benchmark (not a timed test; prints its figures).

V1: the time to make a voice note (OGG/Opus, 48 kHz mono, 32 kbit/s) of a typical provider
    MP3: a 30 s tone at 44.1 kHz mono, made with PyAV's libmp3lame (the size of a 30 s
    BambiSleep reply). Timed both as the blocking transcode alone and through
    ``tgmux.audio.to_voice_note`` (its thread pool, from the event loop); best and median of
    ``--rounds``.
V2: the event loop while transcodes run: the longest gap between 5 ms ticks of a heartbeat
    task during two concurrent transcodes (the loop must not be blocked).

Run: python bench/bench_voice.py [--seconds 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time

import av

from tgmux.audio import to_voice_note, tone_mp3, transcode_to_voice_note


async def loop_gap_during(mp3: bytes, transcodes: int) -> float:
    """Longest gap (s) between heartbeat ticks while ``transcodes`` run at once."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.gather(*(to_voice_note(mp3) for _ in range(transcodes)))
    done.set()
    await beat
    return max(gaps) - 0.005


async def main(seconds: float, rounds: int) -> None:
    mp3 = tone_mp3(seconds)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, PyAV {av.__version__} (FFmpeg "
          f"{av.ffmpeg_version_info}), {platform.system()} {platform.release()}")
    print(f"input: {seconds:g} s MP3, 44.1 kHz mono, {len(mp3)} bytes")
    blocking: list[float] = []
    via_loop: list[float] = []
    note = None
    for _ in range(rounds):
        started = time.perf_counter()
        note = transcode_to_voice_note(mp3, seconds + 5)
        blocking.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert await to_voice_note(mp3, max_seconds=seconds + 5) is not None
        via_loop.append(time.perf_counter() - started)
    assert note is not None
    print(f"output: {note.seconds:.2f} s OGG/Opus, {len(note.data)} bytes")
    for label, times in (("V1 transcode (blocking, in this thread)", blocking),
                         ("V1 to_voice_note (thread pool, from the loop)", via_loop)):
        print(f"{label}: best {min(times) * 1000:.0f} ms, median "
              f"{statistics.median(times) * 1000:.0f} ms "
              f"({seconds / statistics.median(times):.0f}× real time)")
    gap = await loop_gap_during(mp3, 2)
    print(f"V2 longest event-loop stall during 2 concurrent transcodes: {gap * 1000:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds))
