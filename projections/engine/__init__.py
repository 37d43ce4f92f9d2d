"""The engine that keeps every projection (read model) current from the event log.

- ``projection``: what a projection is (versioned tables, the events it reads, apply);
- ``reader``: the fast pull reader of one durable consumer;
- ``preparer``: decoding and checking each delivery as it arrives;
- ``runner``: a batch applied and its checkpoint advanced in one transaction, acked after;
- ``checkpoints``: the registry of versions and their checkpoints (tracking records);
- ``deadletter``: where an event no projection can apply goes, with the reason;
- ``log``: the streams on JetStream and the consumers bound to them;
- ``rebuild`` and ``shapes``: a new version built from the log beside the live one.

The read models themselves (spend, history, reports, ...) live beside this package.
"""
