"""`atomica-ray spot-watch`: turn a cloud's spot interruption notice into a Ray preemption drain of this node.

    atomica-ray spot-watch --cloud aws      # on every spot node, in the background (cluster/aws.yaml does this)

Ray Train learns that a node is about to go only from a drain with reason DRAIN_NODE_REASON_PREEMPTION (what
`ray drain-node` sends, and what KubeRay nodes send on SIGTERM); the clouds announce a reclaim through their
instance metadata instead: AWS two minutes ahead (`spot/instance-action`, IMDSv2), GCP 30 s ahead
(`instance/preempted`). This command polls the metadata server and, at the notice, drains the node it runs on, with
the cloud's deadline, so the training workers there write a just-in-time checkpoint (train/loop.py) in time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

AWS_IMDS = "http://169.254.169.254/latest"
GCP_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/preempted"
GCP_NOTICE_S = 30  # GCE stops a preempted VM 30 s after the notice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cloud", choices=("aws", "gcp"), required=True, help="whose metadata server to watch")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between metadata polls")
    parser.add_argument("--margin", type=float, default=5.0,
                        help="seconds taken off the cloud's deadline (the drain must end before the VM does)")


def aws_seconds_left(instance_action: str, now: dt.datetime) -> float:
    """Seconds until the action of AWS's `spot/instance-action` document ({"action": ..., "time": ISO 8601 Z})."""
    when = dt.datetime.fromisoformat(json.loads(instance_action)["time"].replace("Z", "+00:00"))
    return (when - now).total_seconds()


def drain_command(seconds_left: float, reason: str) -> list[str]:
    """`ray drain-node` of this node (its default) as Ray's autoscaler drains a preempted node."""
    return ["ray", "drain-node", "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", reason,
            "--deadline-remaining-seconds", str(max(1, int(seconds_left)))]


def _get(url: str, headers: dict, method: str = "GET") -> str | None:
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        if error.code == 404:  # AWS: no interruption scheduled
            return None
        raise


def aws_notice() -> float | None:
    token = _get(f"{AWS_IMDS}/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}, method="PUT")
    action = _get(f"{AWS_IMDS}/meta-data/spot/instance-action", {"X-aws-ec2-metadata-token": token or ""})
    return None if action is None else aws_seconds_left(action, dt.datetime.now(dt.timezone.utc))


def gcp_notice() -> float | None:
    value = _get(GCP_METADATA, {"Metadata-Flavor": "Google"})
    return GCP_NOTICE_S if (value or "").strip().upper() == "TRUE" else None


def run(args: argparse.Namespace) -> int:
    notice = aws_notice if args.cloud == "aws" else gcp_notice
    while True:
        try:
            seconds = notice()
        except (OSError, ValueError) as error:  # metadata server unreachable for a moment, or a half answer
            print(f"atomica-ray spot-watch: {error}", file=sys.stderr)
            seconds = None
        if seconds is not None:
            command = drain_command(seconds - args.margin, f"{args.cloud} spot interruption")
            print("atomica-ray spot-watch: " + " ".join(command), flush=True)
            return subprocess.run(command).returncode
        time.sleep(args.interval)
