"""IFRU: influence-function unlearning for MF and LightGCN (Zhang et al., ACM TORS 2024).

Spark prepares the data and finds the influenced subgraph; the driver trains
and updates the model in PyTorch.  Modules:

* :mod:`~spark_unlearn.ifru.data` - binarise, k-core, split, dense ids (Spark) -> tensors
* :mod:`~spark_unlearn.ifru.models` - MF / LightGCN as pure functions of the embeddings
* :mod:`~spark_unlearn.ifru.train` - Adam on the BCE (or fixed-triple BPR) + L2 objective
* :mod:`~spark_unlearn.ifru.influence` - exact HVPs (torch.func), CG, the update
* :mod:`~spark_unlearn.ifru.pruning` - importance scores, kept nodes, k-hop subgraph (Spark + torch references)
* :mod:`~spark_unlearn.ifru.problem` - subgraph -> reduced problem on the driver
* :mod:`~spark_unlearn.ifru.unlearn` - orchestration: ``train_model``, ``compute_unlearning``, ``apply_unlearning``
* :mod:`~spark_unlearn.ifru.persist` - safe save / load (``weights_only=True``)

See docs/IFRU.md.  torch is imported by these modules, so it is only needed
when IFRU is used.
"""
