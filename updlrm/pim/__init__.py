"""updlrm.pim: the PIM embedding backend - tables in (emulated) UPMEM DPU MRAM, lookups and sum
pooling on the DPUs, requests packed and partial sums merged natively on the host.

* :class:`PimEmbedding` - the engine's interface (plan + weights -> pooled [B, T, D], last_stats).
* :class:`PIMEmbeddingBag` - a torch module, one EmbeddingBag(mode="sum") per table on DPUs.
* :func:`fixed_point_scales` - the int32 scale per table (see :mod:`updlrm.pim.embedding`).
"""

from .embedding import PimEmbedding
from .quant import Quantization
from .layout import fixed_point_scales
from .module import PIMEmbeddingBag

__all__ = ["PimEmbedding", "PIMEmbeddingBag", "Quantization", "fixed_point_scales"]
