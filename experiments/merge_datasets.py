r"""Merge nnU-Net datasets that annotate different structures into one label-set dataset.

    python -m experiments.merge_datasets --input=data/Dataset001_Atlas --input=data/Dataset002_Lesions \
        --output=data/Dataset003_Merged
    python -m experiments.merge_datasets --input=A --input=B --rename=B:tumour=lesion --output=C

Leaves are unified by name (``--rename=SOURCE:OLD=NEW`` for synonyms); each source's background
becomes the label set of the background and the leaves that source does not annotate; label sets
and the ignore label are kept; case ids are prefixed with the source name (the folder name without
``DatasetXXX_``, or ``--names``) and ``dataset.json`` records each case's source, so that
``experiments/evaluate.py`` reports per source. The rules: :mod:`labelset_jax.data.merge`.

Every input is checked and the merge planned before anything is written; the output folder
appears complete or not at all. A bad input or a conflict (one name, two meanings) exits with
status 2 and one line.
"""

from __future__ import annotations

from absl import app, flags

from labelset_jax import cli
from labelset_jax.data.merge import merge_datasets
from labelset_jax.data.nnunet import DatasetError

_INPUT = flags.DEFINE_multi_string("input", None, "A dataset folder to merge (repeat the flag, in order).")
_OUTPUT = flags.DEFINE_string("output", None, "The merged dataset folder to create.")
_RENAME = flags.DEFINE_multi_string("rename", [], "SOURCE:OLD=NEW, a label of one source renamed before merging.")
_NAMES = flags.DEFINE_list("names", None, "The sources' names, in --input order (default: the folder names).")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
    cli.start(argv)
    try:
        path, plan = merge_datasets(_INPUT.value, _OUTPUT.value, renames=_RENAME.value, names=_NAMES.value)
    except DatasetError as e:
        cli.fail(str(e))
    space = plan.space
    print(f"wrote {path.parent}: leaves {', '.join(space.names)}")
    for set_id, members, name in zip(space.set_ids, space.set_members, space.set_names):
        print(f"  label set {name} (id {set_id}) = {{{', '.join(space.names[c] for c in members)}}}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
