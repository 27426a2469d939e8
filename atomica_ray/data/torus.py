"""Score of the wrapped normal distribution on the circle (torsion-angle noise), from a cached table.

Torsion noise Δθ ~ N(0, σ²) lives on the circle, where its density is the wrapped normal
    p_σ(x) = Σ_i exp(-(x + 2πi)² / 2σ²)                       (DiffDock, Corso et al. 2023, eq. for the torus)
and the denoising target is its score d/dx log p_σ(x). As in DiffDock / ATOMICA (`utils/torus.py`) the score is read
from a table over
    |x| on 5001 log-spaced points in [1e-5·π, π],   σ on 5001 log-spaced points in [3e-3·π, 2π],   i in [-100, 100],
by nearest grid point (in log space), with x first wrapped into [-π, π).

Differences from the original: the table is built on first use (never at import) into the user cache directory with
an atomic write (the original writes `.p.npy` / `.score.npy` into the working directory at import); the series is
summed in a log-sum-exp form, so rows where every term underflows (small σ, large x) hold the limit -x/σ² instead
of NaN; images i whose terms are below e^-72 of the leading one are skipped (they cannot change a float64 sum), so
the table equals the N = 100 series at a fraction of the cost. Stored as float32 (100 MB).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

X_MIN, X_N = 1e-5, 5000  # |x| grid, relative to π: 10**linspace(log10 X_MIN, 0, X_N + 1)
SIGMA_MIN, SIGMA_MAX, SIGMA_N = 3e-3, 2.0, 5000  # σ grid, relative to π
N_IMAGES = 100  # series i = -N..N
TABLE_NAME = f"torus_score_x{X_N + 1}_s{SIGMA_N + 1}_n{N_IMAGES}_v1.npy"

X_GRID = 10 ** np.linspace(np.log10(X_MIN), 0.0, X_N + 1) * np.pi  # [5001]
SIGMA_GRID = 10 ** np.linspace(np.log10(SIGMA_MIN), np.log10(SIGMA_MAX), SIGMA_N + 1) * np.pi  # [5001]


# --- the user cache directory (shared with so3.py) ----------------------------------------------------------------
def cache_dir() -> Path:
    """$ATOMICA_RAY_CACHE if set (as loader.user_cache_dir), else $XDG_CACHE_HOME/atomica-ray, else platformdirs'
    user cache dir, else ~/.cache/atomica-ray."""
    if os.environ.get("ATOMICA_RAY_CACHE"):
        path = Path(os.environ["ATOMICA_RAY_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]) / "atomica-ray"
    else:
        try:
            import platformdirs

            path = Path(platformdirs.user_cache_dir("atomica-ray"))
        except ImportError:
            path = Path.home() / ".cache" / "atomica-ray"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock so that loader workers starting together build a table once (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_array(name: str, build) -> np.ndarray:
    """Load `name` (.npy) from the cache dir memory-mapped, building it with `build()` first if missing.

    The file is written under a temporary name and renamed, so a reader never sees a partial table.
    """
    try:
        directory = cache_dir()
        path = directory / name
        if not path.exists():
            with _file_lock(directory / (name + ".lock")):
                if not path.exists():
                    array = np.ascontiguousarray(build())
                    fd, tmp = tempfile.mkstemp(dir=directory, prefix=name + ".", suffix=".tmp")
                    try:
                        with os.fdopen(fd, "wb") as fh:
                            np.save(fh, array)
                        os.replace(tmp, path)
                    except BaseException:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp)
                        raise
    except OSError as exc:  # read-only or full cache: work from memory, rebuilt per process
        warnings.warn(f"cannot cache {name} ({exc}); building it in memory", RuntimeWarning, stacklevel=2)
        return np.ascontiguousarray(build())
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise RuntimeError(f"cached table {path} is unreadable ({exc}); delete it to rebuild") from exc


# --- building the table -------------------------------------------------------------------------------------------
def build_score_table(x: np.ndarray = X_GRID, sigma: np.ndarray = SIGMA_GRID, n_images: int = N_IMAGES,
                      rows_per_chunk: int = 64) -> np.ndarray:
    """table[s, j] = Σ_i (x_j+2πi)/σ_s² w_i / Σ_i w_i, w_i = exp(-(x_j+2πi)²/2σ_s²): minus the score at +x_j."""
    out = np.empty((len(sigma), len(x)), dtype=np.float32)  # [n_sigma, n_x]
    for start in range(0, len(sigma), rows_per_chunk):
        s = sigma[start:start + rows_per_chunk, None]  # [rows, 1]
        # images beyond K contribute < e^-72 relative: 2π²K(K-1)/σ² >= 72 when K >= 12σ/2π + 1
        k = int(min(n_images, np.ceil(12 * s.max() / (2 * np.pi)) + 1))
        images = 2 * np.pi * np.arange(-k, k + 1)  # [n_img]
        shifted = x[None, None, :] + images[:, None, None]  # [n_img, 1, n_x]
        expo = -(shifted ** 2) / (2 * s[None] ** 2)  # [n_img, rows, n_x]
        w = np.exp(expo - expo.max(axis=0, keepdims=True))
        out[start:start + rows_per_chunk] = (w * shifted).sum(0) / w.sum(0) / s ** 2
    return out


@functools.lru_cache(maxsize=1)
def score_table() -> np.ndarray:
    """The [5001 σ, 5001 |x|] table, memory-mapped from the user cache (built there on first use, ~seconds)."""
    return cached_array(TABLE_NAME, build_score_table)


# --- look-ups ------------------------------------------------------------------------------------------------------
def _x_index(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = (np.asarray(x, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi
    sign = np.sign(x)
    with np.errstate(divide="ignore"):
        pos = (np.log(np.abs(x) / np.pi) - np.log(X_MIN)) / (0 - np.log(X_MIN)) * X_N
    return sign, np.round(np.clip(pos, 0, X_N)).astype(np.int64)


def sigma_index(sigma) -> np.ndarray:
    pos = (np.log(np.asarray(sigma, dtype=np.float64) / np.pi) - np.log(SIGMA_MIN)) \
        / (np.log(SIGMA_MAX) - np.log(SIGMA_MIN)) * SIGMA_N
    return np.round(np.clip(pos, 0, SIGMA_N)).astype(np.int64)


def score(x, sigma) -> np.ndarray:
    """d/dx log p_σ(x) of the wrapped normal, by nearest-grid look-up (ATOMICA's `torus.score`). Broadcasts."""
    sign, xi = _x_index(x)
    si = sigma_index(sigma)
    return -sign * score_table()[si, xi].astype(np.float64)


class TorusScore:
    """The score for one fixed σ: keeps only that table row (5001 floats), so it pickles cheaply to workers."""

    def __init__(self, sigma: float):
        if not sigma > 0:
            raise ValueError(f"torsion noise σ must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self._row = None  # [5001], loaded on first call

    def load(self) -> None:
        if self._row is None:
            self._row = np.array(score_table()[int(sigma_index(self.sigma))], dtype=np.float64)

    def __call__(self, x) -> np.ndarray:
        self.load()
        sign, xi = _x_index(x)
        return -sign * self._row[xi]
