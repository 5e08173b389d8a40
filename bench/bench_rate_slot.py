"""What a provider's rate limiter costs a request (not a timed test; prints its figures).

HttpClient.request_json against a local aiohttp server in the same process (client and server
CPU together), with a rate limiter that never waits against the same client without one, in
the same round: the limiter's clients send through aiohttp's headers-sent trace, which moves
the slot to when the request went out (tgmux.ratelimit). Medians of 5 rounds of 2000.

Run: python bench/bench_rate_slot.py
"""
import asyncio
import statistics
import time

from aiohttp import web

from tgmux.http import HttpClient
from tgmux.ratelimit import SlidingWindowLimiter

ROUNDS, REQUESTS = 5, 2000


async def main() -> None:
    app = web.Application()

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_post("/ok", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cpu: dict[str, list[float]] = {"bare": [], "limited": []}
    for _ in range(ROUNDS):
        for name, limiter in (("bare", None), ("limited", SlidingWindowLimiter(10**9, 60.0))):
            async with HttpClient(f"http://127.0.0.1:{port}", limiter=limiter,
                                  max_connections=50) as http:
                for _ in range(50):  # warm: the pool's connections open
                    await http.request_json("POST", "/ok", json={})
                started = time.process_time()
                await asyncio.gather(*(http.request_json("POST", "/ok", json={})
                                       for _ in range(REQUESTS)))
                cpu[name].append((time.process_time() - started) / REQUESTS * 1e6)
    await runner.cleanup()
    bare, limited = statistics.median(cpu["bare"]), statistics.median(cpu["limited"])
    print(f"CPU µs a request (client and server, one process), medians of {ROUNDS} rounds: "
          f"no limiter {bare:.0f}, with a limiter {limited:.0f}, ratio {limited / bare:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
