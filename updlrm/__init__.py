"""updlrm: DLRM inference with the embedding layer on UPMEM processing-in-memory DPUs."""

__version__ = "0.1.0"

# Public API of the model and engine, imported lazily so `import updlrm` stays light.
_LAZY = {
    "DLRM": ("updlrm.model", "DLRM"),
    "DLRMConfig": ("updlrm.configs", "DLRMConfig"),
    "Engine": ("updlrm.engine", "Engine"),
    "Batch": ("updlrm.batch", "Batch"),
    "configs": ("updlrm.configs", None),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'updlrm' has no attribute {name!r}")
