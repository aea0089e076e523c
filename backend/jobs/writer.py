"""Where a job writes predictions: :class:`PredictionWriter` collects each task's prediction and writes them to
Label Studio in batches, each task at most once per model version (:mod:`backend.jobs.locks`), recording
each written task's outcome on the job's board.

Our earlier predictions that a task's new one replaces (``overwrite``) are deleted after it is written and
before its outcome is recorded: a task that fails keeps its earlier prediction, and a retry after a crash in
between finds the new one and deletes the earlier ones. A batch refused as too large (HTTP 413: Label Studio
behind a proxy with a body limit, such as nginx's default 1 MB) is written in halves, and the writer's later
batches are no larger than the halves."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..errors import UpstreamTooLargeError
from ..labelstudio.client import LabelStudioClient
from ..labelstudio.results import region_size
from .board import JobBoard
from .locks import HeldLocks, TaskLocks

logger = logging.getLogger(__name__)


class PredictionWriter:
    """Collects predictions and writes them in batches, each task at most once per model version."""

    #: A batch is also cut when its RLE values (or polygon coordinates) pass this count (~4 bytes each in JSON).
    MAX_BATCH_VALUES = 4_000_000

    def __init__(
        self,
        board: JobBoard,
        ls: LabelStudioClient,
        job_id: str,
        project: int,
        version: str,
        batch: int,
        worker: str,
    ) -> None:
        self._board, self._ls, self._worker = board, ls, worker
        self._locks = TaskLocks(board.connection)
        self._job_id, self._project, self._version, self._batch = job_id, project, version, batch
        self._pending: list[tuple[int, dict]] = []
        self._rejected: dict[int, list[dict]] = {}
        self._replaces: dict[int, set[int]] = {}
        self._values = 0

    def add(
        self,
        task_id: int,
        task_prediction: dict,
        rejected: list[dict] | None = None,
        replaces: Sequence[int] = (),
    ) -> None:
        """Queue one task's prediction (with the prompts ``rejected`` on the way, for its outcome, and the ids
        of our earlier predictions it ``replaces``); a full batch is written now."""
        self._pending.append((task_id, task_prediction))
        if rejected:
            self._rejected[task_id] = rejected
        if replaces:
            self._replaces[task_id] = set(replaces)
        self._values += sum(region_size(r) for r in task_prediction["result"])
        if len(self._pending) >= self._batch or self._values >= self.MAX_BATCH_VALUES:
            self.flush()

    def flush(self) -> None:
        """Write the queued predictions and record their tasks ``done`` (unless the job was cancelled)."""
        pending, self._pending, self._values = self._pending, [], 0
        if not pending:
            return
        if self._board.is_cancelled(self._job_id):
            self._drop(pending)
            return
        with self._locks.hold(self._version, [t for t, _ in pending]) as locks:
            to_write = []
            for task_id, task_prediction in pending:
                locks.renew()
                existing = self._new_predictions(task_id)
                if existing:  # written by an earlier attempt that died before its bookkeeping
                    self._done(task_id, existing[0][1], note="already held a prediction of this version")
                else:
                    to_write.append((task_id, task_prediction))
            if to_write and self._board.is_cancelled(self._job_id):
                self._drop(to_write)
                return
            if to_write:
                self._write(to_write, locks)

    def _write(self, predictions: list[tuple[int, dict]], locks: HeldLocks) -> None:
        """Write ``predictions`` in one call and record their outcomes. Refused as too large (413, so nothing
        was written): a batch is written in two halves, and later batches hold at most half its count (rounded
        up); a single prediction fails its task."""
        locks.renew()
        try:
            created = self._ls.import_predictions(self._project, predictions)
        except UpstreamTooLargeError as exc:
            if len(predictions) == 1:
                task_id, task_prediction = predictions[0]
                regions = len(task_prediction["result"])
                reason = (
                    f"{exc.message}: its {regions} region(s) are more than Label Studio accepts in one "
                    "request; raise the limit (nginx: client_max_body_size) or write polygons (job option "
                    "output=polygon)"
                )
                self._board.record_outcome(
                    self._job_id, self._project, task_id, "failed", reason=reason, worker=self._worker
                )
                logger.warning("job %s: task %d failed: %s", self._job_id, task_id, reason)
                return
            half = len(predictions) // 2
            self._batch = min(self._batch, len(predictions) - half)  # never again a count that was refused
            logger.warning(
                "job %s: %s; writing them as %d and %d, and later batches of at most %d",
                self._job_id, exc.message, half, len(predictions) - half, self._batch,
            )
            self._write(predictions[:half], locks)
            self._write(predictions[half:], locks)
            return
        if created == len(predictions):
            for task_id, task_prediction in predictions:
                self._done(task_id, len(task_prediction["result"]))
        else:
            self._settle_partial(predictions, created, locks)

    def _new_predictions(self, task_id: int) -> list[tuple[int, int]]:
        """(id, region count) of the task's predictions of our version, except those it replaces."""
        replaced = self._replaces.get(task_id, set())
        return [p for p in self._ls.our_predictions(task_id, self._version) if p[0] not in replaced]

    def _drop(self, predictions: list[tuple[int, dict]]) -> None:
        """The job was cancelled: these predictions are not written (their tasks stay without an outcome)."""
        logger.info("job %s: cancelled; %d prediction(s) not written", self._job_id, len(predictions))

    def _settle_partial(self, written: list[tuple[int, dict]], created: int, locks: HeldLocks) -> None:
        """Label Studio dropped some predictions (it validates and drops silently): find out which."""
        logger.warning(
            "job %s: Label Studio created %d of %d predictions", self._job_id, created, len(written)
        )
        for task_id, task_prediction in written:
            locks.renew()
            if self._new_predictions(task_id):
                self._done(task_id, len(task_prediction["result"]))
            else:
                self._board.record_outcome(
                    self._job_id,
                    self._project,
                    task_id,
                    "failed",
                    reason="Label Studio did not accept the prediction (it drops predictions that do not fit the "
                    "project's labeling config)",
                    worker=self._worker,
                )

    def _done(self, task_id: int, regions: int, note: str = "") -> None:
        """The task holds its new prediction: delete the ones it replaces, then record it done."""
        for prediction_id in sorted(self._replaces.pop(task_id, ())):
            self._ls.delete_prediction(prediction_id)
        self._board.record_outcome(
            self._job_id,
            self._project,
            task_id,
            "done",
            regions=regions,
            note=note,
            worker=self._worker,
            rejected=self._rejected.pop(task_id, ()),
        )
