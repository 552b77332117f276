"""The training log: JSON lines in the checkpoint folder, copied out and drawn at the end.

cavl.train_loop appends to `work_dir/log.jsonl` one record per `log_every` steps (`{"step",
"epoch", "lr", <window means of every *_loss>, "samples_per_s"}`), one per evaluation or selection
(`val_*` / `select_*` keys) and events (`{"event": "resume" | "best_epoch", ...}`). The live log
lives beside the checkpoints because Snakemake deletes a failed job's declared outputs;
`finalize_log` copies it out and draws the curves PNG at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from cavl.io import atomic_path


class TrainLog:
    """Append-only JSON-lines log; lines that do not parse (a write cut by a kill) are dropped."""

    def __init__(self, path):
        self.path = Path(path)

    def records(self) -> list:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_after(self, step: int):
        _write_records([r for r in self.records() if r.get("step", 0) <= step], self.path)

    def append(self, record: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def plot_curves(records: list, png_path):
    """One panel per loss name (train and, where logged, val and select) plus the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if "event" not in r]
    names = sorted({k.removeprefix("val_").removeprefix("select_") for r in steps for k in r if k.endswith("_loss")})
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for key, style, label in ((name, "-", "train"), (f"val_{name}", "o--", "val"),
                                  (f"select_{name}", "s:", "select")):
            pts = [(r["step"], r[key]) for r in steps if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    lr = [(r["step"], r["lr"]) for r in steps if "lr" in r]
    ax = axes[0][-1]
    if lr:
        ax.plot(*zip(*lr))
    ax.set_title("learning rate")
    ax.set_xlabel("step")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def finalize_log(work_dir, log_path, png_path):
    """Copy the live log to the declared log path and draw the curves, both atomically."""
    records = TrainLog(Path(work_dir) / "log.jsonl").records()
    _write_records(records, log_path)
    plot_curves(records, png_path)


def _write_records(records: list, path):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
