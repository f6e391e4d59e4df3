"""``python -m training COMMAND [flags]``: the training stage's commands.

python -m training run --config training/configs/demo/stage1_oig.yaml [--resume | --overwrite]
python -m training evaluate --model DIR [--model DIR2] --data TOKENIZED_DIR [--out eval.json]
python -m training merge_lora --adapter DIR --output DIR [--base DIR_OR_HUB_ID] [--overwrite]
python -m training plot_losses OUT.png STAGE_DIR [STAGE_DIR ...]
python -m training plan --config training/configs/stage1_oig.yaml --gpus 8 --gpu-memory 80 [--nodes N]
"""

from common.cli import dispatch

COMMANDS = {
    "run": ("training.run", "train one stage with DeepSpeed (one process, or deepspeed, torchrun, mpirun, srun)"),
    "evaluate": ("training.evaluate", "dev loss and stop rates per source, several models side by side"),
    "merge_lora": ("training.merge_lora", "fold a LoRA adapter into its base model"),
    "plot_losses": ("training.plot_losses", "loss curves of stages from their metrics.jsonl"),
    "plan": ("training.plan_cli", "per-GPU memory plan of a stage: will it fit, and what to change if not"),
}

if __name__ == "__main__":
    from training.run import exit_process

    exit_process(dispatch("training", COMMANDS))
