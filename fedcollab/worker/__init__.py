"""What runs inside a worker process: the worker hosting many logical participants,
local training, models, what leaves a participant, and the messages that cross
between the job and its workers (:mod:`~fedcollab.worker.messages`). Never imports
Ray: a transport (:mod:`fedcollab.cluster`, or the in-process pool) carries the
messages."""
