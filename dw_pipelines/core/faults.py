"""Fault injection for tests of crash and retry behaviour: named checkpoints on the data path.

`DW_FAULT_INJECTION` (read by settings) holds `point=action[*times]` entries separated by commas,
e.g. `staging.copy=terminate-backend*2,promote.before_commit=kill`. Actions:

* `kill`: SIGKILL this process (a crashed run: OOM, node loss).
* `terminate-backend`: the database backend of the current connection is terminated with
  `pg_terminate_backend` (a lost connection, as in a failover).
* `raise`: raise `TransientError`.
* `hang`: sleep for an hour (a run that never finishes: a stuck read, a lock that never comes).

`times` (default 1) counts per process. Unset in production: every checkpoint is then a no-op.
"""

import os
import signal
import time
from collections import Counter
from dataclasses import dataclass

from dw_pipelines.core.errors import ConfigurationError, TransientError

ACTIONS = ("kill", "terminate-backend", "raise", "hang")
HANG_SECONDS = 3600
_hits: Counter[str] = Counter()


@dataclass(frozen=True)
class Fault:
    point: str
    action: str
    times: int = 1


def parse_faults(spec: str | None) -> tuple[Fault, ...]:
    faults = []
    for entry in (spec or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        point, _, rest = entry.partition("=")
        action, _, times = rest.partition("*")
        if not point or action not in ACTIONS:
            raise ConfigurationError(
                f"DW_FAULT_INJECTION entry '{entry}': expected point=action[*times] with action "
                f"one of {', '.join(ACTIONS)}"
            )
        faults.append(Fault(point, action, int(times) if times else 1))
    return tuple(faults)


class Faults:
    def __init__(self, faults: tuple[Fault, ...] = ()):
        self._faults = {f.point: f for f in faults}

    def hit(self, point: str, connection=None) -> None:
        """Trigger the fault planned for `point`, if any and not used up."""
        fault = self._faults.get(point)
        if fault is None or _hits[point] >= fault.times:
            return
        _hits[point] += 1
        if fault.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault.action == "hang":
            time.sleep(HANG_SECONDS)
        elif fault.action == "terminate-backend" and connection is not None:
            # The backend serving this SQLAlchemy connection dies mid-transaction, as in a
            # failover; SQLAlchemy sees the disconnect and invalidates the pooled connection.
            connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        else:
            raise TransientError(f"injected fault at {point}")


NO_FAULTS = Faults()


def reset_fault_counters() -> None:
    """Forget how often each checkpoint fired (tests run several plans in one process)."""
    _hits.clear()
