"""The pure-Python parts that must not import the native module (partition/, the timing model)
carry their own copies of a few ABI numbers; this checks each copy against the native module,
which takes them from dpu_kernels/include/updlrm_abi.h."""

from updlrm import partition, timing_model
from updlrm.partition import Topology
from updlrm.pim.native import abi, native_module


def test_partition_constants_match_the_abi_header():
    a = abi()
    module = native_module("emulator")
    assert partition.MAX_SHARDS_PER_DPU == a.max_shards
    assert partition.ELEM_BYTES == int(module.ELEM_BYTES)
    assert partition.MRAM_ALIGN == int(module.MRAM_ALIGN)
    topo = Topology(1)
    assert topo.mram_bytes == a.mram_bytes
    # The kernel's static MRAM (the shard descriptor table) sits below the heap.
    assert topo.mram_static_bytes == a.max_shards * a.shard_bytes


def test_timing_model_transfer_sizes_match_the_abi_header():
    a = abi()
    assert timing_model.LAUNCH_ARGS_BYTES == a.launch_args_bytes
    assert timing_model.STATUS_BYTES == a.status_bytes
