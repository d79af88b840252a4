"""The bottom layer every entry point reads its configuration through.

One YAML loader (:func:`load_yaml`), one ``--set a.b=value`` syntax (:func:`parse_sets`,
:func:`apply_sets`), one key checker that suggests the closest key (:func:`check_keys`), one
``HxW`` size parser (:func:`parse_size`, :func:`size_arg` for argparse), and the typed frozen
recipes (:func:`from_mapping`): a recipe is checked once where it enters (CLI or YAML) and is
passed down as an object. Imports nothing from the rest of the package but ``errors``.
"""

from vilocal_dist.config.files import load_yaml
from vilocal_dist.config.keys import check_keys, closest
from vilocal_dist.config.recipe import check_number, coerce, from_mapping
from vilocal_dist.config.sets import apply_sets, deep_merge, parse_sets, set_dotted
from vilocal_dist.config.size import parse_size, size_arg

__all__ = [
    "apply_sets", "check_keys", "check_number", "closest", "coerce", "deep_merge", "from_mapping", "load_yaml", "parse_sets",
    "parse_size", "set_dotted", "size_arg",
]  # fmt: skip
