"""Every training run is a folder; history, comparison and resume come from disk.

Layout of ``runs/<timestamp>-<name>/`` (read by :class:`RunFolder`, the one reader)::

    config.json            everything needed to reproduce the run (TrainConfig)
    metrics.jsonl          one JSON object per report, appended as it goes
    adapters.safetensors   latest adapter weights, mlx-lm layout (the final one when the run is done)
    adapters_best.safetensors  the adapter at the lowest validation loss so far (``best_step`` in
                           config.json and status.json); Try, Evaluate and Export use it by default
    adapter_config.json    what mlx_lm.load(..., adapter_path=run_dir) reads
    checkpoints/step-N/    adapters + optimizer state + step + RNG state
    status.json            running / done / cancelled / failed, with a summary (and the pid while running)
    run.json               what people gave the run: its title
    exports/               GGUF files and Modelfiles made from this run (and a JSON record per export)
    report.json, report.md the run's report card (core.report)
    evaluation.json, drift.json  the last evaluation and forgetting check (the report card shows them)

Runs written outside ``runs/`` (``tuneloom train --out DIR``) are remembered in
``runs/elsewhere.txt`` so the history shows them too.

The parts, one module each: ``files`` (the file names, the JSON parts, the status), ``lock`` (one
writer per run folder), ``metrics`` (metrics.jsonl and the loss summary), ``folder``
(:class:`RunFolder`, the one reader) and ``history`` (:class:`RunInfo`, the runs the history lists).
Every name callers used from the old single module is re-exported here, private helpers included. A
test that patches a name patches it where it is looked up, in its part (``core.runs.files.write_json``),
not here.
"""
from core.runs.files import (ADAPTER_CONFIG, adapter_file, BEST_ADAPTERS, CONFIG, DRIFT, EVALUATION, EXPORTS,
                             FINAL_ADAPTERS, _json_object, latest_checkpoint, make_status_reserve, META, METRICS,
                             new_run_dir, read_json, REPORT_JSON, REPORT_MD, RESERVE_BYTES, RUN_FILES, set_status,
                             STATUS, finished_before_failure, checkpoint_kept, _status_into_reserve, STATUS_RESERVE, update_json)
from core.runs.lock import (claim_run, LOCK_ATTEMPTS, lock_holder, LOCK_NAME, _lock_path, run_contents,
                            run_locked_by_other, RunFinished, RunFolderTaken, RunLock)
from core.runs.metrics import (learning_problems, loss_summary, LossSummary, _number, read_metrics, series,
                               smoothed, summary_window)
from core.runs.folder import adapter_choices, AdapterChoice, _best_step, ExportInfo, RunFolder
from core.runs.history import (_config_problems, ELSEWHERE, _elsewhere, list_runs, _pid_alive, _read_part, remember,
                               run_dirs, RunInfo, set_title, _status_problems)

# every name, the private helpers too: callers of the old single module read some of them
__all__ = ["ADAPTER_CONFIG", "adapter_file", "BEST_ADAPTERS", "CONFIG", "DRIFT", "EVALUATION", "EXPORTS",
           "FINAL_ADAPTERS", "_json_object", "latest_checkpoint", "make_status_reserve", "META", "METRICS",
           "new_run_dir", "read_json", "REPORT_JSON", "REPORT_MD", "RESERVE_BYTES", "RUN_FILES", "set_status",
           "STATUS", "finished_before_failure", "checkpoint_kept", "_status_into_reserve", "STATUS_RESERVE", "update_json", "claim_run", "LOCK_ATTEMPTS",
           "lock_holder", "LOCK_NAME", "_lock_path", "run_contents", "run_locked_by_other", "RunFinished",
           "RunFolderTaken", "RunLock", "learning_problems", "loss_summary", "LossSummary", "_number",
           "read_metrics", "series", "smoothed", "summary_window", "adapter_choices", "AdapterChoice", "_best_step",
           "ExportInfo", "RunFolder", "_config_problems", "ELSEWHERE", "_elsewhere", "list_runs", "_pid_alive",
           "_read_part", "remember", "run_dirs", "RunInfo", "set_title", "_status_problems"]
