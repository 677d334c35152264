"""Workloads for updlrm: Criteo click-log readers, embedding-lookup traces (Meta dlrm_datasets
layout), seeded synthetic traces with realistic skew, and trace statistics.

Main entry points::

    from updlrm.data import CriteoReader, Trace, load_trace, save_trace, synthetic_trace, TableWorkload
    reader = CriteoReader("train.txt", "torchrec", table_rows=rows)   # streaming, gzip ok
    trace = load_trace("fbgemm_t856_bs65536_0.pt.gz", tables=[0, 5])  # (indices, offsets, lengths)
    trace = synthetic_trace(TableWorkload(rows=1_000_000, alpha=1.1), samples=65536, nr_tables=8)
    for part in trace.batches(2048): engine.predict(part.to_batch())

See each module's docstring for the layouts and conventions.
"""

from updlrm.data.criteo import (
    CriteoBatch,
    CriteoChunk,
    CriteoReader,
    CriteoVocabulary,
    MalformedLine,
    build_vocabulary,
)
from updlrm.data.stats import access_counts, format_stats, hot_coverage, plot_access_cdf, table_stats, trace_stats
from updlrm.data.synthetic import CoAccess, Drift, TableWorkload, fit_zipf_alpha, pooling_profile, synthetic_trace
from updlrm.data.trace import Trace, load_trace, save_trace

__all__ = [
    "CriteoBatch",
    "CriteoChunk",
    "CriteoReader",
    "CriteoVocabulary",
    "MalformedLine",
    "build_vocabulary",
    "Trace",
    "load_trace",
    "save_trace",
    "TableWorkload",
    "CoAccess",
    "Drift",
    "synthetic_trace",
    "fit_zipf_alpha",
    "pooling_profile",
    "access_counts",
    "hot_coverage",
    "table_stats",
    "trace_stats",
    "format_stats",
    "plot_access_cdf",
]
