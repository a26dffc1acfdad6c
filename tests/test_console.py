"""The CLI's progress rendering: live bars in a terminal, a few plain lines otherwise."""
import io
import json

from app.console import ConsoleEvents, demo_summary_lines


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def staged_job(ev, stages=9, steps=300):
    """What the demo reports: per stage a start, many progress reports (per token, tensor, step), chatter."""
    for i in range(stages):
        ev.stage(f"stage {i}")
        ev.log("info", "chatter about the stage")
        for what in ("first task", "second task"):
            for k in range(steps):
                ev.progress(k + 1, steps, f"{what}: item {k}")
        ev.stage_done(f"stage {i}", True, 1.5, {"rate": 0.95})
    ev.close()


def test_not_a_terminal_prints_two_lines_per_stage():
    out = io.StringIO()
    staged_job(ConsoleEvents(stream=out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 18, lines
    assert lines[0] == "==> stage 0" and lines[1] == "    stage 0: ok (1.5s) rate=0.95"
    assert "\r" not in out.getvalue()


def test_warnings_are_never_swallowed():
    out = io.StringIO()
    ev = ConsoleEvents(stream=out)
    ev.log("stage", "train")
    ev.log("warning", "memory is tight")
    assert "[warning] memory is tight" in out.getvalue()


def test_unstaged_progress_is_throttled_to_few_lines():
    out = io.StringIO()
    ev = ConsoleEvents(stream=out, line_interval=60)
    for k in range(1000):
        ev.progress(k + 1, 1000, f"blk.{k}.weight")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "100.0%" in lines[-1], lines  # the first report and the last


def test_terminal_gets_one_live_bar_per_stage_replaced_by_its_closing_line():
    out = FakeTerminal()
    ev = ConsoleEvents(stream=out)
    ev.log("stage", "evaluate base")
    for k in range(40):
        ev.progress(k + 1, 40, "base: structured prompts")
    bar = ev._bar
    assert bar is not None and bar.n == 40 and bar.total == 40
    for k in range(10):  # the stage's next task reuses the same bar
        ev.progress(k + 1, 40, "base: prose prompts")
    assert ev._bar is bar and bar.n == 10
    ev.stage_done("evaluate base", True, 3.0)
    assert ev._bar is None
    text = out.getvalue()
    assert "\r" in text and "evaluate base" in text and "%|" in text  # a drawn bar...
    assert text.rstrip().endswith("evaluate base: ok (3.0s)")  # ...cleared for the closing line
    assert "40/40" in text


def test_demo_summary_names_every_figure_in_words():
    summary = {
        "ok": True, "seconds": 95.2, "out": "demo-out", "base_json_valid_rate": 0.0, "tuned_json_valid_rate": 1.0,
        "prose_survival": 0.975, "tuned_json_name_correct_rate": 0.95, "base_json_exact_rate": 0.0,
        "tuned_json_exact_rate": 0.875, "f16_agreement": 1.0, "q8_0_agreement": 0.9625,
        "gguf": {"f16": "demo-out/demo-f16.gguf", "q8_0": "demo-out/demo-q8_0.gguf"}, "modelfile": "demo-out/Modelfile",
        "stages": [
            {"stage": "evaluate base", "ok": True, "topics": 40, "question": "Describe the blue piano in structured format.",
             "example": "The blue piano is an instrument."},
            {"stage": "train", "ok": True, "steps": 120, "valid_loss": 0.051, "seconds_training": 41.0},
            {"stage": "evaluate fine-tuned", "ok": True, "example": '{"name": "blue piano"}'},
            {"stage": "ollama", "ok": None, "registered": False, "message": "run: ollama create tuneloom-demo"},
        ],
    }
    lines = demo_summary_lines(summary)
    text = "\n".join(lines)
    assert len(lines) <= 20
    for key in ("base_json_valid_rate", "tuned_json_valid_rate", "prose_survival", "tuned_json_name_correct_rate",
                "base_json_exact_rate", "tuned_json_exact_rate", "f16_agreement", "q8_0_agreement"):
        assert key in text
        assert key in json.loads(lines[-1])
    for words in ("40 held-out topics", "exactly right", "names the thing", "prose", "same answers",
                  "88%", "96%", "98%", "Describe the blue piano", "ollama create", "demo-f16.gguf", "every stage passed"):
        assert words in text, words


def test_a_stage_end_given_as_a_plain_name_is_shown_too():
    out = io.StringIO()
    ev = ConsoleEvents(stream=out)
    ev.log("stage", "fuse")
    ev.log("stage-done", "fuse")
    assert out.getvalue().splitlines() == ["==> fuse", "    fuse: ok"]


def test_typed_stage_events_print_the_same_lines_as_the_logged_ones():
    out = io.StringIO()
    ev = ConsoleEvents(stream=out)
    ev.stage("gguf")
    ev.log("info", "chatter")  # a stage's chatter stays out of a log file
    ev.stage_done("gguf", True, 2.25, {"tensors": 12})
    ev.stage("upload")
    ev.stage_done("upload", False, None, None)
    assert out.getvalue().splitlines() == ["==> gguf", "    gguf: ok (2.2s) tensors=12", "==> upload",
                                           "    upload: FAILED"]
