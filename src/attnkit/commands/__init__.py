"""The user-facing workflows behind ``attnkit train | generate | evaluate | finetune |
convert | compare``: one module per command (Typer functions, registered in
:mod:`attnkit.cli`), plus
:mod:`~attnkit.commands.config_files` (config files and ``--set``) and
:mod:`~attnkit.commands.common` (errors, checkpoint loading). Heavy imports (torch, the data
pipeline) happen inside the commands, so ``attnkit --help`` stays fast."""

from attnkit.commands.compare import compare_cmd
from attnkit.commands.convert import convert_cmd
from attnkit.commands.evaluate import evaluate_cmd
from attnkit.commands.finetune import finetune_cmd
from attnkit.commands.generate import generate_cmd
from attnkit.commands.train import train_cmd

__all__ = ["train_cmd", "generate_cmd", "evaluate_cmd", "finetune_cmd", "convert_cmd",
           "compare_cmd"]
