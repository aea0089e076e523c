"""Pre-annotate whole projects on RQ workers — SegEvery, or a mask per rectangle / keypoint group of the tasks'
annotations (``mode``) — written back to Label Studio as predictions.

A *pre-annotation job* is one RQ parent job and its chunk jobs, all on the queue
:data:`backend.jobs.options.QUEUE_NAME`. One module per concept:

=====================  ===================================================================================
``options``            :class:`JobOptions`: the per-job settings, validated once
``layout``             Redis key layout, Lua scripts, the connection and the RQ queue
``record``             a job record parsed (:class:`JobRecord`), its progress and status view
``board``              :class:`JobBoard`: the state machine of the records (start, progress, cancel, read)
``locks``              per-task write locks: a task's prediction is written at most once per model version
``tasks``              the RQ job functions (parent :func:`plan_project`, chunks :func:`run_chunk`)
``prompted``           the ``boxes`` and ``points`` modes: a task's regions → prompts → masks
``writer``             :class:`PredictionWriter`: batched prediction writes, each task at most once
``failures``           the workers' error boundary: task vs chunk failures by exception type, RQ's failure
                       callbacks, reconciliation of parts RQ failed behind our back
``batch``              the batch ``/predict`` ("Retrieve predictions"): now for a few tasks, else a job
``routes``             the HTTP routes ``/jobs…`` and the jobs page
=====================  ===================================================================================

**Cancelling** (:meth:`JobBoard.cancel`: ``DELETE /jobs/<id>``, ``preannotate --cancel``) ends a job that has
not ended: its record turns ``cancelled`` with the reason and the project's active key is released in one Lua
script (a new job for the project can start at once), then its parent and chunk RQ jobs that wait (queued,
scheduled for a retry, deferred) are cancelled in RQ. A chunk already running checks the record's state before
each task and before each Label Studio write (the parent while it lists ``overwrite``'s earlier predictions),
and stops there: nothing is written after the cancellation (except a write already under way), and the tasks
it did not do stay without an outcome, counted neither done nor failed (with ``overwrite``, holding their
earlier prediction). A ``done`` that lands after the cancellation is still counted (the prediction is in Label
Studio); a ``failed`` is not.
"""
