"""aa-deploy serving: one backbone in memory, many adapter tasks, dynamic mixed-task batching.

Runtime only: ONNX Runtime, ``tokenizers``, FastAPI. Nothing here imports torch or transformers.
Entry points: :func:`serving.app.create_app`, :class:`serving.config.ServerConfig`,
:class:`serving.registry.TaskRegistry`, ``aa-deploy serve`` (:mod:`serving.cli`).
"""

__version__ = "0.1.0"
