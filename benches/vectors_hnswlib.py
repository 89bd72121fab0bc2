"""hnswlib on the data set `flowbot-vector-bench --export DIR` wrote: the baseline of the
embedded vector store's benchmark (benches/vectors.sh runs both in one run).

For each ef it reports recall@k against the exact neighbours, query latency (p50, p99) and
queries per second on one thread, with M=16 and ef_construction=128 as FlowBot's index.
"""
import json
import sys
import time

import hnswlib
import numpy as np

d = sys.argv[1]
efs = [int(e) for e in sys.argv[2].split(",")] if len(sys.argv) > 2 else [32, 64, 128, 256]
shape = json.load(open(f"{d}/shape.json"))
n, dim, nq, k = shape["n"], shape["dim"], shape["queries"], shape["k"]
data = np.fromfile(f"{d}/data.f32", dtype="<f4").reshape(n, dim)
queries = np.fromfile(f"{d}/queries.f32", dtype="<f4").reshape(nq, dim)
truth = np.fromfile(f"{d}/truth.u32", dtype="<u4").reshape(nq, k)

index = hnswlib.Index(space="ip", dim=dim)
index.init_index(max_elements=n, M=16, ef_construction=128, random_seed=7)
index.set_num_threads(2)
started = time.perf_counter()
index.add_items(data, np.arange(n))
build = time.perf_counter() - started
index.set_num_threads(1)
for ef in efs:
    index.set_ef(max(ef, k))
    lat = []
    found = 0
    for q, want in zip(queries, truth):
        t = time.perf_counter()
        labels, _ = index.knn_query(q, k=k)
        lat.append(time.perf_counter() - t)
        found += len(set(labels[0].tolist()) & set(want.tolist()))
    lat.sort()
    total = sum(lat)
    print(
        f"hnswlib (M=16 efC=128 ef={ef}): build {build:.1f} s, recall@{k} {found / (nq * k):.4f}, "
        f"p50 {lat[len(lat) // 2] * 1e3:.3f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.3f} ms, "
        f"{nq / total:.0f} queries/s on one thread"
    )
