#!/usr/bin/env python3
"""The import at scale (make bench; docs/benchmarks.md, "Import").

Generates kubectl exports of N PipelineRuns (full objects as a cluster
returns them: managedFields, labels, annotations, spec, status) over 100
repositories (limit 5; two started runs each, the rest queued in events of
two), then for each backend starts `pac-concurrency serve` with default
flags and imports each export twice through it with the CLI, timing each
import and reading the CLI's peak RSS. Prints one line per import and the
cost per run at 10k against 100k.

  scripts/import_bench.py BUILD_DIR BACKEND[,BACKEND...] [N,N,...]

PostgreSQL: the server of PAC_TEST_PG_* (scripts/pg-test-server.sh);
etcd: PAC_TEST_ETCD_ENDPOINTS. Each import goes to fresh repositories
(a namespace prefix per backend and size), so one backend's state does not
carry into the next measurement.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPOS = 100
PAD = "m" * 600


def generate(path, n, prefix):
    with open(path, "w") as f:
        f.write('{"apiVersion":"v1","kind":"List","items":[')
        for i in range(n):
            r = i % REPOS
            ns = f"{prefix}-{r}"
            k = i // REPOS
            state = "started" if k < 2 else "queued"
            ev = k // 2
            created = "2026-01-%02dT%02d:%02d:%02dZ" % (
                1 + (k // 86400) % 28, (k // 3600) % 24, (k // 60) % 60, k % 60)
            obj = {
                "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
                "metadata": {
                    "name": f"pr-{k}", "namespace": ns,
                    "creationTimestamp": created, "uid": f"uid-{i}",
                    "resourceVersion": str(1000 + i), "generation": 1,
                    "managedFields": [{
                        "apiVersion": "tekton.dev/v1", "fieldsType": "FieldsV1",
                        "manager": "pipelines-as-code-controller",
                        "operation": "Update",
                        "fieldsV1": {"f:metadata": {"f:annotations": {"f:x": PAD}}},
                    } for _ in range(6)],
                    "labels": {
                        "pipelinesascode.tekton.dev/state": state,
                        "pipelinesascode.tekton.dev/repository": "app",
                        "app.kubernetes.io/managed-by": "pipelinesascode.tekton.dev",
                        "tekton.dev/pipeline": "build"},
                    "annotations": {
                        "pipelinesascode.tekton.dev/state": state,
                        "pipelinesascode.tekton.dev/repository": "app",
                        "pipelinesascode.tekton.dev/execution-order":
                            f"{ns}/pr-{ev * 2},{ns}/pr-{ev * 2 + 1}",
                        "pipelinesascode.tekton.dev/sha-title": "a commit " * 20}},
                "spec": {"pipelineRef": {"name": "build"},
                         "params": [{"name": "revision", "value": "a" * 40}]},
                "status": {"conditions": [{"type": "Succeeded",
                                           "status": "Unknown"}],
                           "childReferences": [{"name": f"pr-{k}-build",
                                                "kind": "TaskRun"}]}}
            if state == "queued":
                obj["spec"]["status"] = "PipelineRunPending"
            if i:
                f.write(",")
            f.write(json.dumps(obj, separators=(",", ":")))
        f.write("]}")
    with open(path + ".repos.yaml", "w") as f:
        for r in range(REPOS):
            f.write(f"---\nkind: Repository\nmetadata: {{name: app, "
                    f"namespace: {prefix}-{r}}}\nspec: {{concurrency_limit: 5}}\n")


def config(backend, tmp):
    path = os.path.join(tmp, backend + ".yaml")
    env = os.environ
    with open(path, "w") as f:
        if backend == "memory":
            f.write("concurrency-driver: memory\n")
        elif backend == "postgresql":
            f.write("concurrency-driver: postgresql\npostgresql-host: 127.0.0.1\n"
                    f"postgresql-port: {env['PAC_TEST_PG_PORT']}\n"
                    f"postgresql-database: {env.get('PAC_TEST_PG_DATABASE', 'pac_concurrency')}\n"
                    f"postgresql-username: {env.get('PAC_TEST_PG_USER', 'pac_user')}\n"
                    f"postgresql-password-file: {env['PAC_TEST_PG_PASSWORD_FILE']}\n"
                    "postgresql-ssl-mode: disable\n")
        else:
            f.write("concurrency-driver: etcd\n"
                    f"etcd-endpoints: {env['PAC_TEST_ETCD_ENDPOINTS']}\n"
                    f"etcd-prefix: /import-bench-{os.getpid()}/\n")
    return path


def serve(binary, cfg):
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0",
                          "--config", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        m = re.search(r"serving on (http://\S+)", line)
        if m:
            return p, m.group(1)
    raise RuntimeError("serve did not start")


def import_once(binary, url, export):
    start = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", binary, "--server", url,
                        "import", "--pipelineruns", export, "--repositories",
                        export + ".repos.yaml", "-o", "json"],
                       capture_output=True, text=True)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise RuntimeError(f"import failed ({r.returncode}): {r.stderr[-500:]}")
    rss_kb = int(r.stderr.strip().splitlines()[-1])
    d = json.loads(r.stdout)
    return took, rss_kb, {k: len(v) for k, v in d.items() if isinstance(v, list)}


def main():
    build, backends = sys.argv[1], sys.argv[2].split(",")
    sizes = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3
                              else "10000,100000").split(",")]
    binary = os.path.join(build, "pac-concurrency")
    tmp = tempfile.mkdtemp(prefix="pac-import-bench-")
    per_run = {}
    for backend in backends:
        cfg = config(backend, tmp)
        proc, url = serve(binary, cfg)
        try:
            for n in sizes:
                export = os.path.join(tmp, f"{backend}-{n}.json")
                generate(export, n, f"ib{os.getpid() % 10000}-{backend[:2]}-{n}")
                mb = os.path.getsize(export) / 1e6
                for attempt in ("first", "again"):
                    took, rss, counts = import_once(binary, url, export)
                    print(f"{backend:10} {n:>7} runs ({mb:6.0f} MB) {attempt:5}: "
                          f"{took:6.1f} s, {n / took:8.0f} runs/s, CLI RSS "
                          f"{rss / 1024:5.0f} MB; running {counts['running']}, "
                          f"admitted {counts['admitted']}, "
                          f"queued {counts['queued']}",
                          flush=True)
                    if attempt == "first":
                        per_run[(backend, n)] = took / n
                os.remove(export)
        finally:
            proc.terminate()
            proc.wait()
    for backend in backends:
        if (backend, sizes[0]) in per_run and (backend, sizes[-1]) in per_run:
            ratio = per_run[(backend, sizes[-1])] / per_run[(backend, sizes[0])]
            print(f"{backend}: cost per run at {sizes[-1]} / at {sizes[0]}: "
                  f"{ratio:.2f}")


if __name__ == "__main__":
    main()
