"""``fold_constants``: evaluate constant subgraphs in one ONNX Runtime session and store them as initializers.

Public contract: the pass, its options, and the constant-node helpers ``simplify`` shares.
"""

from converter.passes.fold_constants._constants import (
    QDQ_OPS,
    constant_node_tensor,
    constant_nodes_to_initializers,
    delete_at,
    is_default_domain,
)
from converter.passes.fold_constants._pass import (
    FoldConstantsOptions,
    FoldConstantsPass,
)

__all__ = ["QDQ_OPS", "FoldConstantsOptions", "FoldConstantsPass", "constant_node_tensor", "constant_nodes_to_initializers", "delete_at", "is_default_domain"]
