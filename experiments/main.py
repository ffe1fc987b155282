r"""Train and evaluate a segmentation model from a Python config file.

    python -m experiments.main --config=configs/default.py --workdir=runs/default
    python -m experiments.main --config=configs/partial_supervision.py:leaf_dice \
        --workdir=runs/leaf_dice --config.num_steps=1000

Writes to the workdir: checkpoints, ``metrics.jsonl``, TensorBoard events, ``results.json`` and
``slices.png`` (predicted parcellation next to the ground truth), and, once the config and the data
have passed their checks, ``config.json`` and ``label_space.json`` (what makes the folder a training
run for ``evaluate``/``predict``). An existing run is resumed. Bad input (a flag or config typo, a
missing config file, a bad dataset, a workdir holding a trained run of other settings) is one line
``error: ...`` with exit status 2, before anything is written. Ctrl-C stops with one line saying
from which step a rerun resumes, exit status 130.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from labelset_jax import cli, report, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    cli.start(argv)
    config = _CONFIG.value
    cli.check_output_folder(_WORKDIR.value, what="--workdir")
    try:
        results = train.train_and_evaluate(config, _WORKDIR.value)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(str(e))
    except train.Interrupted as e:  # Ctrl-C: one line, the checkpoint kept, exit status 130 as for SIGINT
        print(str(e), file=sys.stderr)
        sys.exit(130)
    report.write_run_report(_WORKDIR.value)
    logging.info("results: %s", results)
    print(report.outputs_summary(_WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
