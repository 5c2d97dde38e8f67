"""Private helpers shared by the dataset loaders and generators."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

#: Types accepted wherever a ``random_state`` argument is documented.
RandomState = Union[int, np.integer, np.random.Generator, np.random.SeedSequence, None]

#: Environment variable that points at the shared data folder (``.../shared/data``).
SHARED_DATA_ENV = "BCNMF_SC_SHARED_DATA"

#: Folder holding the files bundled inside the package.
DATA_DIR = Path(__file__).resolve().parent / "data"


def get_rng(random_state: RandomState) -> np.random.Generator:
    """Return a fresh :class:`numpy.random.Generator` for ``random_state``.

    An integer, a :class:`~numpy.random.SeedSequence` or ``None`` seed a new generator
    (``None`` draws fresh OS entropy); a :class:`~numpy.random.Generator` is used as is,
    so the caller's generator advances.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, (bool, np.bool_)):
        raise TypeError("random_state must be an int, a numpy Generator/SeedSequence or None, not bool")
    if random_state is None or isinstance(random_state, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(random_state)
    raise TypeError(
        "random_state must be an int, a numpy Generator/SeedSequence or None, "
        f"got {type(random_state).__name__}"
    )


def describe_seed(random_state: RandomState) -> int | str:
    """A plain (h5ad-writable) description of ``random_state`` for ``uns``."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, (bool, np.bool_)):
        return int(random_state)
    if random_state is None:
        return "None"
    return type(random_state).__name__


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Validate an integer argument and return it as a Python ``int``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def shared_data_dir() -> Path:
    """Folder of the project's shared (unbundled) data.

    ``$BCNMF_SC_SHARED_DATA`` when set, else ``<repository root>/../shared/data``, i.e.
    ``Path(bcnmf_sc.__file__).parents[2] / "shared" / "data"``.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    # this file: <root>/bcnmf_sc/datasets/_utils.py -> parents[2] == <root>
    return Path(__file__).resolve().parents[3] / "shared" / "data"
