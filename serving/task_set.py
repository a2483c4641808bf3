"""Declarative task sets: "these tasks, from these sources", and moving a registry to one.

A replicated deployment (Ray Serve) cannot change tasks one request at a time, since a request reaches one
replica. Instead every replica receives the whole wanted task set and converges to it. The order is chosen
so that no request fails: new and changed tasks are loaded first (a changed task is swapped in one step,
requests already queued finish on the old runners), and only when all of them loaded are removed tasks
unloaded. If a load fails, nothing is removed and the error names the task and the cause.

Independent of Ray on purpose: it works on a :class:`~aa_deploy.serving.registry.TaskRegistry`, so it is
tested with a real registry and no cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import TaskSpec
from .errors import ServingError, TaskLoadError

log = logging.getLogger("aa_deploy.serving")

USER_CONFIG_TASKS = "tasks"  # the key of user_config that holds the task set


def absolute_source(source: str) -> str:
    """A local folder as an absolute path (replicas run in another working directory); Hub ids unchanged."""
    expanded = os.path.expanduser(source)
    return os.path.abspath(expanded) if os.path.exists(expanded) else source


def spec_value(spec: TaskSpec) -> str:
    """The user_config form of a task source: ``DIR`` or ``org/repo[@revision]``."""
    return f"{spec.source}@{spec.revision}" if spec.revision else spec.source


def parse_task_set(user_config: Mapping[str, Any] | None) -> list[TaskSpec]:
    """``{"tasks": {"rte": "/exports/rte", "sst2": "org/repo@v1"}}`` -> task specs.

    A value may also be ``{"source": ..., "revision": ...}``. Raises ValueError saying what is expected.
    """
    if user_config is None:
        return []
    if not isinstance(user_config, Mapping):
        raise ValueError(
            f"user_config must be a mapping with a {USER_CONFIG_TASKS!r} key, got {type(user_config).__name__}"
        )
    unknown = sorted(set(user_config) - {USER_CONFIG_TASKS})
    if unknown:
        raise ValueError(
            f"unknown user_config keys {unknown}: only {USER_CONFIG_TASKS!r} (task name -> export) is read"
        )
    tasks = user_config.get(USER_CONFIG_TASKS) or {}
    if not isinstance(tasks, Mapping):
        raise ValueError(
            f"user_config.{USER_CONFIG_TASKS} must map task names to export folders or Hub ids, "
            f"e.g. {{rte: /exports/rte}}; got {type(tasks).__name__}"
        )
    specs = []
    for name, value in tasks.items():
        if isinstance(value, Mapping):
            specs.append(TaskSpec(name=str(name), source=str(value.get("source", "")), revision=value.get("revision")))
        elif isinstance(value, str):
            specs.append(TaskSpec.parse(f"{name}={value}"))
        else:
            raise ValueError(f"task {name!r}: expected an export folder or Hub id string, got {value!r}")
    return specs


@dataclass(frozen=True)
class TaskSetPlan:
    """What converging takes: tasks to load, to swap to a new source, and to unload."""

    add: tuple[TaskSpec, ...] = ()
    replace: tuple[TaskSpec, ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.replace or self.remove)


def plan_task_set(current: Mapping[str, TaskSpec], wanted: list[TaskSpec]) -> TaskSetPlan:
    wanted_names = {s.name for s in wanted}
    add = tuple(s for s in wanted if s.name not in current)
    replace = tuple(
        s
        for s in wanted
        if s.name in current and (current[s.name].source, current[s.name].revision) != (s.source, s.revision)
    )
    remove = tuple(sorted(n for n in current if n not in wanted_names))
    return TaskSetPlan(add, replace, remove)


@dataclass
class TaskSetApplier:
    """Keeps one registry at a wanted task set; remembers which spec each task was loaded from."""

    registry: Any  # TaskRegistry (kept untyped: no import cycle, and a fake is never needed)
    applied: dict[str, TaskSpec] = field(default_factory=dict)

    def converge(self, wanted: list[TaskSpec]) -> TaskSetPlan:
        """Load new, swap changed, then unload removed. Blocking (graph compilation): call it in a thread."""
        plan = plan_task_set(self.applied, wanted)
        wanted_names = {s.name for s in wanted}
        for name in [n for n in self.registry.failed if n not in wanted_names]:  # errors of a config now gone
            self.registry.failed.pop(name, None)
        failures: list[str] = []
        for spec, replace in [(s, False) for s in plan.add] + [(s, True) for s in plan.replace]:
            try:
                self.registry.load(spec.name, spec.source, spec.revision, replace=replace)
            except ServingError as exc:
                failures.append(exc.message)
                continue
            self.applied[spec.name] = spec
        if failures:
            # Keep every task that still serves: removing tasks now would leave a half-applied config.
            raise TaskLoadError("the new task set was not applied (no task was removed): " + "; ".join(failures))
        for name in plan.remove:
            self.registry.unload(name)
            self.applied.pop(name, None)
            self.registry.failed.pop(name, None)
        if not plan.empty:
            log.info(
                "task set converged: +%s ~%s -%s",
                [s.name for s in plan.add],
                [s.name for s in plan.replace],
                list(plan.remove),
            )
        return plan
