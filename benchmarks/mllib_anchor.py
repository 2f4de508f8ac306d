"""Spark MLlib's ALS retrain, the benchmarks' anchor, timed with native BLAS and with netlib's Java fallback.

Spark's ALS calls BLAS and LAPACK through ``dev.ludovic.netlib``, which loads
a native library (``libblas.so.3`` / ``liblapack.so.3``) when the machine has
one and falls back to its Java implementations (``VectorBLAS``,
``F2jLAPACK``) otherwise.  Which one is faster depends on the machine and the
rank, so a fair anchor times both, in the same run, and compares against the
faster.  The choice is made when the JVM starts, so each configuration runs
in its own process (one warm JVM per configuration, every data set in turn):

* ``native``: netlib's defaults.  On Debian, ``apt-get install
  libopenblas0-pthread`` makes OpenBLAS the system's ``libblas.so.3`` and
  ``liblapack.so.3`` (update-alternatives).  The worker runs with
  ``OPENBLAS_NUM_THREADS=1`` (and ``MKL_NUM_THREADS=1``), as Spark's MLlib
  guide advises: Spark runs one task per core, and a multi-threaded BLAS in
  each task oversubscribes the cores;
* ``java``: ``-Ddev.ludovic.netlib.blas.nativeLib=`` and
  ``...lapack.nativeLib=`` set to a library that does not exist, so that the
  native load fails and netlib falls back to Java.

Each configuration reports the implementation classes the JVM really loaded
(a ``native`` run without a native library says so and is left out), and per
data set: the wall times of ``ALS.fit`` plus ``save`` (``runs`` runs, the
fastest kept), and the cost of one iteration, ``(t(maxIter) - t(1)) /
(maxIter - 1)`` (fit only, the fastest runs).

Run as a script it is one configuration's worker (``--blas``); benchmarks call
:func:`anchor_times`, which starts one worker per configuration in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CONFIGS = ("native", "java")
# A library name that does not exist: netlib's native load fails and it falls back to its Java implementations.
JAVA_FALLBACK = ("-Ddev.ludovic.netlib.blas.nativeLib=libno-native-blas.so "
                 "-Ddev.ludovic.netlib.lapack.nativeLib=libno-native-lapack.so")
NATIVE_CLASSES = {"blas": "dev.ludovic.netlib.blas.JNIBLAS", "lapack": "dev.ludovic.netlib.lapack.JNILAPACK"}


def loaded_implementations(spark) -> dict:
    """The BLAS and LAPACK classes netlib gives this JVM (``JNI*``: native; ``VectorBLAS``/``F2jLAPACK``: Java)."""
    jvm = spark.sparkContext._jvm
    out = {}
    for key, name in (("blas", "dev.ludovic.netlib.blas.BLAS"), ("lapack", "dev.ludovic.netlib.lapack.LAPACK")):
        cls = jvm.java.lang.Class.forName(name)
        out[key] = cls.getMethod("getInstance", None).invoke(None, None).getClass().getName()
    return out


def _fit_seconds(spark, path: str, params: dict, max_iter: int, save_to: str | None) -> tuple[float, float]:
    """``(fit seconds, fit + save seconds)`` of one MLlib ALS on the Parquet ratings at ``path``."""
    from pyspark.ml.recommendation import ALS

    t = time.perf_counter()
    model = ALS(rank=params["rank"], regParam=params["reg"], implicitPrefs=params["implicit"], alpha=params["alpha"],
                maxIter=max_iter, numUserBlocks=params["blocks"], numItemBlocks=params["blocks"], seed=0,
                userCol="user", itemCol="item", ratingCol="rating").fit(spark.read.parquet(path))
    # fit() is lazy about nothing here: it runs every iteration before it returns (the factors are materialised).
    fit = time.perf_counter() - t
    if save_to:
        model.write().overwrite().save(save_to)
    return fit, time.perf_counter() - t


def worker(blas: str, datasets: dict[str, str], params: dict, runs: int, save_dir: str | None, master: str) -> dict:
    """One configuration's timings, in this process (its JVM starts here with that configuration)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import bench_session

    spark = bench_session(f"mllib-anchor-{blas}", master, java_options=JAVA_FALLBACK if blas == "java" else None)
    loaded = loaded_implementations(spark)
    native = all(loaded[k] == NATIVE_CLASSES[k] for k in NATIVE_CLASSES)
    out = {"blas": blas, "loaded": loaded, "native": native, "datasets": {},
           "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
    if (blas == "native") != native:
        out["unavailable"] = (f"asked for {blas} BLAS, the JVM loaded {loaded}"
                              + ("; install a native BLAS (Debian: apt-get install libopenblas0-pthread)"
                                 if blas == "native" else ""))
        spark.stop()
        return out
    for name, path in datasets.items():
        save_to = os.path.join(save_dir, f"{name}_{blas}") if save_dir else None
        full = [_fit_seconds(spark, path, params, params["iterations"], save_to) for _ in range(max(1, runs))]
        one = min(_fit_seconds(spark, path, params, 1, None)[0] for _ in range(max(1, runs)))
        fit_n = min(f for f, _ in full)
        out["datasets"][name] = {
            "wall_s": min(w for _, w in full), "runs": [round(w, 3) for _, w in full],
            "fit_s": fit_n, "fit_one_iteration_s": one,
            "per_iteration_s": (fit_n - one) / (params["iterations"] - 1) if params["iterations"] > 1 else None,
            "model": save_to}
    spark.stop()
    return out


def anchor_times(datasets: dict[str, str], params: dict, runs: int = 2, configs=CONFIGS, save_dir: str | None = None,
                 master: str = "local[2]") -> dict:
    """Both configurations' timings, each in its own worker process, one after the other.

    ``datasets``: name -> Parquet directory of ``user``, ``item``, ``rating``;
    ``params``: ``rank``, ``reg``, ``alpha``, ``implicit``, ``iterations``,
    ``blocks``.  Returns ``{config: worker result}``.
    """
    out = {}
    for blas in configs:
        with tempfile.NamedTemporaryFile("r", suffix=".json") as fh:
            cmd = [sys.executable, os.path.abspath(__file__), "--blas", blas, "--params", json.dumps(params),
                   "--runs", str(runs), "--master", master, "--out", fh.name,
                   *(["--save-dir", save_dir] if save_dir else []),
                   "--data", *[f"{k}={v}" for k, v in datasets.items()]]
            env = dict(os.environ, **({"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if blas == "native" else {}))
            subprocess.run(cmd, check=True, env=env)
            out[blas] = json.load(fh)
    return out


def fastest(times: dict, name: str) -> tuple[str, dict] | None:
    """``(config, its entry)`` of the faster available configuration on data set ``name``."""
    found = [(blas, r["datasets"][name]) for blas, r in times.items() if name in r.get("datasets", {})]
    return min(found, key=lambda x: x[1]["wall_s"]) if found else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blas", choices=CONFIGS, required=True)
    p.add_argument("--data", nargs="+", required=True, help="name=parquet_dir of user,item,rating")
    p.add_argument("--params", required=True, help="JSON: rank, reg, alpha, implicit, iterations, blocks")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--save-dir")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    datasets = dict(x.split("=", 1) for x in args.data)
    result = worker(args.blas, datasets, json.loads(args.params), args.runs, args.save_dir, args.master)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
