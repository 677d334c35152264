"""updlrm: DLRM inference with the embedding layer on UPMEM processing-in-memory DPUs."""

__version__ = "0.1.0"
