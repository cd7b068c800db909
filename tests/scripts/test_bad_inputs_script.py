"""scripts/bad_inputs.py: two cases through its own functions, against a real finished run (tiny, shapes, 1 epoch)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "bad_inputs.py"
_spec = importlib.util.spec_from_file_location("bad_inputs", _PATH)
bad_inputs = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bad_inputs  # dataclasses look their module up while the file executes
_spec.loader.exec_module(bad_inputs)

#: smaller than the script's own finished run: this only has to publish a deploy/ folder
QUICK = ("baseline.epochs=1", "finetune.epochs=1", "finetune.extra_epochs=0",
         "dataset.train_size=40", "dataset.val_size=20",
         "dataset.test_size=20", "quantize.calib_size=8", "quantize.max_drop=1.0", "benchmark.samples=2",
         "benchmark.warmup=0", "benchmark.max_drop=1.0", "export.mobile=false")


def test_two_cases_give_their_rows_and_the_table(tmp_path):
    from bad_input_cases import by_name

    finished = tmp_path / "finished"
    deploy = bad_inputs.make_finished_run(finished, QUICK)
    before = bad_inputs.tree_digest(deploy)
    cases = by_name(["export.opset=11 (QDQ needs 13)", "--set finetune.lr=1e-3 (YAML 1.1 float)"])
    rows = bad_inputs.run_cases(cases, finished, tmp_path / "cases")
    refused, accepted = rows
    assert refused.rc == 2 and refused.message.startswith("error: config key 'export.opset'") and refused.intact
    assert "opset >= 13" in refused.message and refused.ok
    assert accepted.rc == 0 and accepted.ok
    assert bad_inputs.tree_digest(deploy) == before  # the cases ran on copies
    page = bad_inputs.render(rows)
    assert "| export.opset=11 (QDQ needs 13) | issue | refused | 2 | error: config key" in page
    assert "exit 0: 1, exit 2: 1" in page and "2 of 2" in page


def test_first_line_picks_the_error_a_traceback_or_a_warning():
    assert bad_inputs.first_line(2, "[INFO] x\nerror: bad thing; fix it\n") == "error: bad thing; fix it"
    tb = "Traceback (most recent call last):\n  File x\nValueError: boom\n"
    assert bad_inputs.first_line(1, tb) == "Traceback: ValueError: boom"
    assert bad_inputs.first_line(0, "[INFO] a\n[WARNING] skipped notes.txt\n") == "[WARNING] skipped notes.txt"
    assert bad_inputs.first_line(2, "usage: prog\nprog: error: argument --x: bad\n") == "prog: error: argument --x: bad"
