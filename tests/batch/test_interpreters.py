"""The pool batch uses for versions on their own interpreter behaves as the executor
expects of ProcessPoolExecutor: results, the child's exceptions, and a dead worker
breaking the pool for every chunk it held."""

from __future__ import annotations

import math
import operator
import os
import sys
from concurrent.futures.process import BrokenProcessPool

import pytest

from shipyard.batch.interpreters import InterpreterPool


def test_answers_and_exceptions_come_back_from_the_child() -> None:
    pool = InterpreterPool(sys.executable, 2, int, ("1",))
    try:
        assert [pool.submit(operator.add, i, 10).result(timeout=60) for i in range(4)] == [
            10,
            11,
            12,
            13,
        ]
        with pytest.raises(ValueError, match="math domain error"):
            pool.submit(math.sqrt, -1).result(timeout=60)
        assert pool.submit(os.getpid).result(timeout=60) != os.getpid()
    finally:
        pool.shutdown(wait=True)


def test_a_dead_worker_breaks_the_pool() -> None:
    pool = InterpreterPool(sys.executable, 1, int, ("1",))
    try:
        dying = pool.submit(os._exit, 3)
        with pytest.raises(BrokenProcessPool):
            dying.result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            pool.submit(operator.add, 1, 2).result(timeout=60)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_a_failing_setup_is_the_answer_to_every_call() -> None:
    pool = InterpreterPool(sys.executable, 1, int, ("not a number",))
    try:
        with pytest.raises(ValueError, match="invalid literal"):
            pool.submit(operator.add, 1, 2).result(timeout=60)
    finally:
        pool.shutdown(wait=True)
