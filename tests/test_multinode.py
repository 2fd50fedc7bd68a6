"""The search on a multi-node Ray cluster, simulated on this machine with `ray.cluster_utils.Cluster`.

Cluster: a head with 0 CPUs (GCS, the object store with the search's data, and, being the only node with room for
them, every Tune trial driver and Train controller) and two 1-CPU worker nodes. A trial has 2 workers of 1 CPU, so its
DDP ranks must span both worker nodes; trials run one at a time. The search runs as `python -m search.run --address
<cluster>` in its own process while this one watches the Train storage and removes and adds nodes.

One search of 2 trials (24 px, up to 4 epochs, no ASHA stop) shows both halves of issue 5's multi-node bullet:
- every trial's workers ran on more than one node, and the leaderboard's `nodes` column says which (real node ids of
  this cluster, never the 0-CPU head);
- a worker node is removed (`cluster.remove_node`) once the first trial has a registered checkpoint, and a new 1-CPU
  node is added: Ray Train retries the trial (FailureConfig max_failures, `--max-failures`) on the new node, resuming
  from its last checkpoint (the epochs go on from there, none is trained twice), and the search completes with both
  trials ranked.

Every node shares this machine's IP, so nodes are told apart by Ray node id. Multi-node runs need shared storage: the
nodes share nothing but a bucket of a real S3 protocol server (moto, the `s3` fixture; the nodes inherit its
AWS_ENDPOINT_URL), and the test reads Tune's and Train's files from the bucket too.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from search.board import leaderboard, storage
from search.board.paths import SEARCH_LOG, leaderboard_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NAME = "multinode"
PREFIX = "multinode"
REPO = Path(__file__).resolve().parents[1]  # the search's --storage: s3://<bucket>/multinode
MAX_EPOCHS = 4  # room for the node removal after the first checkpoint (an epoch here takes ~1.5 s)
# 1 CPU: a trial's 2 workers must span two nodes. Next to no `memory` resource: a trial driver asks for 0 CPU and
# 1 MiB of `memory` (search/tuning/plan.py), so drivers and their Train controllers fit only on the head, as on a real cluster
# whose stable head runs them; Train workers ask for CPU only.
WORKER_NODE = dict(num_cpus=1, memory=1024)


@pytest.fixture(scope="module")
def cluster(s3):
    """A head (0 CPUs, no dashboard) and two 1-CPU worker nodes; every node removed again when the module ends. The
    S3 server starts first, so every node's processes see its endpoint and keys."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's Ray (e.g. conftest's ray_2cpu) must not be the one we talk to
        ray.shutdown()
    with pytest.MonkeyPatch.context() as env:
        # a busy 2-core machine can take over a minute to start a worker group; the nodes' processes inherit this
        env.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "180")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            for _ in range(2):
                cluster.add_node(**WORKER_NODE)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address)  # this process watches the cluster; the search runs in its own
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def _swap_a_worker_node(cluster, s3, train_runs: str, search: subprocess.Popen) -> dict:
    """Once a trial has a checkpoint Ray Train registered (its checkpoint manager's snapshot is in the Train storage:
    every rank reported that epoch, so a retry resumes from it; a checkpoint folder alone is not enough), remove a
    worker node that runs only Train workers of it (the head holds the trial's driver and controller: losing those is
    a Tune-level failure, not this test's) and add a fresh 1-CPU node, so the retry has room. Runs in the main thread
    (starting a node installs signal handlers); returns {} when no checkpoint appeared."""
    from ray._private.state import actors  # straight from the GCS: this cluster runs no dashboard

    deadline = time.time() + 300
    found: list[str] = []
    while not found and search.poll() is None and time.time() < deadline:
        found = sorted(k for k in s3.keys(train_runs) if k.endswith("/checkpoint_manager_snapshot.json"))
        time.sleep(0.05)
    if not found:
        return {}
    trial_id = found[0].split("/")[-2]  # the Train run is named after the Tune trial id
    alive = [a for a in actors().values() if a["State"] == "ALIVE"]
    trainers = {a["Address"]["NodeID"] for a in alive if a["ActorClassName"] == "RayTrainWorker"}
    others = {a["Address"]["NodeID"] for a in alive if a["ActorClassName"] != "RayTrainWorker"}
    victim = next((n for n in sorted(cluster.worker_nodes, key=lambda n: n.node_id)
                   if n.node_id in trainers and n.node_id not in others), None)
    where = sorted((a["ActorClassName"], a["Address"]["NodeID"]) for a in alive)
    assert victim is not None, f"no worker node runs only Train workers: {where}"
    removed = victim.node_id
    cluster.remove_node(victim)
    added = cluster.add_node(**WORKER_NODE).node_id
    return dict(trial_id=trial_id, removed=removed, added=added)


def _reports(s3, trial_id: str) -> pd.DataFrame:
    """Tune's record of one trial: every report of its rank 0, in order (result.json, one JSON object a line)."""
    (key,) = [k for k in s3.keys(f"{PREFIX}/{NAME}/") if f"_{trial_id}_" in k and k.endswith("/result.json")]
    body = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read().decode()
    return pd.read_json(io.StringIO(body), lines=True)


@pytest.fixture(scope="module")
def search_losing_a_node(cluster, s3, tiny_cnmc, tmp_path_factory):
    """The search (`python -m search.run --address <cluster>`, its own process) with a worker node swapped mid-trial."""
    import ray

    tmp = tmp_path_factory.mktemp("multinode")
    argv = ["--family", "resnet", "--data", str(tiny_cnmc), "--image-sizes", "24", "--address", cluster.address,
            "--results", str(tmp / "results"), "--storage", s3.uri(PREFIX), "--name", NAME, "--num-samples", "2",
            "--max-epochs", str(MAX_EPOCHS), "--grace-epochs", str(MAX_EPOCHS), "--workers-per-trial", "2",
            "--cpus-per-worker", "1", "--max-failures", "2"]
    started = time.time()
    with open(tmp / "search.log", "w") as log:
        search = subprocess.Popen([sys.executable, "-m", "search.run", *argv], cwd=tmp, stdout=log,
                                  env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's code
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            swap = _swap_a_worker_node(cluster, s3, f"{PREFIX}/{NAME}/train_runs/", search)
            code = search.wait(timeout=420)
        finally:
            if search.poll() is None:
                os.killpg(search.pid, signal.SIGKILL)
                search.wait(timeout=60)
    print(f"multi-node search: {time.time() - started:.0f} s; {swap}")
    board = leaderboard.read(leaderboard_path(tmp / "results"))
    rows = board[board["search"] == NAME].reset_index(drop=True)
    every_node = {node["NodeID"] for node in ray.nodes()}  # alive and dead: all nodes this cluster ever had
    return dict(tmp=tmp, code=code, rows=rows, swap=swap, head=cluster.head_node.node_id, every_node=every_node,
                log=(tmp / "search.log").read_text())


def test_trials_workers_span_nodes_and_the_leaderboard_says_which(search_losing_a_node, s3):
    run = search_losing_a_node
    rows, head = run["rows"], run["head"]
    assert run["code"] == 0, run["log"][-4000:]
    assert len(rows) == 2 and rows["trial_id"].is_unique
    per_trial = [set(nodes.split(",")) for nodes in rows["nodes"]]
    assert all(len(nodes) >= 2 for nodes in per_trial)  # each trial's 2 ranks ran on 2 different nodes
    everywhere = set().union(*per_trial)
    assert len(everywhere) > 1
    assert everywhere <= run["every_node"]  # real Ray node ids of this cluster
    assert head not in everywhere  # the 0-CPU head holds no worker
    for trial_id in rows["trial_id"]:
        assert (_reports(s3, trial_id)["world_size"] == 2).all()  # one DDP run of 2 ranks, every epoch
    for uri in rows["checkpoint"]:  # a DDP trial's best checkpoint: its Train run's folder in the bucket
        assert uri.startswith(f"{s3.uri(PREFIX)}/{NAME}/train_runs/") and storage.exists(uri, "checkpoint.pt")


def test_node_removed_mid_trial_resumes_from_checkpoint_on_another_node(search_losing_a_node, s3):
    run = search_losing_a_node
    swap, rows, tmp = run["swap"], run["rows"], run["tmp"]
    assert swap, f"no checkpoint appeared, so no node was removed:\n{run['log'][-4000:]}"
    assert run["code"] == 0, run["log"][-4000:]  # the search completed ...
    assert set(rows["status"]) == {"finished"} and (rows["epochs_run"] == MAX_EPOCHS).all()  # ... every trial ranked

    hit = rows[rows["trial_id"] == swap["trial_id"]].iloc[0]
    assert {swap["removed"], swap["added"]} <= set(hit["nodes"].split(","))  # on the lost node, then on the new one
    progress = _reports(s3, swap["trial_id"])
    epochs = list(progress["epoch"])
    assert epochs == sorted(set(epochs)) and epochs[-1] == MAX_EPOCHS  # each epoch reported once, in order
    before = progress[progress["nodes"].str.contains(swap["removed"])]
    after = progress[~progress["nodes"].str.contains(swap["removed"])]
    assert len(before) >= 1 and len(after) >= 1
    assert after["epoch"].min() == before["epoch"].max() + 1  # the retry went on from the last checkpoint ...
    assert after["nodes"].str.contains(swap["added"]).all()  # ... on the node added after the loss
    # the retry's first report carries the epochs before the restart, read from the checkpoint it resumed from
    resumed = after.iloc[0]
    assert isinstance(resumed.get("prior_epochs"), str) and resumed["prior_epochs"]
    assert [e["epoch"] for e in json.loads(resumed["prior_epochs"])] == list(range(1, int(resumed["epoch"])))
    # and the retried worker said so (fit's log line, forwarded to the search's log file, not its console)
    last_before = int(before["epoch"].max())
    search_log = (tmp / "results" / NAME / SEARCH_LOG).read_text()
    # (from Train's local copy of the bucket's checkpoint folder)
    assert re.search(rf"resumed from \S+/checkpoint\.pt after epoch {last_before}\b",
                     search_log)
    assert "resumed from" not in run["log"]
