"""Per-run Kubernetes settings: the `dagster-k8s/config` run tag, by the source's size class.

K8sRunLauncher reads this tag when it builds a run's Job, so a large file gets a bigger pod than a
small one without a separate job per size. The size is the one recorded at enqueue time (a local
file's stat, an object's HEAD: `outbox.source_size_bytes`); for rows enqueued before that column
existed, the file is looked up where the sensor runs, and a source it cannot see there gets the
default class.
"""

import json
import os

from dw_pipelines.core.outbox import OutboxJob

K8S_CONFIG_TAG = "dagster-k8s/config"
LARGE_SOURCE_BYTES = 100 << 20

# Memory follows the data path: ~20 MB of Arrow buffers while streaming (bounded read-ahead)
# plus the in-file key check (8 bytes a row), on top of ~200 MB for the Dagster run process
# itself (docs/benchmarks.md: ~275 MB at the peak for a 5M-row file).
RESOURCES = {
    "small": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    "large": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
}


def size_class(job: OutboxJob) -> str:
    size = job.source_size_bytes
    if size is None:
        path = job.payload.get("source_uri", "").removeprefix("file://")
        try:
            size = os.stat(path).st_size
        except (OSError, ValueError):
            return "small"
    return "large" if size >= LARGE_SOURCE_BYTES else "small"


def k8s_config_tag(job: OutboxJob) -> dict[str, str]:
    """The run tag K8sRunLauncher applies to the run's pod (other launchers ignore it)."""
    config = {
        "container_config": {"resources": RESOURCES[size_class(job)]},
        # Placeholders for a dedicated node pool; fill in per cluster.
        "pod_spec_config": {"node_selector": {}, "tolerations": []},
    }
    return {K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)}
