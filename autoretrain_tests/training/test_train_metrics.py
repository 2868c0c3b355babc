"""TrainMetrics: the typed view of a training record, and the loss-curve table the UI shows."""

from autoretrain.defs.training import loss_curves_markdown
from autoretrain.training.config import TrainMetrics


def test_fields_read_the_record_and_it_still_reads_as_a_mapping():
    local = TrainMetrics({"steps": 7, "train_tokens": 900, "train_loss": [[1, 2.5]]})
    assert local.steps == 7 and local.trained_tokens == 900 and local["steps"] == 7
    assert local.train_loss == [(1, 2.5)] and local.eval_loss == []
    assert dict(local) == local.record
    hosted = TrainMetrics({"trained_tokens": 4321, "job_id": "ftjob-1"})
    assert hosted.trained_tokens == 4321 and hosted.steps is None and hosted.train_loss == []


def test_loss_curves_table():
    metrics = TrainMetrics(
        {"train_loss": [[s, 1.0 / s] for s in range(1, 6)], "eval_loss": [[2, 0.75], [6, 0.5]]}
    )
    assert loss_curves_markdown(metrics, points=2) == "\n".join(
        [
            "| step | train loss | validation loss |",
            "|---:|---:|---:|",
            "| 1 | 1.0000 |  |",
            "| 2 |  | 0.7500 |",
            "| 3 | 0.3333 |  |",
            "| 5 | 0.2000 |  |",
            "| 6 |  | 0.5000 |",
        ]
    )
    assert loss_curves_markdown(TrainMetrics({})) == "(no loss recorded)"
