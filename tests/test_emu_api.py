"""The host API's names and numbers are the SDK's: dpu_error_t values in include_host/dpu.h are
numbered as the SDK's dpu_error.h (DPU_ERR_DPU_FAULT 21, DPU_ERR_UNKNOWN_SYMBOL 27,
DPU_ERR_ASYNC_JOBS 1 << 31), updlrm.emu's names follow the same order, and the prototypes a
drop-in needs are declared (dpu_error_to_string returns a char * the caller frees)."""

from __future__ import annotations

import re
from pathlib import Path

from updlrm import emu

HOST = Path(__file__).resolve().parents[1] / "host" / "emu" / "include_host"


def test_error_numbering_matches_the_sdk_and_python():
    text = (HOST / "dpu.h").read_text()
    values = {m.group(1): m.group(2) for m in re.finditer(r"^\s+(DPU_(?:OK|ERR_\w+)) = ([^,]+),", text, re.M)}
    assert values["DPU_ERR_DPU_FAULT"] == "21" and values["DPU_ERR_UNKNOWN_SYMBOL"] == "27"
    assert values["DPU_ERR_ASYNC_JOBS"] == "(int)(1U << 31)"
    numbered = sorted((int(v), k) for k, v in values.items() if v.isdigit())
    assert [n for n, _ in numbered] == list(range(len(numbered)))  # dense, no gaps
    assert [k for _, k in numbered] == emu._DPU_ERROR_NAMES
    assert emu._DPU_ERR_DPU_FAULT == 21 and emu.error_name(21) == "DPU_ERR_DPU_FAULT"


def test_drop_in_prototypes_and_macros_are_declared():
    text = (HOST / "dpu.h").read_text()
    for needle in ["char *dpu_error_to_string(dpu_error_t status);", "#define DPU_RANK_FOREACH(",
                   "#define DPU_FOREACH(", "#define DPU_CHECK(statement, on_error)", "dpu_error_t dpu_get_symbol(",
                   "dpu_error_t dpu_push_sg_xfer(", "dpu_error_t dpu_copy_from_mram(", "dpu_error_t dpu_callback(",
                   "DPU_CALLBACK_ASYNC = 1 << 0", "dpu_error_t dpu_log_read(struct dpu_set_t dpu_set, FILE *stream);",
                   "struct dpu_t *dpu;", "struct dpu_rank_t **ranks;"]:
        assert needle in text, needle
    assert "dpulog_read_for_dpu" in (HOST / "dpu_log.h").read_text()
    assert "dpu_probe_get" in (HOST / "dpu_probe.h").read_text()
