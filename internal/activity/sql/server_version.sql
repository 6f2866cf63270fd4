-- pgreap: the server's version, when the connection's start did not say
-- it (server_version is reported at every start; a proxy may drop it).
SHOW server_version_num
