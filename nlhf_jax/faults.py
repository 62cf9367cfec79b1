"""Deterministic fault injection, for the recovery tests (`tests/faults_test.py`).

A run started with the environment variable

    NLHF_INJECT_FAULT="KILL@save#3"       (or "TERM@eval#1", several joined by ",")

sends itself SIGKILL (or SIGTERM) the third time it reaches the point `save`. The
points are the moments where a crash can lose work, in the order a loop reaches them:

| point        | where                                                             |
|--------------|-------------------------------------------------------------------|
| `start`      | state restored and compiled, before the first step                |
| `step`       | after an optimizer step, before its metrics are written            |
| `eval`       | after an evaluation, before its metrics are written                |
| `save`       | a periodic checkpoint write has started (async: still in flight)   |
| `final_save` | the final checkpoint write has started                             |

A signal sent from outside lands at a moment that depends on machine load; a point
named here is hit at the same place on any machine, so a test that draws kill points
at random is still deterministic. Unset (every normal run) a point costs one
dictionary lookup.
"""

import os
import signal

ENV = "NLHF_INJECT_FAULT"
POINTS = ("start", "step", "eval", "save", "final_save")
_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}

_hits: dict[str, int] = {}


def parse(spec: str) -> dict[str, tuple[int, int]]:
    """'KILL@save#3,TERM@eval#1' -> {'save': (SIGKILL, 3), 'eval': (SIGTERM, 1)}."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            sig, rest = part.split("@", 1)
            point, count = rest.split("#", 1)
            out[point] = (_SIGNALS[sig], int(count))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{ENV}={spec!r}: expected SIGNAL@POINT#N with SIGNAL in "
                             f"{sorted(_SIGNALS)}, e.g. KILL@save#3") from e
        if point not in POINTS:
            raise ValueError(f"{ENV}={spec!r}: unknown point {point!r}; expected one of {POINTS}")
    return out


_PLAN = parse(os.environ.get(ENV, ""))


def point(name: str) -> None:
    """Marks that the run reached `name`; sends the planned signal on its N-th hit."""
    if name not in _PLAN:
        return
    _hits[name] = _hits.get(name, 0) + 1
    sig, count = _PLAN[name]
    if _hits[name] == count:
        os.kill(os.getpid(), sig)
