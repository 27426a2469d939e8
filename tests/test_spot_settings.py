"""Spot settings, offline: the cluster files drain a reclaimed spot node in Ray before it goes (so Ray Train's
workers write a just-in-time checkpoint), the documented jobs are elastic, `atomica-ray spot-watch` reads the
clouds' notices, and the config refuses what it cannot honour."""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path

import pytest
import yaml

from atomica_ray.cli.spot_watch import aws_seconds_left, drain_command
from atomica_ray.train.config import TrainConfig
from atomica_ray.train.storage import check_storage_uri
from test_cluster_files import atomica_ray_args, cluster_spec, parse_ray

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def spot_groups(relpath: str) -> list[dict]:
    spec = cluster_spec(yaml.safe_load((CLUSTER / relpath).read_text()))
    return [g for g in spec["workerGroupSpecs"] if "spot" in g["groupName"]]


@pytest.mark.parametrize("relpath", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_kuberay_spot_pods_drain_their_node_as_preempted_before_they_go(relpath):
    (group,) = spot_groups(relpath)
    pod = group["template"]["spec"]
    shell = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert shell[:2] == ["/bin/sh", "-c"]
    drain, sleep = [shlex.split(part) for part in shell[2].split(";")]
    name, params = parse_ray(drain)
    assert name == "drain-node" and params["reason"] == "DRAIN_NODE_REASON_PREEMPTION"
    # the pod lives until the drain deadline (the workers' checkpoint time), within the grace period
    assert sleep == ["sleep", str(params["deadline_remaining_seconds"])]
    assert params["deadline_remaining_seconds"] < pod["terminationGracePeriodSeconds"]


def test_rayjob_runs_an_elastic_job():
    entrypoint = yaml.safe_load((CLUSTER / "kuberay/rayjob.yaml").read_text())["spec"]["entrypoint"]
    cfg_args = atomica_ray_args(shlex.split(entrypoint))
    low, high = (int(x) for x in cfg_args.num_workers.split(":"))
    assert 1 <= low < high


@pytest.mark.parametrize("relpath,cloud", [("aws.yaml", "aws"), ("gcp.yaml", "gcp")])
def test_launcher_spot_nodes_watch_for_the_reclaim_notice(relpath, cloud):
    config = yaml.safe_load((CLUSTER / relpath).read_text())
    for name, node in config["available_node_types"].items():
        if "spot" not in name:
            assert "spot-watch" not in " ".join(node.get("worker_setup_commands", [])), name
            continue
        # a node type's own worker_setup_commands replace the global setup_commands (Ray's launcher)
        *setup, watch = node["worker_setup_commands"]
        assert setup == config["setup_commands"], setup
        argv = shlex.split(watch.split(">")[0])[1:]  # without nohup and the redirection
        assert argv == ["atomica-ray", "spot-watch", "--cloud", cloud], watch
        atomica_ray_args(argv)


def test_spot_watch_drains_with_the_clouds_deadline():
    now = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    notice = '{"action": "terminate", "time": "2026-05-01T12:02:00Z"}'
    assert aws_seconds_left(notice, now) == 120
    name, params = parse_ray(drain_command(120 - 5, "aws spot interruption"))
    assert name == "drain-node" and params["reason"] == "DRAIN_NODE_REASON_PREEMPTION"
    assert params["deadline_remaining_seconds"] == 115 and params["node_id"] is None  # this node
    assert parse_ray(drain_command(-3, "late"))[1]["deadline_remaining_seconds"] == 1


def test_worker_range_and_preemption_keys():
    cfg = TrainConfig().with_overrides(["num_workers=2:8", "max_preemptions=3"])
    assert (cfg.num_workers, cfg.max_workers, cfg.elastic, cfg.max_preemptions) == (2, 8, True, 3)
    assert cfg.micro_batches_per_step == 8 and cfg.replace(grad_accum=2).micro_batches_per_step == 16
    assert TrainConfig(num_workers=4).micro_batches_per_step == 4
    with pytest.raises(ValueError, match="key 'max_workers' = 2: must be >= num_workers"):
        TrainConfig.from_dict({"num_workers": "4:2"})
    with pytest.raises(ValueError, match="expected N or MIN:MAX"):
        TrainConfig.from_dict({"num_workers": "two:8"})


def test_storage_uris_with_secrets_are_refused():
    check_storage_uri("s3://bucket/atomica-ray")
    check_storage_uri("/mnt/cluster_storage/atomica-ray")
    with pytest.raises(ValueError, match="credentials in the URI") as error:
        check_storage_uri("s3://AKIAEXAMPLE:topsecret@bucket/runs")
    assert "topsecret" not in str(error.value)
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        check_storage_uri("s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http")
    with pytest.raises(ValueError, match="credentials belong in the environment"):
        check_storage_uri("s3://bucket/runs?secret_key=abc")
