"""One object per running event loop, made on first use.

Tasks, futures and asyncio connections belong to the loop that made them: a server process runs
one loop, but tests (and asgiref's helpers) run several, each needing its own live hub, socket
buffer or last-seen notes. An object is dropped with its loop.
"""

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_loop(make: Callable[[], T]) -> Callable[[], T]:
    """A function returning the running loop's object, made by `make()` the first time."""
    made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def current() -> T:
        loop = asyncio.get_running_loop()
        thing = made.get(loop)
        if thing is None:
            thing = made[loop] = make()
        return thing

    return current
