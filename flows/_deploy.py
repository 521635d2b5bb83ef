"""Scheduled runs: Prefect deployments of the `distill` and `label` flows on a process work pool,
each with a cron schedule and a config file as its parameter.

The deployed flows read the config when they run (so an edited file is picked up, and a file
that has gone fails the run with one line), from the folder `stillroom deploy` was run in.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

from prefect import flow

from ._config import load_config
from ._errors import SetupError

POOL = "stillroom"
"""The process work pool deployments go to unless told otherwise (`prefect worker start --pool
stillroom`)."""

FlowName = Literal["distill", "label"]


@flow(name="distill")
def scheduled_distill(config: str, overrides: list[str] | None = None) -> str:
    """A scheduled run of the whole loop from a config file; returns report.json's path."""
    from ._flow import distill_config

    return str(distill_config(load_config(config, overrides or []), None))


@flow(name="label")
def scheduled_label(config: str, overrides: list[str] | None = None) -> str:
    """A scheduled labeling run from a config file; returns the version (NAME@vN) it ended on."""
    from ._flow import label_config

    ref, _ = label_config(load_config(config, overrides or []))
    return str(ref)


_FLOWS = {"distill": scheduled_distill, "label": scheduled_label}


def check_cron(cron: str, timezone: str | None = None) -> None:
    """An invalid cron string (or time zone) fails here, with one line."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise SetupError(f"--cron {cron!r}: {reason}") from None


def deploy(
    config_path: Path,
    cron: str,
    *,
    name: str | None = None,
    which: FlowName = "distill",
    overrides: list[str] | None = None,
    pool: str = POOL,
    timezone: str | None = None,
) -> dict[str, Any]:
    """Create or update the deployment `FLOW/NAME` (NAME defaults to the config's name) with a
    cron schedule; the config is read now to fail early, and again at every run."""
    check_cron(cron, timezone)
    config = load_config(config_path, overrides or [])
    check_overrides(overrides or [])
    name = name or config.name
    _ensure_pool(pool)
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    folder = Path.cwd().resolve()
    deployment = RunnerDeployment.from_flow(
        _FLOWS[which],
        name=name,
        schedule=Cron(cron, timezone=timezone),
        parameters={"config": str(config_path.resolve()), "overrides": list(overrides or [])},
        work_pool_name=pool,
        # the worker's flow-run process imports stillroom and runs where `deploy` ran, so the
        # config's relative paths (data, store) mean what they meant here
        entrypoint_type=EntrypointType.MODULE_PATH,
        # stillroom's own log lines (the webhook's, warnings) reach the run's logs in the UI
        job_variables={
            "working_dir": str(folder),
            "env": {"PREFECT_LOGGING_EXTRA_LOGGERS": "stillroom"},
        },
        # one run of a config at a time: a late run waits for the one before it (two at once
        # would label the same new records twice)
        concurrency_limit=1,
        tags=["stillroom", config.name],
        description=f"stillroom {which} of {config_path} ({cron})",
    )
    deployment_id = deployment.apply()
    return {
        "name": f"{which}/{name}",
        "id": str(deployment_id),
        "cron": cron,
        "pool": pool,
        "config": str(config_path.resolve()),
        "working_dir": str(folder),
    }


def check_overrides(overrides: list[str]) -> None:
    """A deployment's parameters are shown in the Prefect UI: no secret goes in a --set."""
    from ._labeling import secret_key

    for assignment in overrides:
        key = assignment.partition("=")[0]
        # a *_env key names an environment variable: that name is no secret
        if secret_key(key) and not any(part.endswith("_env") for part in key.split(".")):
            raise SetupError(
                f"--set {key}: a deployment's parameters are shown in the Prefect UI; put the "
                "secret in the worker's environment and name the variable (api_key_env, "
                "header_env, drift.webhook.url_env)"
            )


def _ensure_pool(pool: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):  # made meanwhile by another deploy
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def list_deployments() -> list[dict[str, Any]]:
    """Every stillroom deployment: name, schedule, pool, config, and its next scheduled run."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["stillroom"]))
        )
        flows = {f.id: f.name for f in client.read_flows()}
        rows = []
        for d in sorted(found, key=lambda d: (flows.get(d.flow_id, ""), d.name)):
            crons = [getattr(s.schedule, "cron", None) for s in d.schedules]
            rows.append(
                {
                    "name": f"{flows.get(d.flow_id, '?')}/{d.name}",
                    "cron": ", ".join(c for c in crons if c) or None,
                    "active": not d.paused,
                    "pool": d.work_pool_name,
                    "config": (d.parameters or {}).get("config"),
                }
            )
    return rows


def delete_deployment(name: str) -> str:
    """Delete `FLOW/NAME` (or NAME, when one stillroom deployment has it)."""
    from prefect import get_client

    full = name if "/" in name else _full_name(name)
    with get_client(sync_client=True) as client:
        from prefect.exceptions import ObjectNotFound

        try:
            found = client.read_deployment_by_name(full)
        except ObjectNotFound:
            raise SetupError(f"no deployment named {name!r} (stillroom deploy --list)") from None
        client.delete_deployment(found.id)
    return full


def _full_name(name: str) -> str:
    matches = [d["name"] for d in list_deployments() if d["name"].split("/", 1)[1] == name]
    if not matches:
        raise SetupError(f"no deployment named {name!r} (stillroom deploy --list)")
    if len(matches) > 1:
        raise SetupError(f"{name!r} names {' and '.join(matches)}: say which")
    return str(matches[0])
