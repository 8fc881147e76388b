"""An asyncio server (pymodbus, asyncua) on an event loop in a thread of its own, beside the bridge's
threads: the protocol libraries are asyncio, the bridge's delivery path is not."""

from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable


def serve_in_thread(name: str, setup: Callable[[], Awaitable[None]], serve: Callable[[], Awaitable[None]],
                    timeout_s: float) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """Run `setup()` then `serve()` on a new event loop in daemon thread `name`; return once `setup`
    has finished. Raises TimeoutError when it did not within `timeout_s`, or what `setup` raised."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        try:
            await setup()
        except Exception as error:  # noqa: BLE001 - raised in the starting thread below
            failure.append(error)
            return
        finally:
            started.set()
        await serve()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not started.wait(timeout_s):
        raise TimeoutError(f"{name} did not start within {timeout_s} s")
    if failure:
        raise failure[0]
    return loop, thread
