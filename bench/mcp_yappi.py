"""Runs a Python module under yappi's CPU clock (for ``bench.mcp_profile``): ``python -m bench.mcp_yappi OUT -m MOD``.

SIGUSR1 clears what was collected so far (the profile then covers only what follows, e.g. the measured calls);
at exit one line per function is written to OUT: ``file<TAB>function<TAB>calls<TAB>own CPU s<TAB>total CPU s``.
"""

from __future__ import annotations

import atexit
import runpy
import signal
import sys
from types import FrameType

import yappi


def _dump(out: str) -> None:
    yappi.stop()
    with open(out, "w") as f:
        for stat in yappi.get_func_stats():
            f.write(f"{stat.module}\t{stat.name}\t{stat.ncall}\t{stat.tsub:.9f}\t{stat.ttot:.9f}\n")


def _clear(signum: int, frame: FrameType | None) -> None:
    yappi.clear_stats()


def main() -> None:
    out, flag, module, *rest = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: python -m bench.mcp_yappi OUT -m MODULE [ARGS...]")
    sys.argv = [module, *rest]
    signal.signal(signal.SIGUSR1, _clear)
    yappi.set_clock_type("cpu")
    yappi.start(builtins=True)
    atexit.register(_dump, out)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
