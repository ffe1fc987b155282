"""Loader: determinism, save/restore, prefetch shutdown, worker errors, per-process slices."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from labelset_jax.data import AugmentConfig, Case, Loader, normalize_image, phantom_cohort
from labelset_jax.data import loader as loader_module
from labelset_jax.labelsets import FETAL_BRAIN

PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def cases():
    return phantom_cohort({"full": 2, "wm_vent_cereb": 2, "plus_ecsf": 1}, shape=(32, 32, 32)).cases


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_batches_shape_dtype_and_valid_ids(cases):
    with Loader(cases, batch_size=3, patch_size=PATCH, seed=0, space=FETAL_BRAIN) as loader:
        for x, y in take(loader, 4):
            assert x.shape == (3, *PATCH, 1) and x.dtype == np.float32
            assert y.shape == (3, *PATCH) and y.dtype == np.int32
            FETAL_BRAIN.validate(y)
            assert np.all(np.isfinite(x))


def test_same_seed_same_batches_other_seed_other_batches(cases):
    with Loader(cases, batch_size=2, patch_size=PATCH, seed=1) as a:
        with Loader(cases, batch_size=2, patch_size=PATCH, seed=1, prefetch=0) as b:
            assert_same(take(a, 5), take(b, 5))
    with Loader(cases, batch_size=2, patch_size=PATCH, seed=2) as c:
        x_c, _ = next(c)
    x_a, _ = Loader(cases, batch_size=2, patch_size=PATCH, seed=1, prefetch=0).batch(0)
    assert not np.allclose(x_a, x_c)


def test_epochs_visit_every_case_once(cases):
    loader = Loader(cases, batch_size=1, patch_size=PATCH, seed=3, prefetch=0)
    for epoch in range(3):
        seen = sorted(loader.case_index(epoch * 5 + j, 0) for j in range(5))
        assert seen == [0, 1, 2, 3, 4]
    # batches straddling an epoch boundary: positions continue into the next permutation
    loader = Loader(cases, batch_size=2, patch_size=PATCH, seed=3, prefetch=0)
    stream = [loader.case_index(b, j) for b in range(5) for j in range(2)]
    assert sorted(stream[:5]) == sorted(stream[5:]) == [0, 1, 2, 3, 4]


def test_save_restore_resumes_exactly(cases):
    with Loader(cases, batch_size=2, patch_size=PATCH, seed=4) as uninterrupted:
        reference = take(uninterrupted, 7)
    with Loader(cases, batch_size=2, patch_size=PATCH, seed=4) as first:
        assert_same(take(first, 3), reference[:3])
        state = json.loads(json.dumps(first.state_dict()))  # JSON-able
        take(first, 2)  # the run goes on a little (and prefetches) before it dies
    assert state["step"] == 3 and state["epoch"] == 1
    with Loader(cases, batch_size=2, patch_size=PATCH, seed=4) as resumed:
        resumed.load_state_dict(state)
        assert_same(take(resumed, 4), reference[3:])
        resumed.load_state_dict({**state, "step": 1})  # rewinding works too, with a live worker
        assert_same(take(resumed, 2), reference[1:3])


def test_load_state_dict_rejects_other_loaders(cases):
    state = Loader(cases, batch_size=2, patch_size=PATCH, seed=4, prefetch=0).state_dict()
    other = Loader(cases, batch_size=4, patch_size=PATCH, seed=4, prefetch=0)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(state)


def test_process_slices_concatenate_to_the_global_batch(cases):
    with Loader(cases, batch_size=4, patch_size=PATCH, seed=5) as full:
        reference = take(full, 3)
    slices = []
    for index in range(2):
        with Loader(cases, batch_size=4, patch_size=PATCH, seed=5, process_index=index, process_count=2) as part:
            slices.append(take(part, 3))
            assert part.local_batch_size == 2
    for b in range(3):
        np.testing.assert_array_equal(np.concatenate([slices[0][b][0], slices[1][b][0]]), reference[b][0])
        np.testing.assert_array_equal(np.concatenate([slices[0][b][1], slices[1][b][1]]), reference[b][1])
    with pytest.raises(ValueError, match="divisible"):
        Loader(cases, batch_size=3, patch_size=PATCH, seed=0, process_count=2)


def test_worker_exception_reaches_the_consumer(cases, monkeypatch):
    real = loader_module.augment_patch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(loader_module, "augment_patch", flaky)
    loader = Loader(cases, batch_size=2, patch_size=PATCH, seed=0)
    take(loader, 2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(loader)
    with pytest.raises(RuntimeError, match="disk on fire"):  # it stays failed
        next(loader)
    loader.close()
    assert loader._thread is None


def test_close_stops_a_blocked_worker(cases):
    loader = Loader(cases, batch_size=1, patch_size=PATCH, seed=0, prefetch=1)
    next(loader)
    worker = loader._thread
    time.sleep(0.1)  # the worker fills the queue and blocks on put
    assert worker.is_alive() and worker in threading.enumerate()
    loader.close()
    assert not worker.is_alive()
    loader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_augmentation_off_gives_plain_normalised_patches(cases):
    case = cases[0]
    loader = Loader([case], batch_size=1, patch_size=(32, 32, 32), seed=0, augment=False, prefetch=0)
    x, y = loader.batch(0)
    np.testing.assert_array_equal(y[0], case.labels)  # the only patch that fits is the volume
    np.testing.assert_array_equal(x[0, ..., 0], normalize_image(case.image))  # as at evaluation
    raw = Loader([case], batch_size=1, patch_size=(32, 32, 32), seed=0, augment=False, prefetch=0, normalize=False)
    np.testing.assert_array_equal(raw.batch(0)[0][0, ..., 0], case.image)
    always_zoom = AugmentConfig(zoom_prob=1.0)
    zoomed = Loader([case], batch_size=1, patch_size=PATCH, seed=0, augment=always_zoom, prefetch=0)
    assert zoomed.batch(0)[1].shape == (1, *PATCH)


def test_channels_share_one_spatial_transform_and_are_normalised_apart(cases):
    """A two-channel case (the image, and the image ×3) gives [B, D, H, W, 2] patches whose
    channels are both the single-channel patch once each is normalised (zoom and flip on,
    intensity augmentation off)."""
    case = cases[0]
    two = Case("two", np.stack([case.image, 3 * case.image], -1), case.labels, case.spacing)
    assert two.num_channels == 2 and case.num_channels == 1
    spatial = AugmentConfig(zoom_prob=1.0, flip_prob=0.5, noise_prob=0.0, contrast_prob=0.0, gamma_prob=0.0)
    one = Loader([case], batch_size=2, patch_size=PATCH, seed=3, augment=spatial, prefetch=0).batch(4)
    x, y = Loader([two], batch_size=2, patch_size=PATCH, seed=3, augment=spatial, prefetch=0).batch(4)
    assert x.shape == (2, *PATCH, 2)
    np.testing.assert_array_equal(y, one[1])
    np.testing.assert_allclose(x[..., 0], one[0][..., 0], atol=1e-6)
    np.testing.assert_allclose(x[..., 1], one[0][..., 0], atol=1e-4)
    with pytest.raises(ValueError, match="every case needs the same channels"):
        Loader([case, two], batch_size=1, patch_size=PATCH, seed=0)


def test_bad_arguments(cases):
    with pytest.raises(ValueError, match="seed"):
        Loader(cases, batch_size=1, patch_size=PATCH, seed=-1)
    with pytest.raises(ValueError, match="at least one"):
        Loader([], batch_size=1, patch_size=PATCH, seed=0)
    bad = [Case("bad_case", np.zeros((8, 8, 8)), np.full((8, 8, 8), 42, np.int32), (1, 1, 1))]
    with pytest.raises(ValueError, match=r"bad_case: label value\(s\) \[42\] are neither"):
        Loader(bad, batch_size=1, patch_size=PATCH, seed=0, space=FETAL_BRAIN)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_full_fraction_sets_the_share_of_fully_annotated_samples(cases, fraction):
    loader = Loader(cases, batch_size=2, patch_size=PATCH, seed=3, prefetch=0, full_fraction=fraction)
    picks = np.array([[loader.case_index(step, j) for j in range(2)] for step in range(40)])
    full = np.array([cases[k].protocol == "full" for k in picks.ravel()]).reshape(picks.shape)
    assert full.mean() == fraction
    if fraction == 0.5:  # batch of 2: one fully and one partially annotated case in every batch
        assert np.all(full.sum(1) == 1)
    # within each group, the cases are visited evenly (epochs of permutations)
    counts = np.bincount(picks.ravel(), minlength=len(cases))
    for members in ([k for k, c in enumerate(cases) if c.protocol == "full"],
                    [k for k, c in enumerate(cases) if c.protocol != "full"]):
        assert np.ptp(counts[members]) <= 1
    again = Loader(cases, batch_size=2, patch_size=PATCH, seed=3, prefetch=0, full_fraction=fraction)
    assert_same([loader.batch(s) for s in (0, 7)], [again.batch(s) for s in (0, 7)])  # pure in (seed, step)


def test_full_fraction_none_keeps_uniform_sampling_and_bad_values_fail(cases):
    uniform = Loader(cases, batch_size=2, patch_size=PATCH, seed=3, prefetch=0)
    picks = [uniform.case_index(step, j) for step in range(10) for j in range(2)]
    assert np.bincount(picks).tolist() == [4] * len(cases)  # every epoch a permutation of all cases
    only_full = [c for c in cases if c.protocol == "full"]
    one_group = Loader(only_full, batch_size=2, patch_size=PATCH, seed=3, prefetch=0, full_fraction=0.5)
    assert one_group.full_fraction is None  # one group: nothing to balance
    with pytest.raises(ValueError, match="full_fraction"):
        Loader(cases, batch_size=2, patch_size=PATCH, seed=3, full_fraction=1.5)


def test_validation_only_builds_no_training_case():
    from configs import partial_supervision
    from labelset_jax import input_pipeline

    data = partial_supervision.get_config("full_only,smoke").data
    both = input_pipeline.create_datasets(data, seed=0)
    only = input_pipeline.create_datasets(data, seed=0, train=False)
    assert only.train == [] and both.train
    assert [c.id for c in only.val] == [c.id for c in both.val]
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(only.val, both.val))
