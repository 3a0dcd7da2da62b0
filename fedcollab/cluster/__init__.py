"""Ray, and nothing else: the :class:`~fedcollab.worker.messages.Pool` over Ray
actors (:mod:`~fedcollab.cluster.pool`), worker reuse, placement checks, connecting
to or embedding a Ray instance, and the ``start-cluster`` command. The only folder
of fedcollab that calls Ray."""
