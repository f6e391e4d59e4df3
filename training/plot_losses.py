"""``python -m training.plot_losses OUT.png STAGE_DIR...``: loss curves of stages from their logs/metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common.cli import guard
from common.plots import pyplot, save_png


def plot_losses(stage_dirs: list[Path], out_png: Path) -> Path:
    """One panel: training loss per step for each stage (eval loss as markers), steps laid end to end."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    offset = 0
    for d in stage_dirs:
        rows = [json.loads(x) for x in (Path(d) / "logs" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        if not rows:
            continue
        ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], label=f"{Path(d).name} train")
        ev = [r for r in rows if r.get("eval_loss") is not None]
        if ev:
            ax.plot([offset + r["step"] for r in ev], [r["eval_loss"] for r in ev], "o", label=f"{Path(d).name} eval")
        offset += rows[-1]["step"]
    ax.set_xlabel("optimizer step (stages end to end)")
    ax.set_ylabel("loss")
    ax.legend()
    return save_png(fig, out_png)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python -m training plot_losses OUT.png STAGE_DIR [STAGE_DIR ...]", file=sys.stderr)
        return 2
    print(plot_losses([Path(p) for p in argv[1:]], Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
