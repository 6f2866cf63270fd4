-- pgreap: the server a plan is checked against. system_identifier names a
-- cluster (a standby has its primary's: the postmaster's start time tells
-- them apart, and tells a restart).
SELECT s.system_identifier, pg_catalog.pg_postmaster_start_time()
  FROM pg_catalog.pg_control_system() AS s
