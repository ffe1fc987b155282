"""Training and evaluation: ``train_and_evaluate(config, workdir)``.

One readable loop, importable from a notebook:

1. a device mesh with one ``data`` axis over all devices (several hosts through
   ``jax.distributed``); global batches sharded along it with ``NamedSharding``, parameters and
   optimiser state replicated;
2. one jitted train step with donated state; the loss is any loss of :mod:`labelset_jax.losses`
   chosen by name, computed on the whole global batch (so ``batch_dice`` is a global-batch Dice);
3. periodic validation by sliding-window inference with per-label Dice, through
   :mod:`labelset_jax.evaluation` (the one evaluation path);
4. orbax checkpoints every ``checkpoint_every`` steps (last ``keep_checkpoints`` and the best by
   validation Dice), resumed automatically from ``workdir`` with the loader state;
5. metrics to ``metrics.jsonl`` and TensorBoard event files; progress with steps/s and ETA.

A non-finite loss stops training with a ``FloatingPointError`` before anything is saved, so the
last checkpoint stays the last good one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from labelset_jax import checkpoints, files, input_pipeline, losses
from labelset_jax.data import LABEL_SPACE_FILE, nnunet  # the run's label space in the workdir (as a manifest's):
# ``labels``/``label_sets`` as in a dataset.json, so that evaluation and prediction rebuild it without the data
from labelset_jax.evaluation import EvalSettings, TrainedModel, evaluate_cases
from labelset_jax.models import create_model
from labelset_jax.writers import MetricWriter

REQUIRED_FIELDS = ("seed", "num_steps", "batch_size", "patch_size", "loss", "learning_rate",
                   "checkpoint_every", "eval_every", "data", "model")


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C) at ``step``; a rerun resumes from ``resume_step``."""

    def __init__(self, step: int, resume_step: int):
        super().__init__(f"interrupted at step {step}; rerun the same command to resume from step {resume_step}")
        self.step, self.resume_step = step, resume_step


# --------------------------------------------------------------------------- set-up
def maybe_initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` when a multi-process environment is configured.

    Recognised: ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``),
    SLURM jobs with several tasks, and Cloud TPU pods (``TPU_WORKER_HOSTNAMES`` with several hosts).
    """
    if jax.distributed.is_initialized():
        return
    env = os.environ
    multi = (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    )
    if multi:
        kwargs = {}
        if "JAX_COORDINATOR_ADDRESS" in env:
            kwargs = dict(
                coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(env["JAX_NUM_PROCESSES"]),
                process_id=int(env["JAX_PROCESS_ID"]),
            )
        jax.distributed.initialize(**kwargs)


def with_input_channels(config: ml_collections.ConfigDict, cases) -> ml_collections.ConfigDict:
    """``config`` with ``model.in_channels`` set to the input channels of ``cases`` when they are
    several and it was not set (a copy; saved with the run, so that ``load_trained`` rebuilds the
    same network). Single-channel configs are returned as they are (the model's default is 1).

    Raises:
      ValueError: ``config.model.in_channels`` is set and differs from the data's.
    """
    channels = cases[0].num_channels if cases else 1
    declared = config.model.get("in_channels")
    if declared is not None and int(declared) != channels:
        raise ValueError(f"config.model.in_channels={declared} but the training images have {channels} input channels")
    if declared is not None or channels == 1:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.in_channels = channels
    return config


def with_spacing(config: ml_collections.ConfigDict, datasets) -> ml_collections.ConfigDict:
    """``config`` with ``data.spacing`` set to the common spacing the cases were brought to (an
    nnU-Net folder's median spacing when it was not set; a copy, saved with the run so that
    evaluation and prediction resample new volumes to it)."""
    if datasets.spacing is None or config.data.get("spacing"):
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.spacing = tuple(datasets.spacing)
    return config


def with_intensity(config: ml_collections.ConfigDict, cases) -> ml_collections.ConfigDict:
    """``config`` with ``data.intensity`` set to the dataset statistics of its CT channels
    (:func:`labelset_jax.input_pipeline.intensity_statistics`; a copy, saved with the run so that
    evaluation and prediction normalise as training did). Unchanged when no channel is CT."""
    stats = input_pipeline.intensity_statistics(config.data, cases)
    if stats is None:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.intensity = stats
    return config


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh ``("data",)`` over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the field for configs the loop cannot run."""
    missing = [f for f in REQUIRED_FIELDS if f not in config]
    if missing:
        raise ValueError(f"config is missing field(s) {missing}")
    if int(config.batch_size) != config.batch_size or config.batch_size < 1:
        raise ValueError(f"config.batch_size must be a positive integer, got {config.batch_size}")
    if config.batch_size % jax.device_count():
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the number of devices "
            f"({jax.device_count()})"
        )
    if config.num_steps < 1 or config.checkpoint_every < 1 or config.eval_every < 0:
        raise ValueError(f"config.num_steps must be >= 1 (got {config.num_steps}), checkpoint_every >= 1 "
                         f"(got {config.checkpoint_every}) and eval_every >= 0 (got {config.eval_every})")
    losses.get_loss(config.loss)  # raises on an unknown name
    if len(tuple(config.patch_size)) != 3:
        raise ValueError(f"config.patch_size must have 3 entries, got {config.patch_size}")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam (default) or AdamW with an optional warm-up + cosine schedule and gradient clipping."""
    opt = config.get("optimizer", ml_collections.ConfigDict())
    lr = config.learning_rate
    schedule_name = opt.get("schedule", "constant")
    if schedule_name == "constant":
        schedule = optax.constant_schedule(lr)
    elif schedule_name == "cosine":
        warmup = opt.get("warmup_steps", 0)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=warmup, decay_steps=max(config.num_steps, warmup + 1)
        )
    elif schedule_name == "poly":  # nnU-Net's polynomial decay
        schedule = optax.polynomial_schedule(lr, 0.0, power=0.9, transition_steps=max(config.num_steps, 1))
    else:
        raise ValueError(f"config.optimizer.schedule must be constant, cosine or poly, got {schedule_name!r}")
    name = opt.get("name", "adam")
    if name == "adam":
        base = optax.adam(schedule)
    elif name == "adamw":
        base = optax.adamw(schedule, weight_decay=opt.get("weight_decay", 1e-4))
    elif name == "sgd":
        base = optax.sgd(schedule, momentum=0.99, nesterov=True)
    else:
        raise ValueError(f"config.optimizer.name must be adam, adamw or sgd, got {name!r}")
    clip = opt.get("grad_clip_norm", 0.0)
    return optax.chain(optax.clip_by_global_norm(clip), base) if clip else base


#: Config fields a resumed run may change (its schedule and bookkeeping): a change is logged to
#: ``config_history.jsonl``. Any other difference from the run's ``config.json`` stops before any write.
RESUMABLE_FIELDS = ("num_steps", "eval_every", "checkpoint_every", "log_every", "keep_checkpoints", "eval",
                    "data.prefetch")
HISTORY_FILE = "config_history.jsonl"
#: Config fields the loop derives from the data and saves with a run (:func:`with_input_channels`,
#: :func:`with_spacing`, :func:`with_intensity`).
DERIVED_FIELDS = ("model.in_channels", "data.spacing", "data.intensity")


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A config's JSON object as ``{"dotted.field": value}`` (lists are values).

    >>> flatten_config({"a": 1, "b": {"c": [2, 3]}})
    {'a': 1, 'b.c': [2, 3]}
    """
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten_config(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def has_checkpoint(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir`` holds a saved training step (read from the folder names; creates nothing)."""
    folder = Path(workdir) / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def check_resume(config: ml_collections.ConfigDict, label_space, workdir: str | os.PathLike) -> dict[str, list]:
    """Checks that ``config`` may continue the run saved in ``workdir``; creates nothing.

    A workdir with a checkpoint holds a trained run: its ``config.json`` and ``label_space.json``
    must match ``config`` and ``label_space`` except for :data:`RESUMABLE_FIELDS`.

    Returns:
      ``{field: [old, new]}`` of the resumable fields that changed (empty for a new run).

    Raises:
      ValueError: one line naming the fields (or the label space) that differ.
    """
    workdir = Path(workdir)
    if not has_checkpoint(workdir) or not (workdir / "config.json").exists():
        return {}
    old = flatten_config(json.loads((workdir / "config.json").read_text()))
    new = flatten_config(json.loads(config.to_json_best_effort()))
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    allowed = lambda k: any(k == f or k.startswith(f + ".") for f in RESUMABLE_FIELDS)  # noqa: E731
    fixed = [k for k in changed if not allowed(k)]
    if fixed:
        shown = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in fixed[:4])
        more = f" and {len(fixed) - 4} more" if len(fixed) > 4 else ""
        raise ValueError(f"{workdir} holds a trained run with other settings: {shown}{more}; use a new --workdir "
                         f"(a resumed run may change only {', '.join(RESUMABLE_FIELDS)})")
    space_path = workdir / LABEL_SPACE_FILE
    if space_path.exists() and json.loads(space_path.read_text()) != label_space.to_json():
        raise ValueError(f"{workdir} holds a trained run of another label space ({space_path}); use a new --workdir")
    return changed


def check_loss_fits_labels(config: ml_collections.ConfigDict, train_cases, num_classes: int) -> None:
    """Once per dataset (the losses themselves never read label values): a classical loss excludes
    label-set voxels, so training one on cases that annotate some leaves only as sets would
    silently drop what those sets say. (The ignore label alone is fine: a classical loss excludes
    it, as nnU-Net does.) Raises ``ValueError`` naming the loss and the way out."""
    if losses.takes_label_space(config.loss) or config.data.get("label_transform", "none") != "none":
        return  # a label-set loss, or set ids already mapped to leaves (naive) or dropped (full_only)
    partial = [case.id for case in train_cases if case.annotated is not None and len(case.annotated) < num_classes]
    if partial:
        raise ValueError(
            f"config.loss={config.loss!r} is a classical loss: it would ignore the label-set voxels of "
            f"{len(partial)} partially annotated training case(s) (e.g. {partial[0]!r}); use a label-set loss "
            "(leaf_dice, marginal_dice, marginal_cross_entropy, ...) or config.data.label_transform='naive' "
            "or 'full_only'")


# --------------------------------------------------------------------------- the step
def make_loss_fn(config: ml_collections.ConfigDict, label_space):
    """``(logits or list of deep-supervision logits, labels) -> scalar`` for the configured loss."""
    loss = losses.get_loss(config.loss)
    options = dict(config.get("loss_options", {}))
    takes_space = losses.takes_label_space(config.loss)

    def single(logits, labels):
        if takes_space:
            return loss(logits, labels, label_space=label_space, **options)
        return loss(logits, labels, **options)

    def total(outputs, labels):
        if not isinstance(outputs, (list, tuple)):
            return single(outputs, labels)
        # Deep supervision: halve the weight at each coarser level; labels subsampled (they stay ids).
        weights = np.array([0.5**k for k in range(len(outputs))])
        weights = weights / weights.sum()
        value = 0.0
        for k, (w, out) in enumerate(zip(weights, outputs)):
            stride = 2**k
            value = value + w * single(out, labels[:, ::stride, ::stride, ::stride])
        return value

    return total


@dataclasses.dataclass
class Trainer:
    """What the loop needs: the model definition, the jitted functions and the shardings."""

    graphdef: Any
    optimizer: optax.GradientTransformation
    train_step: Any
    predict: Any
    data_sharding: NamedSharding
    replicated: NamedSharding


def create_trainer(config, model, label_space, mesh) -> tuple[Trainer, dict]:
    """Builds the jitted train/predict functions and the initial replicated state."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(config)
    loss_fn = make_loss_fn(config, label_space)
    replicated = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P("data"))
    state = {"params": params, "rest": rest, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
    state = jax.device_put(state, replicated)

    def train_step(state, images, labels):
        def objective(params):
            model = nnx.merge(graphdef, params, state["rest"])
            return loss_fn(model(images), labels)

        loss, grads = jax.value_and_grad(objective)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {"params": params, "rest": state["rest"], "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    def predict(images, state):
        outputs = nnx.merge(graphdef, state["params"], state["rest"])(images)
        return outputs[0] if isinstance(outputs, (list, tuple)) else outputs

    trainer = Trainer(
        graphdef=graphdef,
        optimizer=optimizer,
        train_step=jax.jit(train_step, donate_argnums=(0,), out_shardings=(replicated, replicated)),
        predict=jax.jit(predict),
        data_sharding=data_sharding,
        replicated=replicated,
    )
    return trainer, state


def shard_batch(batch, sharding: NamedSharding):
    """Turns this process's slice of the global batch into global sharded arrays."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


# --------------------------------------------------------------------------- evaluation
def validate(model: TrainedModel, cases, settings: EvalSettings) -> dict[str, float]:
    """Per-label Dice of the validation cases (hard argmax; :func:`labelset_jax.evaluation.evaluate_cases`).

    Returns ``val/dice_<leaf>`` (mean over the cases where the leaf is present in either mask)
    and ``val/dice_mean`` over the foreground leaves.
    """
    names = model.label_space.names
    rows = evaluate_cases(model, cases, settings, hd95=False, include_background=True)
    scores = np.array([[row[f"dice_{name}"] for name in names] for row in rows], np.float64)
    scores = np.nanmean(scores, axis=0) if rows else np.full(len(names), np.nan)
    out = {f"val/dice_{name}": float(s) for name, s in zip(names, scores)}
    out["val/dice_mean"] = float(np.nanmean(scores[1:]))
    return out


def startup_summary(config: ml_collections.ConfigDict, datasets) -> list[str]:
    """What a run trains on, in a few lines: cases per source (fully / partially annotated),
    validation cases, voxel spacing, patch, leaves and label sets."""
    space = datasets.label_space
    by_source: dict[str, list[int]] = {}
    for case in datasets.train:
        full = case.is_full
        counts = by_source.setdefault(str(case.metadata.get("source", "") or config.data.name), [0, 0])
        counts[0 if full else 1] += 1
    sources = "; ".join(f"{name}: {full} fully, {partial} partially annotated"
                        for name, (full, partial) in by_source.items())
    spacings = sorted({tuple(round(float(v), 3) for v in case.spacing) for case in datasets.train})
    spacing = (f"{spacings[0]} mm" if len(spacings) == 1 else
               f"{len(spacings)} different, e.g. {spacings[0]} to {spacings[-1]} mm (not resampled)")
    if datasets.spacing is not None:
        spacing = (f"{tuple(datasets.spacing)} mm, "
                   + (f"{datasets.resampled} of {len(datasets.train) + len(datasets.val)} cases reoriented "
                      f"and/or resampled to it" if datasets.resampled else "no case needed resampling"))
    sets = ", ".join(f"{name}={{{', '.join(space.names[c] for c in members)}}}"
                     for name, members in zip(space.set_names, space.set_members)) or "none"
    lines = [f"training cases: {len(datasets.train)} ({sources})",
             f"validation cases: {len(datasets.val)}" + ("" if datasets.val else " (no validation during training)"),
             f"voxel spacing: {spacing}; patch {tuple(config.patch_size)}, batch {config.batch_size}, "
             f"{config.num_steps} steps, loss {config.loss}",
             f"leaves: {', '.join(space.names)}; label sets: {sets}"]
    return lines


# --------------------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, float]:
    """Trains the configured model in ``workdir`` (resuming from its checkpoints) and evaluates it.

    Args:
      config: a config from ``configs/`` (``get_config()``), see ``configs/default.py``.
      workdir: where checkpoints, metrics and results go; an existing run there is resumed.

    Returns:
      The final validation metrics (``val/dice_<leaf>``, ``val/dice_mean``) plus ``train/loss``.

    Raises:
      ValueError: an invalid config (the message names the field), or ``workdir`` holds a trained
        run with other settings (:func:`check_resume`; nothing is written then).
      FloatingPointError: the loss became non-finite; the last checkpoint is the last good one.
      Interrupted: Ctrl-C; the last checkpoint is kept and a rerun resumes from it.
    """
    maybe_initialize_distributed()
    validate_config(config)
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    # Validation as the final evaluation (config.eval), but never with test-time augmentation.
    val_settings = EvalSettings.from_config(config)._replace(tta=False)

    datasets = input_pipeline.create_datasets(config.data, seed=config.seed)
    label_space = datasets.label_space
    check_loss_fits_labels(config, datasets.train, label_space.num_classes)
    config = with_input_channels(config, datasets.train)
    config = with_spacing(config, datasets)
    config = with_intensity(config, datasets.train)
    loader = input_pipeline.create_loader(config, datasets.train, label_space)
    model = create_model(config.model, num_classes=label_space.num_classes, rngs=nnx.Rngs(config.seed))

    mesh = make_mesh()
    with jax.set_mesh(mesh):
        trainer, state = create_trainer(config, model, label_space, mesh)
        changed = check_resume(config, label_space, workdir)  # before any write: a run is never overwritten
        if is_main:  # set-up passed: only now does the workdir become a training run
            if changed:  # the old values stay on record
                with open(workdir / HISTORY_FILE, "a") as f:
                    f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": changed}) + "\n")
                logging.info("Resuming with changed settings (logged to %s): %s", HISTORY_FILE,
                             ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changed.items()))
            files.write_json(workdir / LABEL_SPACE_FILE, label_space.to_json())
            files.write_json(workdir / input_pipeline.SPLIT_FILE, input_pipeline.split_record(datasets))
            files.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
        ckpt = checkpoints.Checkpointer(workdir, keep=config.get("keep_checkpoints", 2))
        start = 0
        metrics: dict[str, float] = {}
        last_loss = float("nan")
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore(checkpoints.abstract_like(state))
            loader.load_state_dict(meta["loader"])
            start = int(meta["step"])
            metrics = dict(meta.get("metrics") or {})  # a finished run resumed: keep its results
            last_loss = float(meta.get("train_loss", float("nan")))
            logging.info("Resumed from step %d in %s", start, workdir)

        for line in startup_summary(config, datasets):
            logging.info("%s", line)
        writer = MetricWriter(workdir, enabled=is_main)
        log_every = config.get("log_every", 10)
        window_start, window_steps = time.perf_counter(), 0
        completed = start  # the last step whose update was applied
        try:
            for step in range(start + 1, config.num_steps + 1):
                images, labels = next(loader)
                state, out = trainer.train_step(state, *shard_batch((images, labels), trainer.data_sharding))
                completed = step
                window_steps += 1
                is_eval = bool(config.eval_every and datasets.val) and (
                    step % config.eval_every == 0 or step == config.num_steps)
                is_ckpt = step % config.checkpoint_every == 0 or step == config.num_steps
                if step % log_every == 0 or is_eval or is_ckpt or step == start + 1:
                    last_loss = float(out["loss"])
                    if not np.isfinite(last_loss):
                        raise FloatingPointError(
                            f"non-finite training loss {last_loss} at step {step}; stopping. The last "
                            f"checkpoint in {workdir / 'checkpoints'} (step {ckpt.latest_step()}) is the last good one"
                        )
                    elapsed = time.perf_counter() - window_start
                    scalars = {"train/loss": last_loss, "train/grad_norm": float(out["grad_norm"])}
                    if step == start + 1:  # its time is mostly compilation: no rate, no ETA from it
                        logging.info("step %d/%d loss %.4f | first step %.1f s (compilation included)", step,
                                     config.num_steps, last_loss, elapsed)
                    else:
                        rate = window_steps / max(elapsed, 1e-9)
                        scalars["train/steps_per_s"] = rate
                        logging.info("step %d/%d loss %.4f | %.2f steps/s | ETA %.0f s", step, config.num_steps,
                                     last_loss, rate, (config.num_steps - step) / max(rate, 1e-9))
                    writer.write_scalars(step, scalars)
                    window_start, window_steps = time.perf_counter(), 0
                if is_eval:
                    model = TrainedModel(trainer.predict, state, config, label_space)
                    metrics = validate(model, datasets.val, val_settings)
                    writer.write_scalars(step, metrics)
                    logging.info("step %d validation: %s", step, _format(metrics))
                if is_ckpt:
                    meta = {"step": step, "loader": loader.state_dict(), "metrics": metrics,
                            "train_loss": last_loss}
                    ckpt.save(step, state, meta, metrics=metrics if is_eval else None)
        except KeyboardInterrupt:
            ckpt.wait()
            raise Interrupted(completed, ckpt.latest_step() or 0) from None
        finally:
            ckpt.close()
            writer.close()
            loader.close()

    result = {**metrics, "train/loss": last_loss}
    if is_main:
        files.write_json(workdir / "results.json", result, sort_keys=True)
    return result


def load_run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a training workdir was run with (its ``config.json``, with the input channels).

    Raises:
      FileNotFoundError: ``workdir`` has no ``config.json``: it is not a training run.
    """
    config_path = Path(workdir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{workdir} is not a training workdir: no config.json")
    return ml_collections.ConfigDict(json.loads(config_path.read_text()))


def load_trained(workdir: str | os.PathLike, *, best: bool = True) -> TrainedModel:
    """Rebuilds a trained model from its workdir (for evaluation, prediction and notebooks).

    Args:
      workdir: a training workdir (``config.json``, ``label_space.json`` and checkpoints).
      best: the best checkpoint by validation Dice when there is one, else the latest.

    Returns:
      A :class:`~labelset_jax.evaluation.TrainedModel`: ``apply_fn(images [N, D, H, W, K], state)``
      gives the logits (of the full-resolution head), with ``state`` the restored weights.

    Raises:
      FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
    """
    workdir = Path(workdir)
    config = load_run_config(workdir)
    if not has_checkpoint(workdir):
        raise FileNotFoundError(f"{workdir}: no checkpoint yet (the run stopped before its first one); "
                                f"rerun its training command to resume")
    space_path = workdir / LABEL_SPACE_FILE
    if space_path.exists():
        label_space = nnunet.label_space_from_json(nnunet.read_json(space_path), where=str(space_path))
    else:  # a run saved before its label space was
        label_space = input_pipeline.label_space_for(config.data)
    model = create_model(config.model, num_classes=label_space.num_classes, rngs=nnx.Rngs(0))
    mesh = make_mesh()
    with jax.set_mesh(mesh):
        trainer, state = create_trainer(config, model, label_space, mesh)
        ckpt = checkpoints.Checkpointer(workdir, create=False)
        use_best = best and ckpt.best is not None and ckpt.best.latest_step() is not None
        state, _ = ckpt.restore(checkpoints.abstract_like(state), best=use_best)
        ckpt.close()
    return TrainedModel(trainer.predict, state, config, label_space)


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in metrics.items())
