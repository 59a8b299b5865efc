"""Process checks shared by tests that start real processes."""

import os


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited process not yet reaped (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"
