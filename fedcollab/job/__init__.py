"""The driver's side of one job, from spec to release: :mod:`~fedcollab.job.run`
assembles the parts, :mod:`~fedcollab.job.rounds` runs the round loop over a
:class:`~fedcollab.worker.messages.Pool`, :mod:`~fedcollab.job.callbacks` writes
what each round leaves behind. Nothing here calls Ray: that is
:mod:`fedcollab.cluster`'s job."""
