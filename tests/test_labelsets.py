"""The label-set algebra: construction, validation, notations and their round trips, protocols."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelset_jax.labelsets import (
    FETAL_BRAIN,
    FETAL_BRAIN_PROTOCOLS,
    AnnotationProtocol,
    LabelSpace,
    validate_labels,
)


def test_fetal_brain_space_matches_spec():
    assert FETAL_BRAIN.num_classes == 9 and FETAL_BRAIN.num_ids == 12
    assert FETAL_BRAIN.names[5] == "cortical_gm"
    assert FETAL_BRAIN.to_superset_map() == {9: [4, 5, 6, 7, 8], 10: [5, 6, 7, 8], 11: [5, 6, 7]}
    np.testing.assert_array_equal(FETAL_BRAIN.set_sizes, [1] * 9 + [5, 4, 3])
    assert FETAL_BRAIN.membership.shape == (12, 9)
    np.testing.assert_array_equal(FETAL_BRAIN.membership[:9], np.eye(9, dtype=bool))
    assert not FETAL_BRAIN.membership.flags.writeable


def test_hashable_and_usable_as_static_argument():
    same = LabelSpace.from_superset_map(9, FETAL_BRAIN.to_superset_map(), names=FETAL_BRAIN.names)
    assert same == FETAL_BRAIN and hash(same) == hash(FETAL_BRAIN)

    @jax.jit
    def count(labels, space=FETAL_BRAIN):
        return jnp.asarray(space.set_sizes)[labels].sum()

    assert int(count(jnp.array([0, 9, 11]))) == 9
    f = jax.jit(lambda x, space: x + space.num_classes, static_argnums=1)
    assert int(f(jnp.array(1), FETAL_BRAIN)) == 10


def test_lookups():
    assert FETAL_BRAIN.id_of("wm") == 1
    assert FETAL_BRAIN.id_of([5, 6, 7]) == 11
    assert FETAL_BRAIN.id_of({7, 6, 5, 8}) == 10
    assert FETAL_BRAIN.id_of([3]) == 3
    assert FETAL_BRAIN.leaves_of(9) == (4, 5, 6, 7, 8)
    assert FETAL_BRAIN.leaves_of(2) == (2,)
    assert FETAL_BRAIN.name_of(10) == "set_10"
    with pytest.raises(ValueError, match="unknown label name 'gm'"):
        FETAL_BRAIN.id_of("gm")
    with pytest.raises(ValueError, match="no label set with members"):
        FETAL_BRAIN.id_of([1, 2])
    with pytest.raises(ValueError, match="unknown label id 12"):
        FETAL_BRAIN.leaves_of(12)


@pytest.mark.parametrize(
    "num_classes, superset_map, names, message",
    [
        (4, {3: [2, 3]}, None, "larger than each of its members"),
        (4, {4: []}, None, "is empty"),
        (4, {4: [2, 7]}, None, r"unknown member\(s\) \[7\]"),
        (4, {5: [1, 2], 4: [2, 1]}, None, "same members"),
        (2, {}, ["a", "a"], "duplicate label name"),
        (3, {}, ["a", "b"], "2 leaf names for num_classes=3"),
        (4, {4: [2]}, None, "single leaf"),
    ],
)
def test_construction_errors(num_classes, superset_map, names, message):
    with pytest.raises(ValueError, match=message):
        LabelSpace.from_superset_map(num_classes, superset_map, names=names)


def test_superset_map_round_trip():
    space = LabelSpace.from_superset_map(5, {5: [3, 4], 8: [1, 2, 3, 4]})
    assert LabelSpace.from_superset_map(5, space.to_superset_map()) == space
    assert space.num_ids == 9
    assert not space.valid_ids[6] and space.set_sizes[6] == 0
    with pytest.raises(ValueError, match=r"\[6\]"):
        validate_labels(np.array([0, 6, 8]), space)


BRATS = {
    "background": 0, "edema": 1, "non_enhancing": 2, "enhancing": 3,
    "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "ignore": 4,
}


def test_nnunet_regions_and_ignore_round_trip():
    space = LabelSpace.from_nnunet(BRATS)
    assert space.num_classes == 4 and space.ignore_id == 4
    assert space.leaves_of(4) == (0, 1, 2, 3)
    assert space.leaves_of(space.id_of("whole_tumor")) == (1, 2, 3)
    assert space.to_nnunet() == BRATS
    assert LabelSpace.from_nnunet(space.to_nnunet()) == space
    # the superset map carries the same sets
    again = LabelSpace.from_superset_map(4, space.to_superset_map(), names=space.names,
                                         set_names=dict(zip(space.set_ids, space.set_names)), ignore_id=4)
    assert again == dataclasses.replace(space, region_ids=())  # a superset map does not say which sets are regions


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"background": 0, "a": 2}, "missing"),
        ({"background": 0, "a": 1, "ignore": 1}, "larger than every leaf"),
        ({"background": 0, "a": 1, "b": 1}, "named twice"),
        ({"background": 0, "a": 1, "r": [1, 5]}, r"no gap; missing \[2, 3, 4\]"),
        ({"background": 0, "a": "x"}, "an integer id or a list"),
    ],
)
def test_nnunet_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        LabelSpace.from_nnunet(labels)


def test_with_ignore_and_with_set():
    space, ignore = LabelSpace.leaves(["bg", "a", "b"]).with_ignore()
    assert ignore == 3 and space.ignore_id == 3 and space.leaves_of(3) == (0, 1, 2)
    assert space.to_nnunet() == {"bg": 0, "a": 1, "b": 2, "ignore": 3}
    same, same_id = space.with_set([0, 1, 2])
    assert same is space and same_id == 3
    bigger, new_id = space.with_set([1, 2], name="fg")
    assert new_id == 4 and bigger.name_of(4) == "fg"


def test_validate_labels_messages():
    with pytest.raises(ValueError, match=r"case_7.nii.gz: label value\(s\) \[12, 40\] are neither"):
        validate_labels(np.array([[0, 12], [40, 9]]), FETAL_BRAIN, what="case_7.nii.gz")
    with pytest.raises(ValueError, match="integer label map"):
        validate_labels(np.array([0.5]), FETAL_BRAIN)
    validate_labels(np.arange(12), FETAL_BRAIN)


def test_protocols_of_the_reference_study():
    full = np.arange(9)
    expected = {
        "full": list(range(9)),
        "wm_vent_cereb": [0, 1, 2, 3, 9, 9, 9, 9, 9],
        "plus_ecsf": [0, 1, 2, 3, 4, 10, 10, 10, 10],
        "plus_ecsf_cc": [0, 1, 2, 3, 4, 11, 11, 11, 8],
    }
    for name, protocol in FETAL_BRAIN_PROTOCOLS.items():
        assert protocol.apply(full).tolist() == expected[name]
        assert np.asarray(jax.jit(protocol.apply)(jnp.asarray(full))).tolist() == expected[name]
        assert protocol.space == FETAL_BRAIN  # the sets already exist: nothing added


def test_protocol_adds_the_needed_set():
    space = LabelSpace.leaves(["bg", "a", "b", "c"])
    protocol = space.protocol(["bg", "a"])
    assert protocol.set_id == 4 and protocol.space.leaves_of(4) == (2, 3)
    assert protocol.apply(np.array([0, 1, 2, 3])).tolist() == [0, 1, 4, 4]
    # annotating all but one leaf determines that leaf too: no set is needed
    assert space.protocol([0, 1, 2]).is_full
    with pytest.raises(ValueError, match="must be leaves"):
        FETAL_BRAIN.protocol([0, 9])
    with pytest.raises(ValueError, match="full segmentations"):
        protocol.apply(np.array([0, 4]))
    assert isinstance(protocol, AnnotationProtocol)


@pytest.mark.parametrize("labels, message", [
    ({"background": 0, "a": 1, "b": 2, "only_b": [2]}, r"region 'only_b' = \[2\] is a single leaf; write 2"),
    ({"background": 0, "a": 1, "ab": [1, -5]}, r"region 'ab' names \[-5\], which are not leaf ids"),
])
def test_nnunet_region_errors_name_the_region(labels, message):
    with pytest.raises(ValueError, match=message):
        LabelSpace.from_nnunet(labels)
