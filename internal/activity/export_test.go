package activity

// ParseServerVersion is parseServerVersion, for tests.
var ParseServerVersion = parseServerVersion

// BeforeRowRead calls f between the look at the row locks and the read of
// each row.
func BeforeRowRead(f func()) (restore func()) {
	testHookBeforeRowRead = f
	return func() { testHookBeforeRowRead = nil }
}
