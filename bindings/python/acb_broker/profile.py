"""Job profiles for ``agarun --profile``: libacb's phase marks in, a job trace and a verdict out.

libacb appends a JSON line to ``$ACB_PROFILE`` at each phase boundary of each client
(``start``, ``ask``, ``got``, ``end``, ``stop``; wall-clock nanoseconds). Here they become, per
job: CPU phases (from the launch, or the last end, to the next ask), GPU phases (from got to
end) and waits for a GPU (from ask to got, which are neither), written in the trace format of
``acb-assigner simulate``.

The rule of thumb is the white paper's: acb helps a job that spends more than 30% of its time
in CPU phases that each last at least several hundred milliseconds.
"""
import json
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

#: The rule of thumb's thresholds.
MIN_CPU_SHARE = 0.30
MIN_CPU_PHASE_NS = 300_000_000


@dataclass
class JobProfile:
    """One client's phases, in nanoseconds, in order: ("cpu" | "gpu", length)."""

    job: str
    pid: int
    phases: List[Tuple[str, int]] = field(default_factory=list)
    waits: List[int] = field(default_factory=list)
    gpus: int = 1
    #: Peak swappable device memory per GPU, in bytes, as libacb measured it at each phase end
    #: (what a swap-out moves); 0 when the job keeps none.
    memory: int = 0

    def total(self, kind: str) -> int:
        return sum(n for k, n in self.phases if k == kind)

    def span(self) -> int:
        return self.total("cpu") + self.total("gpu") + sum(self.waits)

    def cpu_share(self) -> float:
        span = self.span()
        return self.total("cpu") / span if span else 0.0

    def median_cpu_phase(self) -> int:
        cpu = [n for k, n in self.phases if k == "cpu"]
        return int(statistics.median(cpu)) if cpu else 0

    def gpu_phases(self) -> int:
        return sum(1 for k, _ in self.phases if k == "gpu")

    def _add(self, kind: str, length: int) -> None:
        if length <= 0:
            return
        if self.phases and self.phases[-1][0] == kind:
            self.phases[-1] = (kind, self.phases[-1][1] + length)
        else:
            self.phases.append((kind, length))


def read_marks(path: str) -> List[dict]:
    """The marks in ``path``; lines that are not whole marks (a crash mid-write) are skipped."""
    marks = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if isinstance(m, dict) and isinstance(m.get("t"), int) and isinstance(m.get("event"), str):
                marks.append(m)
    return marks


def profiles(marks: List[dict], launched_ns: int, exited_ns: int) -> List[JobProfile]:
    """Per client (process and job), its phases from ``launched_ns`` to ``exited_ns``."""
    by_client: Dict[Tuple[int, str], List[dict]] = {}
    for m in marks:
        by_client.setdefault((int(m.get("pid", 0)), str(m.get("job", ""))), []).append(m)
    out = []
    for (pid, job), ms in by_client.items():
        ms.sort(key=lambda m: m["t"])
        p = JobProfile(job=job, pid=pid)
        cursor = launched_ns   # where the current CPU phase began
        asked: Optional[int] = None
        computing: Optional[int] = None
        for m in ms:
            t, event = m["t"], m["event"]
            if event == "ask":
                p._add("cpu", t - cursor)
                asked, cursor = t, t
            elif event == "got" and asked is not None:
                p.waits.append(max(0, t - asked))
                asked, computing = None, t
                p.gpus = int(m.get("gpus", 1)) or 1
                # Not the grant's "memory": that is the lease's fence (a whole 80 GiB GPU when
                # the job asked for no size), not what the job had resident.
            elif event == "end" and computing is not None:
                p._add("gpu", t - computing)
                computing, cursor = None, t
                p.memory = max(p.memory, int(m.get("swappable", 0)) // max(p.gpus, 1))
        if computing is not None:        # ended inside a GPU phase
            p._add("gpu", exited_ns - computing)
        elif asked is None:
            p._add("cpu", exited_ns - cursor)
        if p.gpu_phases():
            out.append(p)
    return sorted(out, key=lambda p: (p.job, p.pid))


def _duration(ns: int) -> str:
    return f"{max(1, round(ns / 1e6))}ms"


def trace(jobs: List[JobProfile], memory: Optional[int] = None) -> dict:
    """The jobs as a trace for ``acb-assigner simulate``. Memory per GPU, what a swap moves:
    ``memory`` (what the job said it keeps, agarun's ``--memory``) when given, else the peak
    swappable memory libacb measured; left out (0, nothing to swap) when that is 0."""
    out = []
    for p in jobs:
        job = {"name": p.job, "count": 1, "gpus": p.gpus}
        bytes_ = memory if memory is not None else p.memory
        if bytes_:
            job["memory"] = f"{bytes_}B"
        job["phases"] = [{kind: _duration(n)} for kind, n in p.phases]
        out.append(job)
    return {"jobs": out}


def verdict(p: JobProfile) -> Tuple[bool, str]:
    """Whether acb will likely help this job, and why, by the rule of thumb."""
    share, median = p.cpu_share(), p.median_cpu_phase()
    if share <= MIN_CPU_SHARE:
        return False, (f"acb will gain little: only {share:.0%} of the time is in CPU phases "
                       f"(the rule of thumb wants more than {MIN_CPU_SHARE:.0%})")
    if median < MIN_CPU_PHASE_NS:
        return False, (f"acb will gain little: {share:.0%} of the time is in CPU phases, but they are short "
                       f"(median {median / 1e6:.0f} ms; the rule of thumb wants several hundred ms each)")
    return True, (f"acb will likely help: {share:.0%} of the time is in CPU phases of median "
                  f"{median / 1e6:.0f} ms, while another job could use the GPU")


def summary(jobs: List[JobProfile]) -> str:
    lines = []
    for p in jobs:
        span = p.span() or 1
        lines.append(f"job {p.job} (pid {p.pid}): {p.gpu_phases()} GPU phases over {span / 1e9:.1f} s: "
                     f"CPU {p.total('cpu') / span:.0%}, GPU {p.total('gpu') / span:.0%}, "
                     f"waiting for a GPU {sum(p.waits) / span:.0%}")
        lines.append("  " + verdict(p)[1])
    return "\n".join(lines)
