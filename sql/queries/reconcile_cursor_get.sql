-- Where the reconciler stopped: the upper bound of the last window it read and committed.
SELECT cursor FROM reconcile_cursors WHERE name = $1
