import os, sys, time
import pytest
from tests.test_gui_data import window, qapp_cls  # noqa
from tests.test_gui_data import test_window_stays_responsive_during_a_long_load_and_cancel_stops_it as inner

@pytest.mark.parametrize("rep", range(4))
def test_debug(window, qtbot, tmp_path, rep):
    if os.environ.get("SI"):
        sys.setswitchinterval(float(os.environ["SI"]))
    import app.gui.testing as T
    mons = []
    orig_start = T.TickMonitor.start
    def start(self):
        mons.append(self); return orig_start(self)
    T.TickMonitor.start = start
    try:
        inner(window, qtbot, tmp_path)
        ok = True
    except AssertionError as e:
        ok = False
    finally:
        T.TickMonitor.start = orig_start
    g = sorted(mons[0].gaps)
    print(f"\nRESULT ok={ok} max={1000*g[-1]:.0f} p99={1000*g[int(.99*len(g))]:.0f} n>50={sum(x>.05 for x in g)}")
