"""How far apart are retrains of the same data? The reference spread for the 200-erasure benchmark (issue 5).

    python benchmarks/bench_retrain_spread.py docs/bench/sequential_ml-latest-small_tol025.json \
        docs/bench/sequential_retrain_spread.json [ratings.csv]

Trains the benchmark's model again (same split, same parameters), removes
the erased users the sequential run's JSON lists, and reports test RMSE and
the training objective on the remaining data (Spark ALS explicit:
``sum (r - x.y)^2 + reg (n_u |x_u|^2 + n_i |y_i|^2)``) for: the original
model, all users unlearned in one batch, and retrains by seed and iteration
count.
"""
import json, logging, sys, os, shutil, tempfile
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_session
from dataclasses import replace
from pyspark.sql import functions as F
from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.train import train_als
from spark_unlearn.eval.metrics import rmse
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.train_model import run_training
log = logging.getLogger("spark_unlearn.bench.spread")
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
with open(sys.argv[1]) as fh:
    seq = json.load(fh)
spark = bench_session("noise", "local[2]")
params = ALSParams(**{k: v for k, v in seq["params"].items()})
root = os.path.join(tempfile.mkdtemp(prefix="spread_"), "store")
ratings_path = sys.argv[3] if len(sys.argv) > 3 else "../shared/data/ml-latest-small/ratings.csv"
run_training(spark, ratings_path=ratings_path, store_path=root, params=params)
v = ModelStore(root).load(spark)
gone = spark.createDataFrame([(u,) for u in seq["users"]], "user int")
data = v.ratings.join(gone, "user", "left_anti").cache(); hold = v.holdout.join(gone, "user", "left_anti").cache()
def objective(model):
    """Spark ALS explicit objective on the final data: sum (r - x.y)^2 + reg (n_u |x_u|^2 + n_i |y_i|^2)."""
    u = model.user_factors.withColumnRenamed("features", "x").withColumnRenamed("id", "user")
    i = model.item_factors.withColumnRenamed("features", "y").withColumnRenamed("id", "item")
    j = data.join(u, "user").join(i, "item")
    dot = F.aggregate(F.zip_with("x", "y", lambda a, b: a * b), F.lit(0.0).cast("double"), lambda acc, v: acc + v)
    sq = lambda c: F.aggregate(F.transform(c, lambda a: a * a), F.lit(0.0).cast("double"), lambda acc, v: acc + v)
    row = j.agg(F.sum((F.col("rating") - dot) ** 2), F.sum(sq("x")), F.sum(sq("y"))).first()
    return float(row[0] + params.reg * (row[1] + row[2]))

out = {"original_model_on_final_holdout": float(rmse(v.model, hold)), "sequential_final": seq["final_rmse"], "retrains": []}
out["original_objective_on_final_data"] = objective(v.model)
from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning
batch = spark.createDataFrame([(u, None, "user") for u in seq["users"]], "user int, item int, kind string")
rep = run_unlearning(spark, UnlearnRequest(model_path=root, batch=batch, measure=False, options=UnlearnOptions(tol_factor=0.25)))
ob = ModelStore(root).load(spark)
out["one_batch"] = {"rmse": float(rmse(ob.model, hold)), "objective": objective(ob.model), "mode": rep["mode"],
                    "certificate": rep["certificate"]["max_relative_residual"], "tol": rep["tolerance"]}
log.info("one batch: %s", out["one_batch"])
for its, seeds in ((10, range(5)), (40, range(5)), (150, range(2))):
    for seed in seeds:
        m = train_als(data, replace(params, iterations=its, seed=seed)).model
        r = float(rmse(m, hold)); o = objective(m); out["retrains"].append({"iterations": its, "seed": seed, "rmse": r, "objective": o}); log.info("retrain %d iterations, seed %d: RMSE %.5f, objective %.1f", its, seed, r, o)
with open(sys.argv[2], "w") as fh:
    json.dump(out, fh, indent=2)
shutil.rmtree(os.path.dirname(root), ignore_errors=True)
