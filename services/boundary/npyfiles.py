"""The reference's boundary files: .npy bytes (float64, (1, d)) and {gan}_{dataset}_{attr}[_c_{conds}][_w]_boundary.npy."""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import numpy as np

SUFFIX = "_boundary.npy"
#: First tokens of the reference's model names, which are `{gan}_{dataset}` (two tokens). Names of this
#: project's registry use hyphens (`dcgan-digiface-64`), so any other first token is the whole model name.
REFERENCE_GANS = ("pggan", "stylegan", "stylegan2", "stylegan3", "biggan", "progan", "dcgan")
SPACE_SUFFIX = {2: "_w", 3: "_wp"}
MAX_DIMENSION = 1 << 16


def file_name(model: str, attribute: str, space: int) -> str:
    """Conventional name: model, attribute, `_c_` + conditions if conditional, `_w`/`_wp` for W/W+."""
    target, *conditions = attribute.split("|")
    middle = target + (f"_c_{'_'.join(conditions)}" if conditions else "")
    return f"{model}_{middle}{SPACE_SUFFIX.get(space, '')}{SUFFIX}"


def parse_file_name(name: str, known_models: set[str] | frozenset = frozenset()) -> tuple[str, str, int]:
    """Reads (model, attribute, space) from a conventional name.

    The model is the longest known model name the stem starts with; else `{gan}_{dataset}` when the first
    token is a reference GAN name; else the first token. Conditions after `_c_` become `target|c1|c2`.
    Space: `_wp` W+, `_w` W, none Z.

    Raises:
        ValueError: the name does not follow the convention (the message shows an example).
    """
    base = PurePosixPath(name.replace("\\", "/")).name
    example = "e.g. stylegan_ffhq_age_w_boundary.npy or dcgan-digiface-64_gender_c_age_boundary.npy"
    if not base.endswith(SUFFIX) or len(base) <= len(SUFFIX):
        raise ValueError(f"file name {name!r} does not end with {SUFFIX!r}; {example}")
    stem = base[: -len(SUFFIX)]
    space = 1
    for value, suffix in sorted(SPACE_SUFFIX.items(), key=lambda kv: -len(kv[1])):
        if stem.endswith(suffix):
            stem, space = stem[: -len(suffix)], value
            break
    matches = [m for m in known_models if stem.startswith(m + "_")]
    tokens = stem.split("_")
    if matches:
        model = max(matches, key=len)
    elif tokens[0] in REFERENCE_GANS and len(tokens) >= 3:
        model = "_".join(tokens[:2])
    else:
        model = tokens[0]
    rest = stem[len(model) + 1:]
    if not rest:
        raise ValueError(f"file name {name!r} names no attribute after the model {model!r}; {example}")
    target, sep, conditions = rest.partition("_c_")
    if sep and (not target or not conditions):
        raise ValueError(f"file name {name!r}: '_c_' must sit between an attribute and its conditions; {example}")
    attribute = "|".join([target, *conditions.split("_")]) if sep else target
    return model, attribute, space


def load_npy(data: bytes) -> np.ndarray:
    """Reads a boundary .npy (float32/float64, (1, d) or (d)) without pickles; returns (1, d) float64."""
    try:
        # The header first: a tiny file must not make numpy allocate the array it claims before it is checked.
        fp = io.BytesIO(data)
        version = np.lib.format.read_magic(fp)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fp)
        if dtype.hasobject or int(np.prod(shape, dtype=np.int64)) > MAX_DIMENSION:
            raise ValueError(f"header claims dtype {dtype} and shape {shape}")
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises SyntaxError, TokenError, TypeError ... too
        raise ValueError(f"not a readable .npy file ({type(e).__name__}: {e}); expected float32 or float64 of shape "
                         f"(1, d) or (d), at most {MAX_DIMENSION} values") from None
    if not isinstance(array, np.ndarray) or array.dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype {getattr(array, 'dtype', type(array))} is not accepted; expected float32 or float64")
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[0] != 1) or array.size == 0:
        raise ValueError(f"shape {array.shape} is not accepted; expected (1, d) or (d)")
    if array.size > MAX_DIMENSION:
        raise ValueError(f"dimension {array.size} exceeds the limit of {MAX_DIMENSION}")
    array = array.astype(np.float64).reshape(1, -1)
    if not np.isfinite(array).all() or not np.linalg.norm(array) > 0:
        raise ValueError("the normal must be finite and non-zero")
    if not np.isfinite(np.linalg.norm(array)):  # each value finite, the length not: 1e308 x 100 overflows
        raise ValueError("the normal's length overflows float64; expected finite values whose length is finite "
                         "too (e.g. a unit normal)")
    return array


def dump_npy(normal: np.ndarray) -> bytes:
    """The reference format: float64, shape (1, d)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(normal, dtype=np.float64).reshape(1, -1), allow_pickle=False)
    return buf.getvalue()
