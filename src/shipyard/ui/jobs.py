"""Console pages: batch jobs and their progress.

Resuming is not done by the server: a batch job runs in the process that starts it
(`shipyard batch resume ID`), on a machine that reaches its input and output, with the
CPU and memory it needs. Running one inside the server would compete with serving, and
two clicks would start two runners on one job (the runner's guard admits its own
process). So the Resume button checks the job and says what to run.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from shipyard.batch.jobs import JobStore
from shipyard.errors import ShipyardError
from shipyard.security.gate import require_scope
from shipyard.ui.common import plane, render

router = APIRouter()
RESUMABLE = ("failed", "interrupted", "stale")
LIMIT = 100


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    jobs = JobStore(plane(request).registry.sessions).list(limit=LIMIT)
    return render(request, "jobs.html", jobs=jobs, resumable=RESUMABLE, limit=LIMIT)


@router.post("/jobs/{job_id}/resume", response_class=HTMLResponse)
def resume_job(request: Request, job_id: str) -> HTMLResponse:
    message, failed, command = "", False, ""
    try:
        job = JobStore(plane(request).registry.sessions).get(job_id)
        require_scope(job.model, action="deploy")
        state = job.shown_state
        if state not in RESUMABLE:
            message, failed = f"{job.id} is {state}: there is nothing to resume.", True
        else:
            message = (f"The server does not run batch jobs: resume {job.id} on a machine "
                       "that reaches its input and output (finished parts are kept):")  # fmt: skip
            command = f"shipyard batch resume {job.id}"
    except ShipyardError as exc:
        message, failed = exc.message, True
    return render(request, "jobs_result.html", job_id=job_id, message=message,
                  failed=failed, command=command)  # fmt: skip
