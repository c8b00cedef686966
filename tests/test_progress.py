"""The one progress-bar policy: a bar after 2 s by default, at once with True, never with False."""
import io
import time

import pytest

from interp.progress import DELAY_S, progress_bar


def _run(items, enabled, monkeypatch, env=None, sleep=0.0):
    if env is None:
        monkeypatch.delenv("INTERP_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("INTERP_PROGRESS", env)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    out = []
    for x in progress_bar(items, "work", enabled):
        time.sleep(sleep)
        out.append(x)
    return out, err.getvalue()


def test_a_fast_loop_prints_nothing_by_default(monkeypatch):
    out, err = _run(range(5), None, monkeypatch)
    assert out == [0, 1, 2, 3, 4] and err == ""


def test_a_loop_that_runs_past_the_delay_shows_its_bar(monkeypatch):
    out, err = _run(range(3), None, monkeypatch, sleep=DELAY_S / 2 + 0.1)
    assert out == [0, 1, 2] and "work" in err


@pytest.mark.parametrize("enabled, env, shown", [(True, None, True), (False, None, False), (None, "0", False),
                                                 (None, "1", True), (False, "1", False)])
def test_the_argument_wins_over_the_environment_and_the_environment_over_the_delay(monkeypatch, enabled, env, shown):
    out, err = _run(range(2), enabled, monkeypatch, env=env)
    assert out == [0, 1] and ("work" in err) is shown
