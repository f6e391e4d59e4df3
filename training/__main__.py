"""``python -m training COMMAND [flags]``: the training stage's commands.

python -m training run --config training/configs/demo/stage1_oig.yaml [--resume | --overwrite_output_path]
python -m training evaluate --model DIR [--model DIR2] --data TOKENIZED_DIR [--output_path eval.json]
python -m training merge_lora --adapter DIR --output_path DIR [--base DIR_OR_HUB_ID] [--overwrite_output_path]
python -m training plot_losses --output_path OUT.png STAGE_DIR [STAGE_DIR ...]
python -m training plan --config training/configs/stage1_oig.yaml --gpus 8 --gpu_memory 80 [--nodes N]
"""

from common.cli import dispatch
from training.run import exit_process

COMMANDS = {
    "run": ("training.run", "train one stage with DeepSpeed (one process, or deepspeed, torchrun, mpirun, srun)"),
    "evaluate": ("training.evaluate", "dev loss and stop rates per source, several models side by side"),
    "merge_lora": ("training.merge_lora", "fold a LoRA adapter into its base model"),
    "plot_losses": ("training.plot_losses", "loss curves of stages from their metrics.jsonl"),
    "plan": ("training.plan_cli", "per-GPU memory plan of a stage: will it fit, and what to change if not"),
}

if __name__ == "__main__":
    exit_process(dispatch("training", COMMANDS))
