"""Rotations: the isotropic Gaussian on SO(3) (IGSO(3)) used for global rotation noise, and rotation matrices.

IGSO(3) with parameter σ has, as a function of the rotation angle θ (Nikolayev & Savyolov 1970; DiffDock's `so3.py`),
    f_σ(θ) = Σ_{l=0}^{L-1} (2l+1) exp(-l(l+1)σ²) sin((l+½)θ) / sin(θ/2)          (density w.r.t. the Haar measure)
and, with a uniform axis, the angle has density p(θ) = f_σ(θ)(1 - cos θ)/π on [0, π].
ATOMICA (`utils/noise_transforms.py`, GlobalRotationTransform) samples θ from p restricted to 100 grid points
θ_k = linspace(0.001, max_theta, 100) (p clipped to [0, 1000], normalised over the grid), an axis ŵ uniformly, and
uses as target ŵ·s(θ_k) with
    s(θ) = d/dθ log p(θ) = f'(θ)/f(θ) + sin θ / (1 - cos θ)
(note: the log-derivative of the angle density, i.e. DiffDock's score plus the Haar term). L = 2000.
The tables are tiny (100 points) and are built vectorised in milliseconds; they are cached in the user cache dir
all the same, keyed by (σ, max_theta).
"""

from __future__ import annotations

import numpy as np

from atomica_ray.data.torus import cached_array

N_THETA = 100
THETA_MIN = 0.001
L_SERIES = 2000
DENSITY_CLIP = 1000.0


def igso3_tables(sigma: float, max_theta: float, n_theta: int = N_THETA, n_terms: int = L_SERIES) -> np.ndarray:
    """[3, n_theta]: θ grid, probability of each grid point, score s(θ) at each grid point."""
    theta = np.linspace(THETA_MIN, max_theta, n_theta)  # [n_theta]
    l = np.arange(n_terms, dtype=np.float64)[:, None]  # [L, 1]
    weight = (2 * l + 1) * np.exp(-l * (l + 1) * sigma ** 2)  # [L, 1]
    hi, lo = np.sin(theta * (l + 0.5)), np.sin(theta / 2)  # [L, n_theta], [n_theta]
    dhi, dlo = (l + 0.5) * np.cos(theta * (l + 0.5)), 0.5 * np.cos(theta / 2)
    f = (weight * hi / lo).sum(0)  # [n_theta]
    df = (weight * (lo * dhi - hi * dlo) / lo ** 2).sum(0)  # [n_theta]
    density = np.clip(f * (1 - np.cos(theta)) / np.pi, 0, DENSITY_CLIP)
    prob = density / density.sum()
    score = df / f + np.sin(theta) / (1 - np.cos(theta))
    return np.stack([theta, prob, score])


class IGSO3:
    """Sampler of ATOMICA's global rotation noise for fixed (σ, max_theta). Tables load on first use."""

    def __init__(self, sigma: float, max_theta: float):
        if not sigma > 0:
            raise ValueError(f"rotation noise σ must be > 0, got {sigma}")
        if not 0 < max_theta <= np.pi:
            raise ValueError(f"max_rotation must be in (0, π], got {max_theta}")
        self.sigma, self.max_theta = float(sigma), float(max_theta)
        self._tables = None

    @property
    def tables(self) -> np.ndarray:
        if self._tables is None:
            name = f"igso3_s{self.sigma!r}_max{self.max_theta!r}_n{N_THETA}_l{L_SERIES}_v1.npy"
            self._tables = np.array(cached_array(name, lambda: igso3_tables(self.sigma, self.max_theta)))
        return self._tables

    @property
    def theta(self) -> np.ndarray:
        return self.tables[0]

    @property
    def prob(self) -> np.ndarray:
        return self.tables[1]

    @property
    def score(self) -> np.ndarray:
        return self.tables[2]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One draw: (rotation vector θ·ŵ [3], score ŵ·s(θ) [3])."""
        k = rng.choice(N_THETA, p=self.prob)
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        return self.theta[k] * axis, self.score[k] * axis


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: rotation vectors [..., 3] -> matrices [..., 3, 3] (right-handed, angle = |rotvec|)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1)[..., None, None]  # [..., 1, 1]
    safe = np.where(angle > 0, angle, 1.0)
    k = rotvec / safe[..., 0]  # [..., 3] unit axis (0 where angle = 0)
    K = np.zeros(rotvec.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = k[..., 2], -k[..., 1], k[..., 0]
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * (K @ K)


def kabsch(moving: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proper rotation R and translation t minimising |R·moving + t - target|² (Kabsch 1976). Points are [n, 3]."""
    mc, tc = moving.mean(0), target.mean(0)
    H = (moving - mc).T @ (target - tc)  # [3, 3]
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    R = Vt.T @ np.diag([1.0, 1.0, d if d != 0 else 1.0]) @ U.T
    return R, tc - R @ mc
