"""A failed step reaches the loop's caller as the user's own error, not Dagster's wrapper."""

from __future__ import annotations

import dagster as dg

from autoretrain.loop import _step_errors


def test_a_failed_step_is_reported_with_the_error_that_failed_it():
    @dg.op
    def refuse():
        raise RuntimeError("cand-x: the regression gate did not pass it")

    @dg.job
    def deploy():
        refuse()

    result = deploy.execute_in_process(raise_on_error=False)
    assert _step_errors(result) == [
        "refuse: RuntimeError: cand-x: the regression gate did not pass it"
    ]
