"""Wrapped-normal (torus) and IGSO(3) tables: scores against finite differences of independently computed log
densities, sampled angles against a Brownian motion on SO(3), and where the cached tables are written."""

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import logsumexp

from atomica_ray.data import so3, torus


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """A private XDG cache for this module: the tables are built here once."""
    home = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ATOMICA_RAY_CACHE", raising=False)
        mp.setenv("XDG_CACHE_HOME", str(home))
        torus.score_table.cache_clear()
        yield home
        torus.score_table.cache_clear()


def wrapped_normal_logpdf(x, sigma, n=100):
    """log Σ_i exp(-(x + 2πi)² / 2σ²), i = -n..n (unnormalised), straight from the definition."""
    shifts = 2 * np.pi * np.arange(-n, n + 1)
    x, sigma = np.asarray(x, float)[..., None], np.asarray(sigma, float)[..., None]
    return logsumexp(-((x + shifts) ** 2) / (2 * sigma ** 2), axis=-1)


def igso3_log_angle_density(theta, sigma, n_terms=2000):
    """log of f_σ(θ)(1 - cos θ)/π, f_σ = Σ_l (2l+1) e^{-l(l+1)σ²} χ_l(θ) with χ_l the SO(3) character."""
    theta = np.asarray(theta, float)
    total = np.zeros_like(theta)
    for l in range(n_terms):  # plain loop: an implementation independent of so3.py's vectorised one
        total += (2 * l + 1) * np.exp(-l * (l + 1) * sigma ** 2) * np.sin((l + 0.5) * theta) / np.sin(theta / 2)
    return np.log(total * (1 - np.cos(theta)) / np.pi)


def test_tables_are_built_lazily_in_the_user_cache_not_the_working_directory(cache_home, tmp_path, monkeypatch):
    # importing the transforms builds nothing
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "fresh")}
    env.pop("ATOMICA_RAY_CACHE", None)
    subprocess.run([sys.executable, "-c", "import atomica_ray.data.transforms"], check=True, env=env, cwd=tmp_path)
    assert not (tmp_path / "fresh" / "atomica-ray" / torus.TABLE_NAME).exists()
    assert not list(tmp_path.glob("*.npy"))

    monkeypatch.chdir(tmp_path)
    table = torus.score_table()
    assert table.shape == (5001, 5001) and table.dtype == np.float32
    cache = cache_home / "atomica-ray"
    assert (cache / torus.TABLE_NAME).is_file()
    assert not list(cache.glob("*.tmp")), "the atomic write left a temporary file"
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob(".*.npy"))
    assert np.isfinite(table).all()  # log-sum-exp form: no NaN rows where every term underflows

    so3.IGSO3(0.25, 0.5).prob
    assert list(cache.glob("igso3_*.npy"))


def test_an_unwritable_cache_falls_back_to_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("ATOMICA_RAY_CACHE", str(blocker))
    with pytest.warns(RuntimeWarning, match="cannot cache"):
        prob = so3.IGSO3(0.3, 1.0).prob
    assert prob.sum() == pytest.approx(1.0)


def test_torus_table_axes_are_atomicas():
    assert len(torus.X_GRID) == len(torus.SIGMA_GRID) == 5001
    assert torus.X_GRID[0] == pytest.approx(1e-5 * np.pi) and torus.X_GRID[-1] == pytest.approx(np.pi)
    assert torus.SIGMA_GRID[0] == pytest.approx(3e-3 * np.pi) and torus.SIGMA_GRID[-1] == pytest.approx(2 * np.pi)
    assert np.allclose(np.diff(np.log(torus.X_GRID)), np.log(1e5) / 5000)


def test_wrapped_normal_score_is_the_derivative_of_the_log_density_on_the_grid(cache_home):
    rng = np.random.default_rng(0)
    x = torus.X_GRID[rng.integers(0, 5001, 3000)] * rng.choice([-1.0, 1.0], 3000)
    sigma = torus.SIGMA_GRID[rng.integers(0, 5001, 3000)]
    h = np.minimum(1e-6, np.abs(x) * 1e-3)
    fd = (wrapped_normal_logpdf(x + h, sigma) - wrapped_normal_logpdf(x - h, sigma)) / (2 * h)
    np.testing.assert_allclose(torus.score(x, sigma), fd, rtol=2e-5, atol=1e-3)


def test_wrapped_normal_score_off_grid_and_wrapping(cache_home):
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.9 * np.pi, 0.9 * np.pi, 4000)
    sigma = np.exp(rng.uniform(np.log(0.05), np.log(2 * np.pi), 4000))
    h = np.minimum(1e-6, np.abs(x) * 1e-3)
    fd = (wrapped_normal_logpdf(x + h, sigma) - wrapped_normal_logpdf(x - h, sigma)) / (2 * h)
    # nearest-grid look-up (as ATOMICA): relative error ~ half a grid step in log x and log σ
    np.testing.assert_allclose(torus.score(x, sigma), fd, rtol=2e-2, atol=2e-2)
    # small σ: the score is the Gaussian one, -x/σ²
    assert torus.score(0.01, 0.05) == pytest.approx(-0.01 / 0.05 ** 2, rel=1e-2)
    # periodic and odd
    np.testing.assert_allclose(torus.score(x + 2 * np.pi, sigma), torus.score(x, sigma), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(torus.score(-x, sigma), -torus.score(x, sigma))
    assert torus.score(0.0, 0.5) == 0.0
    one_sigma = torus.TorusScore(0.5)
    np.testing.assert_array_equal(one_sigma(x), torus.score(x, 0.5))


@pytest.mark.parametrize("sigma,max_theta", [(0.25, 0.5), (0.5, np.pi), (1.0, np.pi / 4)])
def test_igso3_score_is_the_derivative_of_the_log_angle_density(cache_home, sigma, max_theta):
    ig = so3.IGSO3(sigma, max_theta)
    theta = ig.theta
    assert len(theta) == 100 and theta[0] == pytest.approx(0.001) and theta[-1] == pytest.approx(max_theta)
    h = 1e-6
    fd = (igso3_log_angle_density(theta + h, sigma) - igso3_log_angle_density(theta - h, sigma)) / (2 * h)
    np.testing.assert_allclose(ig.score, fd, rtol=1e-5, atol=1e-4)
    density = np.exp(igso3_log_angle_density(theta, sigma))
    np.testing.assert_allclose(ig.prob, density / density.sum(), rtol=1e-8)


def brownian_rotation_angles(sigma, n, rng, steps=64):
    """Angles of Brownian motion on SO(3) at time σ² (heat kernel e^{-l(l+1)σ²}): compose `steps` small rotations
    with rotation vectors ~ N(0, 2σ²/steps I₃). No series involved."""
    R = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    for _ in range(steps):
        R = R @ so3.rotvec_to_matrix(rng.normal(scale=np.sqrt(2 * sigma ** 2 / steps), size=(n, 3)))
    return np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1))


@pytest.mark.parametrize("sigma,max_theta,tol", [(0.25, np.pi, 0.012), (0.25, 0.5, 0.025), (0.6, np.pi, 0.012)])
def test_igso3_sampled_angles_follow_the_brownian_motion_on_so3(cache_home, sigma, max_theta, tol):
    rng = np.random.default_rng(2)
    reference = brownian_rotation_angles(sigma, 20000, rng)
    reference = np.sort(reference[reference <= max_theta])  # ATOMICA samples θ restricted to [0.001, max_theta]
    ig = so3.IGSO3(sigma, max_theta)
    draws = [ig.sample(rng) for _ in range(20000)]
    rotvec = np.array([d[0] for d in draws])
    score = np.array([d[1] for d in draws])
    theta = np.linalg.norm(rotvec, axis=1)
    # the sampler draws grid angles, so compare CDFs at the cell boundaries between grid points (a KS statistic)
    edges = (ig.theta[1:] + ig.theta[:-1]) / 2
    cdf_sampled = np.searchsorted(np.sort(theta), edges, side="right") / len(theta)
    cdf_reference = np.searchsorted(reference, edges, side="right") / len(reference)
    assert np.abs(cdf_sampled - cdf_reference).max() < tol
    # the axis is uniform and the score is ŵ·s(θ) with the table score of the drawn angle
    axis = rotvec / theta[:, None]
    assert np.abs(axis.mean(0)).max() < 0.03
    k = np.searchsorted(ig.theta, theta - 1e-12)
    np.testing.assert_allclose(score, axis * ig.score[k][:, None], rtol=1e-10, atol=1e-12)


def test_rotvec_to_matrix_and_kabsch():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(50, 3))
    R = so3.rotvec_to_matrix(v)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", R, v), v, atol=1e-12)  # the axis is fixed
    quarter = so3.rotvec_to_matrix(np.array([0.0, 0.0, np.pi / 2]))  # right-handed: x -> y
    np.testing.assert_allclose(quarter @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)
    np.testing.assert_allclose(so3.rotvec_to_matrix(np.zeros(3)), np.eye(3))
    pts = rng.normal(size=(20, 3))
    moved = pts @ R[0].T + [1.0, 2.0, 3.0]
    Rk, t = so3.kabsch(pts, moved)
    np.testing.assert_allclose(Rk, R[0], atol=1e-10)
    np.testing.assert_allclose(t, [1.0, 2.0, 3.0], atol=1e-10)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="rotation noise"):
        so3.IGSO3(0.0, 0.5)
    with pytest.raises(ValueError, match="max_rotation"):
        so3.IGSO3(0.25, 4.0)
    with pytest.raises(ValueError, match="torsion noise"):
        torus.TorusScore(-1.0)
