"""A deterministic, resumable, prefetching patch loader.

Batch ``b`` is a pure function of ``(seed, b)``:

* the cases form an endless stream, epoch after epoch, each epoch a permutation of the cases drawn
  from ``SeedSequence([seed, 0, epoch, 0])``; batch ``b`` takes stream positions
  ``b·B .. b·B + B - 1`` (``B`` the global batch size);
* sample ``j`` of batch ``b`` is augmented with its own ``Generator`` seeded by
  ``SeedSequence([seed, 1, b, j])``;
* with ``full_fraction = f``, the stream alternates between two sub-streams instead: position
  ``n`` is a fully annotated case (``Case.is_full``) iff ``⌊(n+1)f⌋ > ⌊nf⌋``, so a fraction
  ``f`` of every run of positions is (to within one); each sub-stream runs through its own
  epochs of permutations (``SeedSequence([seed, 0, epoch, 1])`` for the full cases,
  ``[seed, 0, epoch, 2]`` for the others). With a batch of 2 and ``f = 1/2``, every batch holds
  one fully and one partially annotated case.

Hence the loader's whole state is the step counter (:meth:`Loader.state_dict`): restoring it
resumes exactly where an uninterrupted run would be, whatever happened to the prefetch queue, and
every process of a multi-host job computes consistent slices of the same global batch without any
communication.

Multi-process (``process_count > 1``): each process yields its *slice* of every global batch,
samples ``[i·B/P, (i+1)·B/P)`` for process ``i`` of ``P`` (``B`` must be divisible by ``P``), and
only computes those. Concatenating the slices of all processes in process order gives the global
batch; with JAX, build the global array with ``jax.make_array_from_process_local_data``.

Example:

>>> from labelset_jax.data.datasets import phantom_cohort
>>> cases = phantom_cohort({"full": 2}, shape=(32, 32, 32)).cases
>>> with Loader(cases, batch_size=2, patch_size=(16, 16, 16), seed=0) as loader:
...     image, labels = next(loader)
...     state = loader.state_dict()
>>> image.shape, image.dtype, labels.shape, labels.dtype
((2, 16, 16, 16, 1), dtype('float32'), (2, 16, 16, 16), dtype('int32'))
>>> state["step"]
1
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from labelset_jax.data.case import Case
from labelset_jax.data.transforms import AugmentConfig, augment_patch, foreground_index, normalize_image
from labelset_jax.labelsets import LabelSpace, validate_labels

__all__ = ["Loader"]

_STATE_VERSION = 1
_TAG_PERMUTATION, _TAG_SAMPLE = 0, 1


class _Failure:
    """An exception raised in the worker thread, passed to the consumer through the queue."""

    def __init__(self, error: BaseException):
        self.error = error


class Loader:
    """Random training patches of a list of cases, batched, prefetched in a background thread.

    Iterating yields ``(image float32 [B, D, H, W, K], labels int32 [B, D, H, W])`` NumPy batches
    forever (``B`` the per-process batch size, ``(D, H, W) = patch_size``, ``K`` the cases' input
    channels, 1 for ``[D, H, W]`` images). Use it as a context
    manager or call :meth:`close` to stop the worker thread. An exception in the worker is
    re-raised by the next ``next()``.

    Preprocessing happens once in the constructor: each image is normalised by
    :func:`~labelset_jax.data.transforms.normalize_image` (as at evaluation and prediction), and
    the foreground voxels are indexed for foreground-biased patches. The intensity augmentation
    acts inside the brain ``labels != 0``.

    Args:
      cases: the :class:`~labelset_jax.data.case.Case` records (raw images).
      batch_size: the *global* batch size ``B``.
      patch_size: the patch shape ``(D, H, W)``; patches larger than a volume are padded (image 0,
        labels background).
      seed: a non-negative integer; the batches are a pure function of ``(seed, step)``.
      augment: ``True`` for the default :class:`~labelset_jax.data.transforms.AugmentConfig`, an
        ``AugmentConfig``, or ``False`` for plain random patches.
      foreground_prob: probability of centring a patch on a random foreground label id.
      prefetch: number of batches computed ahead in the background thread (0: no thread, batches
        are computed in ``next()``).
      process_index: this process's index ``i`` (``jax.process_index()``).
      process_count: the number of processes ``P`` (``jax.process_count()``); ``B % P == 0``.
      normalize: normalise the images (``False`` if they are already normalised).
      intensity: per-channel dataset statistics for :func:`~labelset_jax.data.transforms.normalize_image`
        (CT channels), or ``None``.
      space: when given, every label map is checked to hold ids of this label space.
      foreground_ids: the label ids patches are centred on with ``foreground_prob``; default the
        ``space``'s :attr:`~labelset_jax.labelsets.LabelSpace.foreground_ids` (sets that may be
        background, such as the ignore label, excluded), or every id but 0 without a ``space``.
      full_fraction: the fraction of the samples drawn from the fully annotated cases
        (``Case.is_full``), the others from the rest; ``None`` (default) samples all cases uniformly.
        Ignored when either group is empty.

    Raises:
      ValueError: bad sizes, seeds or process indices, or invalid label ids (with ``space``).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        batch_size: int,
        patch_size: Sequence[int],
        seed: int,
        augment: bool | AugmentConfig = True,
        foreground_prob: float = 0.33,
        prefetch: int = 2,
        process_index: int = 0,
        process_count: int = 1,
        normalize: bool = True,
        intensity: Sequence[dict | None] | None = None,
        space: LabelSpace | None = None,
        foreground_ids: Sequence[int] | None = None,
        full_fraction: float | None = None,
    ):
        if len(cases) == 0:
            raise ValueError("the loader needs at least one case")
        if batch_size < 1 or int(batch_size) != batch_size:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive sizes, got {patch_size}")
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"foreground_prob must be in [0, 1], got {foreground_prob}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if full_fraction is not None and not 0.0 <= full_fraction <= 1.0:
            raise ValueError(f"full_fraction must be in [0, 1] or None, got {full_fraction}")

        self.batch_size = int(batch_size)
        self.patch_size = patch_size
        self.seed = int(seed)
        self.config = augment if isinstance(augment, AugmentConfig) else (AugmentConfig() if augment else None)
        self.foreground_prob = float(foreground_prob)
        self.prefetch = int(prefetch)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch_size = self.batch_size // self.process_count

        if foreground_ids is None and space is not None:
            foreground_ids = space.foreground_ids
        self._images, self._labels, self._fg = [], [], []
        self.num_channels = cases[0].num_channels if cases else 1
        for k, case in enumerate(cases):
            if case.num_channels != self.num_channels:
                raise ValueError(f"case {case.id} has {case.num_channels} input channels, case {cases[0].id} "
                                 f"{self.num_channels}: every case needs the same channels")
            if space is not None:
                validate_labels(case.labels, space, what=case.id)
            labels = np.asarray(case.labels, np.int32)
            image = (normalize_image(case.image, intensity=intensity) if normalize
                     else np.asarray(case.image, np.float32))
            self._images.append(image)
            self._labels.append(labels)
            self._fg.append(foreground_index(labels, seed=k, foreground_ids=foreground_ids)
                            if foreground_prob > 0 else None)

        full = [k for k, case in enumerate(cases) if case.is_full]
        rest = [k for k, case in enumerate(cases) if not case.is_full]
        self.full_fraction = None if full_fraction is None or not (full and rest) else float(full_fraction)
        self._groups = (np.array(full), np.array(rest))
        self._permutations: dict[tuple[int, int], np.ndarray] = {}  # (epoch, group) -> order (a small cache)
        self._step = 0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ the pure part
    @property
    def num_cases(self) -> int:
        return len(self._images)

    @property
    def step(self) -> int:
        """The index of the next batch ``next()`` returns."""
        return self._step

    @property
    def epoch(self) -> int:
        """The epoch of the next batch's first sample."""
        return self._step * self.batch_size // self.num_cases

    def _permutation(self, epoch: int, group: int = 0, size: int | None = None) -> np.ndarray:
        perm = self._permutations.get((epoch, group))
        if perm is None:
            seq = np.random.SeedSequence([self.seed, _TAG_PERMUTATION, epoch, group])
            perm = np.random.Generator(np.random.PCG64(seq)).permutation(self.num_cases if size is None else size)
            if len(self._permutations) > 8:
                self._permutations.clear()
            self._permutations[epoch, group] = perm
        return perm

    def case_index(self, step: int, j: int) -> int:
        """The case of sample ``j`` (global position in the batch) of batch ``step``."""
        position = step * self.batch_size + j
        if self.full_fraction is None:
            epoch, offset = divmod(position, self.num_cases)
            return int(self._permutation(epoch)[offset])
        f = self.full_fraction
        before = int(np.floor(round(position * f, 9)))  # full-case positions before this one
        is_full = int(np.floor(round((position + 1) * f, 9))) > before
        members = self._groups[0 if is_full else 1]
        epoch, offset = divmod(before if is_full else position - before, len(members))
        return int(members[self._permutation(epoch, 1 if is_full else 2, len(members))[offset]])

    def sample(self, step: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``j`` (global position) of batch ``step``: ``(image [D, H, W] (+ [K] with K > 1
        channels), labels [D, H, W])``."""
        k = self.case_index(step, j)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _TAG_SAMPLE, step, j])))
        return augment_patch(
            self._images[k],
            self._labels[k],
            rng,
            patch_size=self.patch_size,
            config=self.config,
            foreground_prob=self.foreground_prob,
            fg_index=self._fg[k],
        )

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's slice of batch ``step`` (a pure function of ``(seed, step)``; no state
        is touched). Thread-safe."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        first = self.process_index * self.local_batch_size
        images = np.empty((self.local_batch_size, *self.patch_size, self.num_channels), np.float32)
        labels = np.empty((self.local_batch_size, *self.patch_size), np.int32)
        for i in range(self.local_batch_size):
            image, labels[i] = self.sample(step, first + i)
            images[i] = image.reshape(images.shape[1:])
        return images, labels

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, int]:
        """A small JSON-able state: the next step (the rest only guards against misuse)."""
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "step": self._step,
            "epoch": self.epoch,
            "batch_size": self.batch_size,
            "num_cases": self.num_cases,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes at ``state["step"]``: the next batches equal those of an uninterrupted run.

        Raises:
          ValueError: the state comes from a loader with another seed, batch size or case count.
        """
        for key in ("seed", "batch_size", "num_cases"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]}, this loader has {getattr(self, key)}")
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self._stop_worker()
        self._failure = None
        self._step = step

    # ------------------------------------------------------------------ iteration and prefetch
    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._closed:
            raise RuntimeError("the loader is closed")
        if self._failure is not None:
            raise self._failure
        if self.prefetch == 0:
            result = self.batch(self._step)
        else:
            if self._thread is None:
                self._start_worker()
            item = self._queue.get()
            if isinstance(item, _Failure):
                self._failure = item.error
                self._thread.join()
                self._thread = None
                raise item.error
            step, result = item
            assert step == self._step, (step, self._step)
        self._step += 1
        return result

    def _start_worker(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(
            target=self._work, args=(self._step, self._queue, self._stop), name="labelset-loader", daemon=True
        )
        self._thread.start()

    def _work(self, step: int, out: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item: Any = (step, self.batch(step))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                item = _Failure(e)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return
            step += 1

    def _stop_worker(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread, self._queue = None, None

    def close(self) -> None:
        """Stops the worker thread (idempotent). Further ``next()`` calls raise ``RuntimeError``."""
        self._stop_worker()
        self._closed = True

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
