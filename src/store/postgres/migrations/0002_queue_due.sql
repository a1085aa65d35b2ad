-- Claims and the next retry's time find due rows through this index instead of walking a
-- sink's queue in seq order past rows that wait for a later retry (a long outage of a sink
-- that answers 5xx leaves many). Claims do not change `due_ms`, so their lease updates stay
-- HOT.
CREATE INDEX queue_due ON __SCHEMA__.queue (sink, due_ms);
