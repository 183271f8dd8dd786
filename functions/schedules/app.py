"""The schedule routes (the service role): cron-scheduled workflows, each a pg_cron job."""

from __future__ import annotations

from shared import api, auth, schedules
from shared.log import logger


def list_schedules(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, schedules.list_schedules(caller, request.query))


def put_schedule(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    saved = schedules.put(caller, request.path_param("scheduleId"), request.json_object())
    logger.info("schedule saved", extra={"schedule_id": saved["schedule_id"],
                                         "cron_job": saved["cron_job"], "by": caller.actor})
    return api.Reply(200, saved)


def delete_schedule(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    deleted = schedules.delete(caller, request.path_param("scheduleId"))
    logger.info("schedule deleted", extra={**deleted, "by": caller.actor})
    return api.Reply(200, deleted)


handler = api.handler_for_routes({
    "GET /schedules": list_schedules,
    "PUT /schedules/{scheduleId}": put_schedule,
    "DELETE /schedules/{scheduleId}": delete_schedule,
})
