"""A gentle load on the gateway so dashboards have data: some loads anonymous, some as jason."""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """How much traffic: requests per second, the share sent as `user`, per-request timeout."""

    rate: float = 3.0
    user: str = "jason"
    user_share: float = 0.3
    timeout: float = 10.0


class TrafficGenerator:
    """Loads `<base>/productpage` at `plan.rate` per second until cancelled; counts statuses."""

    def __init__(self, base_url: str, plan: TrafficPlan = TrafficPlan(), *,
                 rng: random.Random | None = None, sleep: Sleep = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url.rstrip("/")
        self.plan = plan
        self.counts: Counter[str] = Counter()  # "anonymous 200", "jason 503", "jason error"
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock

    async def run(self, requests: int | None = None) -> None:
        """Send `requests` loads (None: until cancelled), one every 1/rate s, without overlap
        limits: a slow page (fault scenarios) must not slow the schedule for everyone."""
        timeout = aiohttp.ClientTimeout(total=self.plan.timeout)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as anonymous, \
                aiohttp.ClientSession(timeout=timeout, trust_env=False,
                                      cookie_jar=aiohttp.CookieJar(unsafe=True)) as user:
            pending: set[asyncio.Task[None]] = set()
            try:
                sent = 0
                next_at = self._clock()
                while requests is None or sent < requests:
                    as_user = self._rng.random() < self.plan.user_share
                    who = self.plan.user if as_user else "anonymous"
                    task = asyncio.create_task(self._load(user if as_user else anonymous, who))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                    next_at += 1.0 / self.plan.rate
                    await self._sleep(max(0.0, next_at - self._clock()))
                if pending:
                    await asyncio.wait(pending)
            finally:
                for task in pending:
                    task.cancel()

    async def _login(self, session: aiohttp.ClientSession) -> None:
        """POST /login keeps `user` in the session cookie; later loads carry it.

        The cookie jar accepts cookies from IP addresses (127.0.0.1), which aiohttp refuses
        by default."""
        try:
            async with session.post(f"{self.base_url}/login",
                                    data={"username": self.plan.user}) as resp:
                self.counts[f"login {resp.status}"] += 1
        except (aiohttp.ClientError, TimeoutError):
            self.counts["login error"] += 1

    async def _load(self, session: aiohttp.ClientSession, who: str) -> None:
        if who != "anonymous" and not len(session.cookie_jar):
            await self._login(session)  # first time, or the last login failed
        try:
            async with session.get(f"{self.base_url}/productpage") as resp:
                await resp.read()
                self.counts[f"{who} {resp.status}"] += 1
        except (aiohttp.ClientError, TimeoutError):
            self.counts[f"{who} error"] += 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m meshctl.demo.traffic URL`: the demo's load as a process of its own (compose's
    `traffic` service), until stopped (SIGTERM/SIGINT) or after `--requests` loads."""
    p = argparse.ArgumentParser(prog="python -m meshctl.demo.traffic",
                                description="Load URL/productpage gently, some loads signed "
                                            "in as jason, so dashboards and canaries have data.")
    p.add_argument("url", help="the gateway, e.g. http://gateway:8080")
    p.add_argument("--rate", type=float, default=TrafficPlan().rate,
                   help="page loads per second (default 3)")
    p.add_argument("--requests", type=int, default=None, help="stop after this many loads")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and exit")
    opts = p.parse_args(argv)
    if not opts.rate > 0:
        p.error("--rate must be above 0")
    if opts.dry_run:
        return 0
    generator = TrafficGenerator(opts.url, TrafficPlan(rate=opts.rate))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # docker stop: end as Ctrl-C
    try:
        asyncio.run(generator.run(opts.requests))
    except KeyboardInterrupt:
        pass
    print(", ".join(f"{k}: {v}" for k, v in sorted(generator.counts.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
