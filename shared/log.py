"""The one logger: JSON lines (Powertools), the same on Lambda and in the local stack.

Every line about a job carries `job_id` (and `step_id`, `attempt` about a step); the
HTTP layer adds `request_id` and `function_name` per invocation (per thread).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

logger = Logger()
