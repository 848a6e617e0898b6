"""Event and approval ids: unique whoever draws them (threads, a forked child), time-ordered, well-formed."""

from __future__ import annotations

import os
import re
import threading

from gateway import ids

_ID = re.compile(r"^evt_[0-9A-HJKMNP-TV-Z]{26}$")


def test_ids_are_well_formed_and_sort_by_time() -> None:
    drawn = [ids.new_event_id() for _ in range(1000)]
    assert all(_ID.match(i) for i in drawn)
    assert len(set(drawn)) == len(drawn)
    # The first 9 characters are 45 of the 48 bits of the millisecond clock: never decreasing.
    assert [i[4:13] for i in drawn] == sorted(i[4:13] for i in drawn)


def test_threads_drawing_at_once_never_share_random_bits() -> None:
    out: list[list[str]] = [[] for _ in range(8)]

    def draw(n: int) -> None:
        out[n] = [ids.new_event_id()[14:] for _ in range(5000)]  # the random part only

    threads = [threading.Thread(target=draw, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [r for part in out for r in part]
    assert len(set(every)) == len(every) == 40_000


def test_a_forked_child_does_not_repeat_the_parents_random_bits() -> None:
    ids.new_event_id()  # the parent holds a partly used chunk when it forks
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, "\n".join(ids.new_event_id()[14:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        childs = set(pipe.read().split("\n"))
    os.waitpid(child, 0)
    parents = {ids.new_event_id()[14:] for _ in range(50)}
    assert len(childs) == 50 and not childs & parents
