"""A loop on a daemon thread that stops when asked: the shape of every controller source."""

from __future__ import annotations

import threading


class Worker:
    """Subclasses implement `run`, looping until `self._stop` is set (wait on it to sleep)."""

    thread_name = "worker"

    def __init__(self) -> None:
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        raise NotImplementedError
