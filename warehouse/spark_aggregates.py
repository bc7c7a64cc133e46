"""The aggregates table with Spark: runs sql/spark/00_events.sql and the shared steps over
Parquet events and writes a directory of Parquet part files. Local mode on one machine:

    python warehouse/spark_aggregates.py --events data/events.parquet \
        --users data/users.parquet --as-of 2026-06-01T00:00:00Z --out aggregates/

On a cluster the same file runs under spark-submit (sql/README.md: "Spark").
"""

import os
import time

from pyspark.sql import SparkSession

from common import MATERIALISE, OPTIONAL_COLUMNS, arguments, created_view, snapshot_times, sql_files, statements, DAY


def session(args):
    builder = (
        SparkSession.builder.appName("tiering-aggregates")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if not os.environ.get("SPARK_SUBMITTED"):
        # Local mode: few cores, so few shuffle partitions.
        builder = builder.config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
        if args.driver_memory:
            builder = builder.config("spark.driver.memory", args.driver_memory)
        if args.local_dir:
            builder = builder.config("spark.local.dir", args.local_dir)
    if "SPARK_MASTER" in os.environ or not os.environ.get("SPARK_SUBMITTED"):
        builder = builder.master(os.environ.get("SPARK_MASTER", "local[*]"))
    return builder.getOrCreate()


def run(args):
    spark = session(args)
    spark.sparkContext.setLogLevel("WARN")
    events = spark.read.parquet(args.events)
    # Optional columns of the data contract the events may lack (as the tiering readers allow).
    for column, kind in OPTIONAL_COLUMNS:
        if column not in events.columns:
            events = events.selectExpr("*", f"CAST(NULL AS {kind}) AS {column}")
    events.createOrReplaceTempView("raw_events")
    if args.users:
        spark.read.parquet(args.users).createOrReplaceTempView("raw_users")
    else:
        spark.sql("SELECT CAST(NULL AS STRING) AS user_id, CAST(NULL AS STRING) AS registered_at "
                  "WHERE false").createOrReplaceTempView("raw_users")
    rows = [(t, t // DAY, args.horizon_days) for t in snapshot_times(args)]
    spark.createDataFrame(rows, "snapshot BIGINT, day BIGINT, horizon_days BIGINT") \
        .createOrReplaceTempView("snapshots")
    for path in sql_files("spark"):
        for stmt in statements(path):
            spark.sql(stmt)
            if created_view(stmt) in MATERIALISE:
                spark.catalog.cacheTable(created_view(stmt))
    started = time.time()
    spark.table("aggregates").write.mode("overwrite").parquet(args.out)
    n = spark.read.parquet(args.out).count()
    print(f"spark: wrote {n} rows to {args.out} in {time.time() - started:.2f} s")
    spark.stop()


if __name__ == "__main__":
    p = arguments("Spark")
    p.add_argument("--driver-memory", help="local mode: the JVM's memory, e.g. 6g")
    p.add_argument("--local-dir", help="local mode: where Spark spills (spark.local.dir)")
    p.add_argument("--shuffle-partitions", type=int, default=8,
                   help="local mode: spark.sql.shuffle.partitions (default 8)")
    run(p.parse_args())
