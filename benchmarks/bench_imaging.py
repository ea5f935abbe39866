"""Benchmark of the 2D imaging application (issue 10): accuracy, time split, MPI scaling.

Prints, and writes to ``benchmarks/results/bench_imaging.md``, from one run on this machine:

1. **Linearized (Born) imaging against the exact Gaussian posterior**, larger than the test
   (default 32×16 pixels at 10 m, 4 shots, Born data, correlated Gaussian prior): ``J``
   assembled column by column gives the exact posterior mean and pointwise std; against it
   :func:`devito_uq.apps.imaging.run.run_invert` at Laplace rank ``N`` (full) and ``N/4``
   (truncated: the flow must learn the rest), each also with one VI iteration at a learning
   rate of 1e-12 (the flow at its initial weights: what VI adds) and the Laplace
   approximation itself computed without sampling. Also: the eigenvalues > 1 of the
   prior-whitened Gauss–Newton Hessian (exact, from the assembled ``J``).
2. **Nonlinear (FWI) against a long MALA reference** on the same grid (nonlinear data):
   MALA on the same :class:`~devito_uq.inference.PosteriorTarget` in the same whitened
   latent ``m = g(MAP + A x)`` as the VI run, started at the MAP, with its effective sample
   size; VI std vs MALA std, 90 % band coverage of the truth, posterior-mean error.
3. **One VI iteration on the 3 km × 1.5 km Marmousi window** (the ``--full`` window with the
   default 8 shots: 101×51, 1.6 s) split into PDE (likelihood forward + backward), flow
   (sample, log-det, backward) and other, medians of a few repetitions, in a separate
   process whose peak RSS is reported.
4. **1 vs 2 MPI ranks**: ``mpiexec -n 1|2 devito-uq invert`` on an 8-shot survey, run
   alternately, VI-phase and total speed-up, and the posterior means compared.

Usage: ``python benchmarks/bench_imaging.py [--quick] [--sections 1,2,3,4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from devito_uq.apps.imaging import ImagingConfig, InvertConfig, SimulateConfig  # noqa: E402
from devito_uq.io import load_checkpoint, read_image, write_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_imaging.md"
FILES = ("shots.sgy", "acquisition.json", "background.sgy", "true_model.sgy")

#: Survey and solver knobs of the small problems of sections 1, 2 (as the test's, larger).
SIM = dict(
    x_start=0.0,
    width=0.0,
    depth=0.0,
    smoothing=30.0,
    t1=350.0,
    f0=20.0,
    data_dt=2.0,
    vmax=2.6,
    vmin=1.3,
    nbl=10,
    space_order=4,
    snr_db=20.0,
)
INV = dict(
    f0=20.0,
    vmax=2.6,
    vmin=1.3,
    nbl=10,
    space_order=4,
    prior_std=0.05,
    correlation_length=20.0,
    flow_levels=2,
    flow_steps=2,
    flow_hidden=16,
    map_iterations=20,
    probes=2,
    batch_size=4,
    lr=1e-3,
    checkpoint_every=1000,
    n_samples=2000,
)


# -- helpers -----------------------------------------------------------------------------------


def true_velocity(nx: int, nz: int) -> np.ndarray:
    """Three layers and a fast lens (the test's model, scaled to ``[nx, nz]``), km/s."""
    x, z = np.meshgrid(np.arange(nx) / nx, np.arange(nz) / nz, indexing="ij")
    v = np.where(z < 0.3, 1.5, np.where(z < 0.6, 1.8, 2.1))
    v = v + 0.25 * np.exp(-((x - 0.56) ** 2 / 0.016 + (z - 0.5) ** 2 / 0.04))
    return v.astype(np.float32)


def simulate(out: Path, nx: int, nz: int, h: float, nshots: int, data: str, **kw) -> Path:
    """A synthetic survey of :func:`true_velocity` in ``out`` (SEG-Y shots and models)."""
    from devito_uq.apps.imaging.simulate import run_simulate

    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "model.sgy", true_velocity(nx, nz), (h, h))
    cfg = dict(SIM, spacing=h, nshots=nshots, nreceivers=nx, data=data, **kw)
    run_simulate(SimulateConfig(model=str(out / "model.sgy"), **cfg), out, progress=False)
    return out


def linked(survey: Path, out: Path) -> Path:
    """``out`` holding links to the survey's files (one folder per inversion)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (out / name).exists():
            os.symlink(survey / name, out / name)
    return out


def invert(out: Path, resume: bool = False, **kw) -> tuple[dict, float]:
    """``run_invert`` in ``out``; returns the summary and its wall time (s)."""
    from devito_uq.apps.imaging.run import run_invert

    t0 = time.perf_counter()
    summary = run_invert(InvertConfig(**kw), out, resume=resume, progress=False, figures=False)
    return summary, time.perf_counter() - t0


def vi_samples(out: Path) -> torch.Tensor:
    return load_checkpoint(out / "posterior_samples.pt")["samples"].double()


def rel_l2(a, b) -> float:
    return float((a - b).norm() / b.norm())


def std_err(std, ref) -> float:
    """Mean over pixels of ``|std − ref| / ref``."""
    return float(((std - ref).abs() / ref).mean())


def coverage(samples: torch.Tensor, truth: torch.Tensor) -> float:
    q = torch.quantile(samples.flatten(1), torch.tensor([0.05, 0.95], dtype=samples.dtype), dim=0)
    t = truth.flatten().to(samples.dtype)
    return float(((t >= q[0]) & (t <= q[1])).double().mean())


def laplace_moments(problem, base: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (the MAP) and pointwise std of the Laplace approximation ``N(MAP, A Aᵀ)``, no
    sampling: the columns of ``A`` from the parameterization at unit latents (Born only)."""
    from devito_uq.apps.imaging.posterior import laplace_parameterization

    g = laplace_parameterization(base["map"], base, problem.bounds).double()
    n = problem.m0.numel()
    with torch.no_grad():
        cols = g(torch.eye(n, dtype=torch.float64).reshape(n, *problem.shape))[0]
    cols = cols - base["map"].double()
    return base["map"].double(), cols.pow(2).sum(0).sqrt()


def exact_born(out: Path, config: InvertConfig):
    """Exact Gaussian posterior of the Born problem in ``out``: ``J`` column by column.

    Returns ``(mean, std, eigenvalues)``, ``[nx, nz]`` float64 and the descending
    eigenvalues of the prior-whitened Hessian ``Lᵀ JᵀJ L / σ²``."""
    from devito_uq.apps.imaging.problem import build_problem, make_prior
    from devito_uq.physics import BornModeling

    problem = build_problem(config, out)
    prior = make_prior(config, problem)
    nx, nz = problem.shape
    n = nx * nz
    J = BornModeling(problem.model, problem.survey, problem.m0.double())
    eye = torch.eye(n, dtype=torch.float64)
    with torch.no_grad():
        cols = torch.cat([J(eye[k : k + 64].reshape(-1, nx, nz)) for k in range(0, n, 64)])
    mask = torch.from_numpy(problem.survey.mask())[:, None, :]
    jac = (cols * mask).reshape(n, -1).T.double()  # [data, pixels]
    d = problem.likelihood.local.data.double().flatten()
    s2 = problem.sigma**2
    cov_prior = prior.covariance_matrix().double()
    cov = torch.linalg.inv(jac.T @ jac / s2 + torch.linalg.inv(cov_prior))
    mean = cov @ (jac.T @ d) / s2
    chol = torch.linalg.cholesky(cov_prior)
    whitened = (jac @ chol).T @ (jac @ chol) / s2
    lam = torch.linalg.eigvalsh(0.5 * (whitened + whitened.T)).flip(0)
    return mean.reshape(nx, nz), cov.diagonal().sqrt().reshape(nx, nz), lam


# -- 1. linearized ------------------------------------------------------------------------------


def bench_born(root: Path, nx: int, nz: int, nshots: int, iterations: int) -> dict:
    n = nx * nz
    survey = simulate(root / "born_survey", nx, nz, 10.0, nshots, "born")
    mean, std, lam = exact_born(survey, InvertConfig(**INV, rank=n))
    rows, extra = {}, {}
    for label, rank, over in (("rank N", n, 0), ("rank N/4", n // 4, 10)):
        out = linked(survey, root / f"born_rank{rank}")
        kw = dict(INV, rank=rank, oversample=over)
        # The flow at its initial weights: one step at a negligible learning rate.
        s0, t0 = invert(out, **dict(kw, iterations=1, lr=1e-12))
        for name in ("vi_checkpoint.pt",):  # VI afresh; the MAP/Laplace cache is reused
            (out / name).unlink(missing_ok=True)
        from devito_uq.apps.imaging.problem import build_problem

        base = load_checkpoint(out / "map.pt")
        problem = build_problem(InvertConfig(**kw), out)
        lm, ls = laplace_moments(problem, base)
        init = vi_samples(out)
        s1, t1 = invert(out, resume=True, **dict(kw, iterations=iterations))
        vi = vi_samples(out)
        rows[f"{label} ({rank}): Laplace N(MAP, AAᵀ), exact moments"] = (
            rel_l2(lm, mean),
            std_err(ls, std),
        )
        rows[f"{label}: flow at its initial weights (1 it., lr 1e-12)"] = (
            rel_l2(init.mean(0), mean),
            std_err(init.std(0), std),
        )
        rows[f"{label}: VI, {iterations} its"] = (rel_l2(vi.mean(0), mean), std_err(vi.std(0), std))
        extra[label] = {
            "eigenvalues_above_1_captured": int(base["eigenvalues_above_1"]),
            "time_laplace_s": s0["time_s"].get("laplace", 0.0),
            "time_map_s": s0["time_s"].get("map", 0.0),
            "time_vi_s": s1["time_s"]["vi"],
            "s_per_it": s1["vi"]["seconds_per_iteration"],
            "coverage_vi": s1["metrics"]["truth_inside_90pct_band"],
        }
    return {
        "grid": (nx, nz),
        "nshots": nshots,
        "rows": rows,
        "extra": extra,
        "eig_above_1": int((lam > 1).sum()),
        "eig_top": float(lam[0]),
        "std_exact_over_prior": float(std.mean()) / INV["prior_std"],
        "iterations": iterations,
    }


# -- 2. nonlinear -------------------------------------------------------------------------------


def bench_fwi(
    root: Path,
    nx: int,
    nz: int,
    nshots: int,
    iterations: int,
    mala_steps: int,
    chains: int,
    burn: int,
) -> dict:
    from devito_uq.apps.imaging.posterior import laplace_parameterization
    from devito_uq.apps.imaging.problem import build_problem, make_prior
    from devito_uq.inference import MALA, PosteriorTarget, effective_sample_size

    n = nx * nz
    survey = simulate(root / "fwi_survey", nx, nz, 10.0, nshots, "nonlinear")
    out = linked(survey, root / "fwi")
    kw = dict(INV, problem="fwi", rank=n, oversample=0, iterations=iterations)
    summary, t_vi = invert(out, **kw)
    vi = vi_samples(out)  # velocity, km/s
    config = InvertConfig(**kw)
    problem = build_problem(config, out)
    prior = make_prior(config, problem)
    base = load_checkpoint(out / "map.pt")
    g = laplace_parameterization(base["map"], base, problem.bounds)
    target = PosteriorTarget(problem.likelihood, prior, g)
    sampler = MALA(target, step_size=0.2)
    t0 = time.perf_counter()
    res = sampler.run(mala_steps, n_chains=chains, burn_in=burn, seed=3, progress=False)
    t_mala = time.perf_counter() - t0
    v_chains = res.samples.double().rsqrt()  # [draws, chains, nx, nz] km/s
    ess = res.effective_sample_size().double()  # of m; a monotone map keeps it close for v
    ess_v = effective_sample_size(v_chains)
    mala = v_chains.flatten(0, 1)
    v_true = torch.from_numpy(problem.v_true).double()
    v0 = problem.m0.double().rsqrt()
    v_map = base["map"].double().rsqrt()
    return {
        "grid": (nx, nz),
        "nshots": nshots,
        "iterations": iterations,
        "std_rel_diff": std_err(vi.std(0), mala.std(0)),
        "std_ratio_mean": float((vi.std(0) / mala.std(0)).mean()),
        "coverage_vi": coverage(vi, v_true),
        "coverage_mala": coverage(mala, v_true),
        "rel_l2": {
            "start (background)": rel_l2(v0, v_true),
            "MAP": rel_l2(v_map, v_true),
            "VI mean": rel_l2(vi.mean(0), v_true),
            "MALA mean": rel_l2(mala.mean(0), v_true),
        },
        "vi_vs_mala_mean": rel_l2(vi.mean(0), mala.mean(0)),
        "ess_min": float(ess.min()),
        "ess_median": float(ess.median()),
        "ess_v_min": float(ess_v.min()),
        "mala_draws": int(mala.shape[0]),
        "mala_acceptance": res.acceptance_rate,
        "mala_step": res.step_size,
        "mala_chains": chains,
        "mala_steps": mala_steps,
        "mala_burn_in": burn,
        "t_mala": t_mala,
        "t_vi_run": t_vi,
        "t_vi": summary["time_s"]["vi"],
        "eig_above_1": int(base["eigenvalues_above_1"]),
        "mean_std_mala": float(mala.std(0).mean()),
    }


# -- 3. one VI iteration at the Marmousi size (run in a child process) --------------------------


def split_worker(out: Path, reps: int, physics_batch: int = 0) -> dict:
    """Time the pieces of one imaging VI iteration on the Marmousi default case.

    ``physics_batch`` > 0 sets the Born operator's models per Devito kernel call (1: one
    call per sample, the pre-batching path); 0 keeps the module's default."""
    from devito_uq.apps.imaging.posterior import make_flow
    from devito_uq.apps.imaging.problem import build_problem, make_prior
    from devito_uq.apps.imaging.simulate import run_simulate
    from devito_uq.inference import DiagonalSqrt, LaplaceParameterization, VariationalPosterior

    torch.set_num_threads(1)
    # The 3 km × 1.5 km window of the full preset, with the short schedule's 8 shots.
    cfg = ImagingConfig.short(x_start=4500.0, width=3000.0, depth=1500.0, nreceivers=101, t1=1600.0)
    t0 = time.perf_counter()
    run_simulate(cfg.simulate_config(), out, progress=False, figures=False)
    t_sim = time.perf_counter() - t0
    inv = cfg.invert_config()
    problem = build_problem(inv, out)
    if physics_batch:
        operator = getattr(problem.likelihood, "local", problem.likelihood).operator
        operator.batch_size = physics_batch
    prior = make_prior(inv, problem)
    sqrt = prior.sqrt() if callable(getattr(prior, "sqrt", None)) else None
    sqrt = sqrt or DiagonalSqrt(torch.full_like(problem.m0, inv.prior_std))
    # A Laplace factor of the run's rank with random orthonormal vectors: the same cost per
    # iteration as the real one, without its 2·(rank+10) Gauss–Newton products.
    n = problem.m0.numel()
    vec, _ = torch.linalg.qr(torch.randn(n, inv.rank, generator=torch.Generator().manual_seed(0)))
    lam = torch.logspace(3, -1, inv.rank)
    g = LaplaceParameterization(torch.zeros_like(problem.m0), sqrt, lam, vec)
    torch.manual_seed(inv.seed)
    flow = make_flow(inv, problem.shape)
    vi = VariationalPosterior(flow, problem.likelihood, prior, g)
    params = list(flow.parameters())
    opt = torch.optim.Adam(params, lr=inv.lr)
    bs = inv.batch_size

    def full():  # the body of VariationalPosterior.fit's loop, as it runs there
        opt.zero_grad(set_to_none=True)
        terms = vi.loss_terms(bs)
        terms["loss"].backward()
        opt.step()

    def split() -> dict[str, float]:
        """The same iteration cut by the chain rule at ``x`` and ``m``, each piece timed:
        the same loss and the same parameter gradients as :func:`full`."""
        clock = [time.perf_counter()]
        parts = {"flow": 0.0, "pde": 0.0, "other": 0.0}

        def lap(name: str) -> None:
            clock.append(time.perf_counter())
            parts[name] += clock[-1] - clock[-2]

        opt.zero_grad(set_to_none=True)
        x, log_q = flow.rsample_and_log_prob(bs)  # flow forward: sample + log-det
        lap("flow")
        m, logdet = g(x)  # Laplace map, its log-det, the prior
        prior_value = prior.negative_log(m)
        lap("other")
        m_d = m.detach().requires_grad_(True)  # PDE: likelihood forward + backward
        problem.likelihood(m_d).sum().backward()
        lap("pde")
        # d loss / dx through g and the prior, with the misfit's gradient at m plugged in.
        per_sample = (m * m_d.grad).flatten(1).sum(1) + prior_value - logdet
        (grad_x,) = torch.autograd.grad(per_sample.mean(), x, retain_graph=True)
        lap("other")
        ((x * grad_x).sum() + log_q.mean()).backward()  # flow backward
        lap("flow")
        opt.step()
        lap("other")
        parts["total"] = clock[-1] - clock[0]
        return parts

    full()  # compile, ActNorm initialization, allocator warm-up
    split()
    times: dict[str, list[float]] = {
        "fit_loop": [],
        "total": [],
        "pde": [],
        "flow": [],
        "other": [],
    }
    for _ in range(reps):
        t = time.perf_counter()
        full()
        times["fit_loop"].append(time.perf_counter() - t)
        for k, v in split().items():
            times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        **med,
        "reps": reps,
        "batch_size": bs,
        "grid": list(problem.shape),
        "nshots": problem.nshots,
        "nt_data": problem.report.get("nt_data"),
        "solver_dt_ms": problem.report.get("solver_dt_ms"),
        "t_simulate": t_sim,
        "flow_kind": inv.flow,
        "rank": inv.rank,
        "peak_rss_mb": _vm_hwm_mb(),
        "physics_batch": int(
            getattr(problem.likelihood, "local", problem.likelihood).operator.batch_size
        ),
    }


#: Runs ``argv[2:]`` and writes the peak RSS (kB) of its largest process to ``argv[1]``. A
#: process forked from this (large) one starts with its peak RSS (Linux keeps it across
#: exec); this small wrapper's children do not, so their peak is theirs.
_WRAP = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(rc)"
)


def _vm_hwm_mb() -> float:
    """This process's peak RSS since its exec (``VmHWM``), MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    return float("nan")


def run_child(cmd: list[str], log: Path, env: dict) -> tuple[int, float, float, float]:
    """Run ``cmd``; return (exit code, wall s, peak RSS MB of its largest process, CPU s of
    all its processes)."""
    rss_file = log.with_suffix(".rss")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        wrapped = [sys.executable, "-c", _WRAP, str(rss_file), *cmd]
        proc = subprocess.Popen(wrapped, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    rss = float(rss_file.read_text()) / 1024 if rss_file.exists() else float("nan")
    return proc.returncode, time.perf_counter() - t0, rss, cpu


def bench_split(root: Path, reps: int) -> dict:
    out = root / "marmousi"
    out.mkdir(parents=True, exist_ok=True)
    log = root / "split.log"
    cmd = [sys.executable, __file__, "--split-worker", str(out), "--reps", str(reps)]
    rc, wall, rss, _ = run_child(cmd, log, dict(os.environ))
    text = log.read_text()
    if rc != 0:
        raise RuntimeError(f"split worker failed ({rc}):\n{text[-3000:]}")
    res = json.loads(text.strip().splitlines()[-1])
    res["peak_rss_mb_wait4"] = rss
    res["wall"] = wall
    return res


# -- 4. 1 vs 2 MPI ranks -----------------------------------------------------------------------


def bench_mpi(root: Path, nx: int, nz: int, iterations: int, repeats: int) -> dict:
    # The app's default solver settings (8th order, 20-cell absorbing layer), 0.5 s records.
    solver = dict(nbl=20, space_order=8)
    survey = simulate(root / "mpi_survey", nx, nz, 10.0, 8, "born", t1=500.0, **solver)
    exe = Path(sys.executable).parent / "mpiexec"
    opts = dict(
        INV,
        **solver,
        rank=20,
        oversample=5,
        map_iterations=10,
        iterations=iterations,
        batch_size=2,
        n_samples=64,
    )
    args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    args += [f"--{k}={survey / f'{k}.sgy'}" for k in ("shots", "background")]
    args += [f"--truth={survey / 'true_model.sgy'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVITO_LOGGING="ERROR")
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for k in range(repeats):
        for n in (1, 2):
            out = root / f"mpi_n{n}_{k}"
            cmd = [str(exe), "-n", str(n), sys.executable, "-m", "devito_uq.cli", "invert"]
            cmd += ["--out", str(out), "--quiet", "--no-figures", *args]
            rc, wall, rss, cpu = run_child(cmd, root / f"mpi_n{n}_{k}.log", env)
            if rc != 0:
                text = (root / f"mpi_n{n}_{k}.log").read_text()
                raise RuntimeError(f"mpiexec -n {n} failed ({rc}):\n{text[-3000:]}")
            s = json.loads((out / "summary.json").read_text())
            runs[n].append(
                {
                    "wall": wall,
                    "vi": s["time_s"]["vi"],
                    "total": s["time_s"]["total"],
                    "phases": s["time_s"],
                    "rss": rss,
                    "cpu": cpu,
                    "map": load_checkpoint(out / "map.pt")["map"].double(),
                    "mean": read_image(out / "posterior_mean.sgy")[0],
                }
            )
    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("wall", "vi", "total", "rss", "cpu")}
        for n, rs in runs.items()
    }
    phases = {
        n: {k: statistics.median(r["phases"][k] for r in rs) for k in rs[0]["phases"]}
        for n, rs in runs.items()
    }
    one, two = runs[1][0]["mean"], runs[2][0]["mean"]
    map1, map2 = runs[1][0]["map"], runs[2][0]["map"]
    return {
        "grid": (nx, nz),
        "iterations": iterations,
        "repeats": repeats,
        "runs": {
            n: [{k: v for k, v in r.items() if k not in ("mean", "phases", "map")} for r in rs]
            for n, rs in runs.items()
        },
        "median": med,
        "phases": phases,
        "mean_diff": float(np.abs(one - two).max() / np.abs(one).max()),
        "map_diff": float((map1 - map2).abs().max() / map1.abs().max()),
        "rank": opts["rank"],
        "map_iterations": opts["map_iterations"],
    }


# -- report -------------------------------------------------------------------------------------


def report(results: dict, args, loads: list, wall: float) -> str:
    lines: list[str] = []
    p = lines.append
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    threads = os.environ["OMP_NUM_THREADS"]
    p(f"# bench_imaging — {machine}, OMP_NUM_THREADS={threads}, torch threads 1\n")
    p(
        f"`python benchmarks/bench_imaging.py{' --quick' if args.quick else ''}`; "
        f"wall {wall / 60:.1f} min; load average (1 min) at start {loads[0]:.2f}, "
        f"at end {loads[-1]:.2f}, max seen between sections {max(loads):.2f} "
        "(the machine is shared: other jobs ran beside this one).\n"
    )
    if args.note:
        p(args.note + "\n")
    if "born" in results:
        r = results["born"]
        nx, nz = r["grid"]
        p(
            f"## 1. Born imaging vs the exact Gaussian posterior ({nx}×{nz} = {nx * nz} pixels "
            f"at 10 m, {r['nshots']} shots, Born data, Gaussian prior)\n"
        )
        p(
            f"Exact posterior from `J` assembled column by column. Prior-whitened Gauss–Newton "
            f"Hessian: **{r['eig_above_1']} eigenvalues > 1** of {nx * nz} (largest "
            f"{r['eig_top']:.3g}); exact posterior std / prior std = "
            f"{r['std_exact_over_prior']:.2f} (pixel mean). Targets: mean ≤ 5 %, std ≤ 10 %.\n"
        )
        p("| posterior | mean rel. L2 error | std mean rel. error |")
        p("|---|---:|---:|")
        for name, (me, se) in r["rows"].items():
            p(f"| {name} | {100 * me:.1f} % | {100 * se:.1f} % |")
        p("")
        p(
            "| Laplace rank | eigenvalues > 1 captured | Laplace s | MAP s | VI s "
            "| s / VI it. | truth in VI 90 % band |"
        )
        p("|---|---:|---:|---:|---:|---:|---:|")
        for label, e in r["extra"].items():
            p(
                f"| {label} | {e['eigenvalues_above_1_captured']} | {e['time_laplace_s']:.1f} "
                f"| {e['time_map_s']:.1f} | {e['time_vi_s']:.1f} | {e['s_per_it']:.3f} "
                f"| {100 * e['coverage_vi']:.0f} % |"
            )
        p("")
    if "fwi" in results:
        r = results["fwi"]
        nx, nz = r["grid"]
        p(
            f"## 2. FWI (nonlinear data) vs a long MALA reference ({nx}×{nz} at 10 m, "
            f"{r['nshots']} shots)\n"
        )
        p(
            f"VI: {r['iterations']} iterations ({r['t_vi']:.0f} s), Laplace rank {nx * nz} (full) "
            f"({r['eig_above_1']} eigenvalues > 1 at the MAP). MALA: {r['mala_chains']} chains "
            f"× {r['mala_steps']} steps after {r['mala_burn_in']} burn-in, in the same "
            f"Laplace-whitened latent, from the MAP; acceptance {r['mala_acceptance']:.2f}, "
            f"step {r['mala_step']:.3g}; {r['t_mala']:.0f} s; ESS of m over pixels: min "
            f"{r['ess_min']:.0f}, median {r['ess_median']:.0f} (of {r['mala_draws']} draws; "
            f"ESS of v: min {r['ess_v_min']:.0f}). Statistics in velocity (km/s).\n"
        )
        p("| measure | VI | MALA | target |")
        p("|---|---:|---:|---|")
        p(
            f"| std: mean rel. difference VI vs MALA | {100 * r['std_rel_diff']:.1f} % | "
            f"(reference) | ≤ 30 % |"
        )
        p(f"| mean of std ratio VI / MALA | {r['std_ratio_mean']:.2f} | 1 | |")
        p(
            f"| truth inside the 90 % band | {100 * r['coverage_vi']:.0f} % | "
            f"{100 * r['coverage_mala']:.0f} % | ≥ 80 % |"
        )
        p(f"| mean rel. L2 VI vs MALA | {100 * r['vi_vs_mala_mean']:.2f} % | | |\n")
        p("| velocity vs truth | relative L2 |")
        p("|---|---:|")
        for name, v in r["rel_l2"].items():
            p(f"| {name} | {100 * v:.2f} % |")
        p("")
    if "split" in results:
        r = results["split"]
        nx, nz = r["grid"]
        t = r["total"]
        other = r["other"]
        p(
            f"## 3. One VI iteration on the 3 km × 1.5 km Marmousi window ("
            f"{nx}×{nz}, {r['nshots']} shots, {r['nt_data']} data samples, solver dt "
            f"{r['solver_dt_ms']:.2f} ms, {r['flow_kind']} flow, batch {r['batch_size']})\n"
        )
        p(
            f"Medians of {r['reps']} repetitions, one process, 1 thread; the Laplace factor "
            f"has the run's rank {r['rank']} (random orthonormal vectors: same cost). PDE = "
            "the likelihood's forward + backward (all shots) at the batch's models, detached; "
            "flow = `rsample_and_log_prob` and the backward through the flow; other = the "
            "Laplace map and its log-det, the prior, their backward, Adam. The pieces are one "
            "iteration cut by the chain rule (same loss and gradients as `fit`), timed in "
            f"turn; `fit`'s own loop body took {1e3 * r['fit_loop']:.0f} ms (median).\n"
        )
        p("| part | ms / iteration | share |")
        p("|---|---:|---:|")
        for name, v in (
            ("PDE (likelihood fwd + bwd)", r["pde"]),
            ("flow", r["flow"]),
            ("other", other),
            ("**total** (sum of the pieces)", t),
        ):
            p(f"| {name} | {1e3 * v:.0f} | {100 * v / t:.1f} % |")
        p(
            f"\nTime outside PDE solves: {100 * (t - r['pde']) / t:.1f} % (target ≤ 10 %). "
            f"Peak RSS of that process (simulation of the 8 shots included): "
            f"{r['peak_rss_mb_wait4']:.0f} MB.\n"
        )
    if "mpi" in results:
        r = results["mpi"]
        nx, nz = r["grid"]
        m1, m2 = r["median"][1], r["median"][2]
        p(
            f"## 4. `mpiexec -n 1` vs `-n 2` `devito-uq invert` ({nx}×{nz}, 8 shots, "
            f"{r['iterations']} VI iterations, batch 2; alternately, {r['repeats']} runs each)\n"
        )
        p(
            "| ranks | VI phase s | total s (summary) | wall s (mpiexec) | CPU s, all ranks "
            "| peak RSS / rank MB |"
        )
        p("|---|---:|---:|---:|---:|---:|")
        for n, m in ((1, m1), (2, m2)):
            p(
                f"| {n} | {m['vi']:.1f} | {m['total']:.1f} | {m['wall']:.1f} | {m['cpu']:.1f} "
                f"| {m['rss']:.0f} |"
            )
        up = {k: m1[k] / m2[k] for k in ("vi", "total", "wall")}
        p(
            f"| **speed-up 1→2** | **{up['vi']:.2f}×** | {up['total']:.2f}× | {up['wall']:.2f}× "
            f"| 2 ranks / 1: {m2['cpu'] / m1['cpu']:.2f}× | |"
        )
        ph1, ph2 = r["phases"][1], r["phases"][2]
        p(
            "\nBy phase (summary.json `time_s`, medians, s, 1 rank / 2 ranks = speed-up): "
            + ", ".join(
                f"{k} {ph1[k]:.1f}/{ph2[k]:.1f} = {ph1[k] / ph2[k]:.2f}×" for k in ph1 if ph2[k] > 0
            )
            + "."
        )
        p(
            f"\nTarget ≥ 1.8× (VI phase). Posterior means, 1 vs 2 ranks: max |diff| / max |mean| "
            f"= {r['mean_diff']:.1e}; their MAPs (L-BFGS, {r['map_iterations']} iterations in the "
            f"rank-{r['rank']} Laplace latent): {r['map_diff']:.1e}. Single runs (s, VI/total): "
            + "; ".join(
                f"n={n}: " + ", ".join(f"{x['vi']:.1f}/{x['total']:.1f}" for x in rs)
                for n, rs in r["runs"].items()
            )
            + "\n"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (~3 min)")
    parser.add_argument("--sections", default="1,2,3,4", help="which sections, e.g. 1,3")
    parser.add_argument("--split-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--physics-batch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="do not write the md file")
    parser.add_argument(
        "--merge",
        default=None,
        help="results.json of an earlier run (--keep) whose sections fill those not run now",
    )
    parser.add_argument("--note", default="", help="a line added under the header")
    parser.add_argument(
        "--keep", default=None, help="work in this folder and keep it (with results.json)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.split_worker:
        print(json.dumps(split_worker(Path(args.split_worker), args.reps, args.physics_batch)))
        return
    sections = {int(s) for s in args.sections.split(",") if s}
    q = args.quick
    loads = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_imaging_") as tmp:
        root = Path(args.keep or tmp)
        if 1 in sections:
            nx, nz = (16, 8) if q else (32, 16)
            results["born"] = bench_born(root, nx, nz, 2 if q else 4, 60 if q else 400)
            loads.append(os.getloadavg()[0])
            print(f"[1] done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if 2 in sections:
            nx, nz = (16, 8) if q else (32, 16)
            its, steps, burn = (40, 60, 50) if q else (300, 1500, 400)
            results["fwi"] = bench_fwi(root, nx, nz, 2 if q else 4, its, steps, 4 if q else 8, burn)
            loads.append(os.getloadavg()[0])
            print(f"[2] done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if 3 in sections:
            results["split"] = bench_split(root, 2 if q else 5)
            loads.append(os.getloadavg()[0])
            print(f"[3] done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if 4 in sections:
            results["mpi"] = bench_mpi(root, 60, 30, 10 if q else 30, 1 if q else 2)
            loads.append(os.getloadavg()[0])
        (root / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        if "mpi" in earlier:  # JSON turned the rank counts into strings
            for key in ("runs", "median", "phases"):
                earlier["mpi"][key] = {int(n): v for n, v in earlier["mpi"][key].items()}
        results = {k: results.get(k, earlier.get(k)) for k in ("born", "fwi", "split", "mpi")}
        results = {k: v for k, v in results.items() if v is not None}
    text = report(results, args, loads, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
