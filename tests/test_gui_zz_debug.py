import sys, threading, time, traceback
import pytest
from tests.test_gui_data import window, qapp_cls  # noqa
from tests.test_gui_data import test_window_stays_responsive_during_a_long_load_and_cancel_stops_it as inner

def test_debug(window, qtbot, tmp_path):
    samples = []
    stop = False
    main_id = threading.main_thread().ident
    def sampler():
        me = threading.get_ident()
        while not stop:
            t = time.perf_counter()
            out = []
            for tid, f in sys._current_frames().items():
                if tid == me: continue
                st = traceback.extract_stack(f)[-6:]
                out.append(("M" if tid == main_id else "T%d" % (tid % 1000), [f"{s.filename.split('/')[-1]}:{s.name}:{s.lineno}" for s in st]))
            samples.append((t, out))
            time.sleep(0.01)
    th = threading.Thread(target=sampler, daemon=True); th.start()
    import app.gui.testing as T
    orig = T.TickMonitor._tick
    gaps = []
    def tick(self):
        now = time.perf_counter()
        if self._last and now - self._last > 0.1: gaps.append((self._last, now))
        orig(self)
    T.TickMonitor._tick = tick
    try:
        inner(window, qtbot, tmp_path)
    except AssertionError as e:
        print("ASSERT", e)
    finally:
        stop = True
        T.TickMonitor._tick = orig
    for a, b in gaps:
        print("GAP", round((b - a) * 1000))
        for t, o in samples:
            if a - 0.01 <= t <= b:
                print(round((t - a) * 1000), o)
