"""Progress lines: at most one per interval, an ETA from the work done, silence for short phases."""

from grpo.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_come_at_most_every_interval_with_an_eta():
    clock, lines = Clock(), []
    progress = Progress("pretrain: demonstrations", 100, every_s=10.0, report=lines.append, clock=clock)
    for step in range(1, 101):
        clock.now = step * 0.5  # 0.5 s a step: 50 s in all
        progress.update(step)
    # after 10 s (20 steps: 40 s left), 20 s, 30 s, 40 s, then the closing line at 50 s
    assert lines[0] == "pretrain: demonstrations 20% (20/100 steps), 10s, ETA 40s"
    assert len(lines) == 5 and lines[-1] == "pretrain: demonstrations 100% (100/100 steps), 50s"


def test_a_short_phase_prints_nothing():
    clock, lines = Clock(), []
    progress = Progress("evaluation", 10, report=lines.append, clock=clock)
    for step in range(1, 11):
        clock.now = step * 0.1
        progress.update(step)
    assert lines == []


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]
