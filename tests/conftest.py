from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import RawWorker


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: full-count reliability runs (make soak)")


@pytest.fixture
def raw_worker() -> Iterator[RawWorker]:
    """A fresh worker process, not initialised."""
    w = RawWorker()
    try:
        yield w
    finally:
        w.close()
        assert not w.stdout_violations, w.stdout_violations


@pytest.fixture
def worker(raw_worker: RawWorker) -> RawWorker:
    """A fresh worker with the default model loaded."""
    raw_worker.init()
    raw_worker.load()
    return raw_worker


@pytest.fixture(scope="module")
def shared_worker() -> Iterator[RawWorker]:
    """One loaded worker for a module's read-mostly tests (reset between uses)."""
    w = RawWorker()
    w.init()
    w.load()
    try:
        yield w
    finally:
        w.close()
        assert not w.stdout_violations, w.stdout_violations
