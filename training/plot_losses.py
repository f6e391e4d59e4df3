"""``python -m training plot_losses --output_path OUT.png STAGE_DIR...``: stages' loss curves from metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from common.cli import guard
from common.plots import pyplot, save_png
from common.settings import command_parser, parse_settings


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


class PlotSettings(BaseModel):
    """The plot_losses command's settings: the PNG, then the stage dirs (positional)."""

    model_config = ConfigDict(extra="forbid")
    output_path: str = Field(description="the PNG to write", json_schema_extra={"metavar": "OUT.png"})
    stage_dirs: list[str] = Field(
        description="stage output dirs (each with logs/metrics.jsonl), in order",
        json_schema_extra={"positional": True, "metavar": "STAGE_DIR"},
    )


def main(argv=None) -> int:
    args = parse_settings(command_parser("python -m training plot_losses", __doc__, PlotSettings), PlotSettings, argv)
    print(plot_losses([Path(p) for p in args.stage_dirs], Path(args.output_path)))
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
