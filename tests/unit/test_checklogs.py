"""The conftest's log check: an undeclared WARNING or ERROR record fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

CASES = """
import logging

import pytest

log = logging.getLogger("immichfs.example")


def test_undeclared_warning():
    log.warning("boom %d", 1)


def test_undeclared_error_from_a_thread():
    import threading

    thread = threading.Thread(target=log.error, args=("from a thread",))
    thread.start()
    thread.join()


@pytest.mark.expect_log("^boom [0-9]$", logger="immichfs.example")
def test_declared_warning():
    log.warning("boom %d", 2)
    log.info("info is never checked")


@pytest.mark.expect_log("boom")
def test_declared_but_absent():
    pass


@pytest.mark.expect_log("boom", optional=True)
def test_optional_and_absent():
    pass


@pytest.mark.expect_log("boom")
def test_declared_at_another_level():
    log.error("boom")


@pytest.mark.expect_log("boom", logger="immichfs.other")
def test_declared_for_another_logger():
    log.warning("boom")


def test_seen_after_a_command_replaced_the_handlers():
    from immichfs.logs import setup_logging

    setup_logging()
    log.warning("after setup_logging")
"""


@pytest.fixture
def outcome(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_cases=CASES)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", f"pythonpath={TESTS}")


def test_undeclared_records_fail_and_declared_ones_must_appear(
    outcome: pytest.RunResult,
) -> None:
    outcome.assert_outcomes(passed=8, errors=6)
    errors = {
        line.split("::")[1].split(" ")[0]
        for line in outcome.outlines
        if line.startswith("ERROR test_cases.py::")
    }
    assert errors == {
        "test_undeclared_warning",
        "test_undeclared_error_from_a_thread",
        "test_declared_but_absent",
        "test_declared_at_another_level",
        "test_declared_for_another_logger",
        "test_seen_after_a_command_replaced_the_handlers",
    }
    outcome.stdout.fnmatch_lines(
        [
            "*unexpected log record: WARNING immichfs.example: boom 1*",
            "*unexpected log record: ERROR immichfs.example: from a thread*",
            "*declared log record did not appear: WARNING 'boom'*",
            "*unexpected log record: ERROR immichfs.example: boom*",
            "*unexpected log record: WARNING immichfs.example: after setup_logging*",
        ],
        consecutive=False,
    )
