-- PostgreSQL's conflicting lock modes, as pg_locks spells them: a lock of
-- "mode", held or awaited, conflicts with a lock of each of "conflicts"
-- (src/backend/storage/lmgr/lock.c, LockConflicts; the documentation's
-- table "Conflicting Lock Modes"). The table is symmetric. pgreap's one copy
-- of it: the selector's lock_conflict term joins pg_locks to it.
SELECT c.mode, c.conflicts
  FROM (VALUES
    ('AccessShareLock',          '{AccessExclusiveLock}'::text[]),
    ('RowShareLock',             '{ExclusiveLock,AccessExclusiveLock}'::text[]),
    ('RowExclusiveLock',         '{ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock}'::text[]),
    ('ShareUpdateExclusiveLock', '{ShareUpdateExclusiveLock,ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock}'::text[]),
    ('ShareLock',                '{RowExclusiveLock,ShareUpdateExclusiveLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock}'::text[]),
    ('ShareRowExclusiveLock',    '{RowExclusiveLock,ShareUpdateExclusiveLock,ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock}'::text[]),
    ('ExclusiveLock',            '{RowShareLock,RowExclusiveLock,ShareUpdateExclusiveLock,ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock}'::text[]),
    ('AccessExclusiveLock',      '{AccessShareLock,RowShareLock,RowExclusiveLock,ShareUpdateExclusiveLock,ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock}'::text[])
  ) AS c(mode, conflicts)
