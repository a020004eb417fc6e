"""Instructions per gateway answer: llmsession's server and the bare forwarder under callgrind.

Run:  .venv/bin/python bench/gateway_instructions.py [--stores sqlite,postgresql,redis]
      [--targets forwarder,llmsession] [--kind openai] [--answers 20,80]

Time on a shared machine is noisy; instruction counts are not: valgrind's
callgrind counts the user-space instructions of the server process (every
thread), whatever else runs beside it. Each target (the forwarder of
``bench/gateway.py``, and llmsession on each store) is started under callgrind
three times, on fresh data, in front of the same fake provider (not measured),
and answers two clients holding the conversations of ``bench/gateway.py``:

- A: ``small`` body answers, then ``small`` streamed ones;
- B: ``large`` body answers, then ``small`` streamed ones;
- C: ``small`` body answers, then ``large`` streamed ones.

So a body answer costs (B - A) / (large - small) instructions and a streamed one
(C - A) / (large - small): start-up, imports, the first connections and the
stop cancel out. A target's figure is then read against the forwarder's, the
floor of any Python proxy (system calls and the kernel's work are not counted,
so the ratios are of each process's own work). Three runs of each target at the
defaults take about two minutes each on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import gateway
from _common import fresh_store

# Under callgrind a server starts some fifty times slower.
gateway.READY_TIMEOUT = 600.0
_TOTALS = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="forwarder,llmsession")
    parser.add_argument("--stores", default="sqlite", help="llmsession's stores, comma-separated")
    parser.add_argument("--kind", default="openai", choices=("openai", "anthropic", "gemini"))
    parser.add_argument(
        "--answers",
        default="20,80",
        help="the small and large counts of answers of each mode (default 20,80)",
    )
    parser.add_argument("--rounds", type=int, default=8, help="turns of each conversation")
    return parser.parse_args(argv)


def _drive(target: gateway.Target, script: gateway.Script, bodies: int, streams: int) -> None:
    """``bodies`` body answers, then ``streams`` streamed ones, from two clients."""

    async def mode(stream: bool, count: int) -> None:
        left = [count]

        async def client(index: int) -> None:
            one = gateway._Client(target, script, stream, first_turn=index)
            try:
                while left[0] > 0:
                    left[0] -= 1
                    _, _, error = await one.request()
                    if error is not None:
                        raise RuntimeError(f"{target.name}: {error}")
            finally:
                await one.close()

        await asyncio.gather(client(0), client(1))

    async def both() -> None:
        await mode(False, bodies)
        await mode(True, streams)

    asyncio.run(both())


def _stopped(server: gateway.Server) -> None:
    """Stop a server under callgrind and wait for it to write its counts."""
    process = server.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"{server.target.name} did not stop under callgrind") from None


def _instructions(out: Path) -> int:
    totals = _TOTALS.findall(out.read_bytes())
    if not totals:
        raise RuntimeError(f"no totals in {out}")
    return int(totals[-1])


def _run(
    args: argparse.Namespace, target: str, store_url: str | None, bodies: int, streams: int
) -> int:
    """The instructions of one server run under callgrind answering the given counts."""
    with (
        tempfile.TemporaryDirectory(prefix="llmsession-bench-cg-") as workdir,
        ExitStack() as stack,
    ):
        bench_args = gateway.parse_args(["--kind", args.kind, "--rounds", str(args.rounds)])
        bench = gateway.Bench(bench_args, Path(workdir), stack)
        bench.start_fake()
        script = gateway.Script.build(bench.answers(), args.kind)
        out = Path(workdir) / "callgrind.out"
        bench.wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        if target == "forwarder":
            server = bench.start_forwarder()
        else:
            assert store_url is not None
            server = bench.start_llmsession(target, store_url)
        _drive(server.target, script, bodies, streams)
        _stopped(server)
        return _instructions(out)


async def _measure(args: argparse.Namespace, target: str, store: str | None) -> tuple[float, float]:
    small, large = (int(part) for part in args.answers.split(","))
    counts = [(small, small), (large, small), (small, large)]
    totals = []
    for bodies, streams in counts:
        async with AsyncExitStack() as stack:
            url = None
            if store is not None:
                url = (await stack.enter_async_context(fresh_store(store))).url
            totals.append(await asyncio.to_thread(_run, args, target, url, bodies, streams))
        print(f"  {target}: {bodies} bodies, {streams} streams: {totals[-1]:,}", file=sys.stderr)
    base, more_bodies, more_streams = totals
    return (more_bodies - base) / (large - small), (more_streams - base) / (large - small)


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = args.targets.split(",")
    runs: list[tuple[str, str | None]] = []
    if "forwarder" in wanted:
        runs.append(("forwarder", None))
    if "llmsession" in wanted:
        runs += [(store, store) for store in args.stores.split(",")]
    figures: dict[str, tuple[float, float]] = {}
    for target, store in runs:
        figures[target] = await _measure(args, target, store)
    print(f"## Instructions per answer, {args.kind} (callgrind, {gateway._commit()})\n")
    print("| server | body | vs forwarder | stream | vs forwarder |")
    print("| --- | ---: | ---: | ---: | ---: |")
    floor = figures.get("forwarder")
    for target, (body, stream) in figures.items():
        name = target if target == "forwarder" else f"llmsession, {target}"
        ratios = (
            ("", "") if floor is None else (f"{body / floor[0]:.2f}x", f"{stream / floor[1]:.2f}x")
        )
        print(f"| {name} | {body / 1e6:.2f} M | {ratios[0]} | {stream / 1e6:.2f} M | {ratios[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
