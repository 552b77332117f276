# The helpers of ablations.smk's rules (included first by ablations.smk). The grid's cells and
# runs are planned in common.smk (ABLATION_CELLS, ABLATION_RUNS), which every stage's rules read.


def ablation_runs_json():
    """The grid as one JSON argument: per cell its variant, seed, task, the metrics and
    predictions of the run that computes it, and where its metrics.json is copied."""
    cells = [
        {
            "variant": cell.variant,
            "seed": cell.seed,
            "task": cell.task,
            "metrics": cell.metrics,
            "predictions": cell.predictions,
            "copy_to": cell.copy_to,
        }
        for cell in ABLATION_CELLS
    ]
    return json_arg(cells)
