package activity

// ParseServerVersion is parseServerVersion, for tests.
var ParseServerVersion = parseServerVersion
